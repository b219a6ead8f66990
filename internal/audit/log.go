package audit

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

// Errors callers branch on. An HTTP endpoint answers [ErrInvalid] with 400
// and [ErrOriginGap] or [ErrOriginConflict] with 409.
var (
	// ErrNoLog means the database holds no audit log: [Migrate] never ran
	// on it, or it is not a control plane's database.
	ErrNoLog = errors.New("audit: database has no audit log")
	// ErrInvalid means an event, an entry or a filter broke a rule of
	// its fields, or entries broke a rule of their chain; nothing was
	// recorded.
	ErrInvalid = errors.New("audit: invalid input")
	// ErrOriginGap means forwarded entries do not continue where the
	// agent's earlier entries ended: some are missing or were rewritten.
	ErrOriginGap = errors.New("audit: forwarded entries do not continue the agent's chain")
	// ErrOriginConflict means an entry was forwarded again with other
	// contents than the copy already recorded.
	ErrOriginConflict = errors.New("audit: forwarded entry differs from the recorded copy")
)

// migrations is the schema ladder of the audit tables: migrations[i] moves
// them from version i to i+1. The version lives in audit_schema, not in
// PRAGMA user_version, because the database belongs to other packages too
// (internal/fleet owns user_version). Append steps; never edit one.
var migrations = []string{
	// v1: the log, its head and append-only triggers.
	//
	// actor is generated from its parts so that it cannot disagree with
	// them, and indexed for [Filter.Actor]. The head is written by every
	// append in the same transaction; it is how [Log.Verify] notices that
	// the newest entries were deleted. The triggers make UPDATE and
	// DELETE fail for every writer that goes through SQLite; they are no
	// defence against someone who drops them, which the chain detects.
	`CREATE TABLE audit_log (
		seq          INTEGER PRIMARY KEY,
		time         TEXT NOT NULL,
		actor_kind   TEXT NOT NULL,
		actor_name   TEXT NOT NULL,
		actor_id     TEXT NOT NULL DEFAULT '',
		actor        TEXT GENERATED ALWAYS AS (actor_kind || ':' || actor_name ||
			CASE WHEN actor_id = '' THEN '' ELSE '(' || actor_id || ')' END) VIRTUAL,
		action       TEXT NOT NULL,
		target       TEXT NOT NULL DEFAULT '',
		outcome      TEXT NOT NULL,
		details      TEXT NOT NULL,
		origin_agent TEXT NOT NULL DEFAULT '',
		origin_seq   INTEGER NOT NULL DEFAULT 0,
		origin_prev  TEXT NOT NULL DEFAULT '',
		origin_hash  TEXT NOT NULL DEFAULT '',
		prev_hash    TEXT NOT NULL,
		hash         TEXT NOT NULL
	) STRICT;
	CREATE INDEX audit_log_target ON audit_log (target, seq);
	CREATE INDEX audit_log_actor ON audit_log (actor, seq);
	CREATE INDEX audit_log_action ON audit_log (action, seq);
	CREATE UNIQUE INDEX audit_log_origin ON audit_log (origin_agent, origin_seq)
		WHERE origin_agent != '';
	CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
		BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
	CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
		BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
	CREATE TABLE audit_head (
		id   INTEGER PRIMARY KEY CHECK (id = 1),
		seq  INTEGER NOT NULL,
		hash TEXT NOT NULL
	) STRICT;
	INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '` + GenesisHash + `');`,
}

// Migrate creates or updates the audit tables in db. The control plane
// runs it once at start, before [Open]; it is safe to run again and from
// several processes at once. db must use the driver modernc.org/sqlite.
func Migrate(ctx context.Context, db *sql.DB) error {
	for {
		done, err := migrateStep(ctx, db)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		if done {
			return nil
		}
	}
}

// migrateStep applies one step of [migrations] and its version bump in one
// transaction, so a crash leaves the tables at a whole version.
//
// The transaction is BEGIN IMMEDIATE whatever the connection's default: it
// takes the write lock before anything is read, so a second migrating
// process waits on the busy timeout and then sees the new version. A
// deferred transaction would read first and could then fail at once, busy
// timeout or not, when another process had committed in between
// (SQLITE_BUSY_SNAPSHOT).
func migrateStep(ctx context.Context, db *sql.DB) (done bool, err error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("migration connection: %w", err)
	}
	defer conn.Close()

	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return false, fmt.Errorf("beginning migration: %w", err)
	}

	committed := false
	defer func() {
		if committed {
			return
		}
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK"); err != nil {
			// The connection may still hold the write lock: drop it
			// rather than give it back to the pool.
			conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()

	v, err := schemaVersion(ctx, conn)
	if err != nil {
		return false, err
	}

	switch {
	case v > len(migrations):
		return false, fmt.Errorf("schema version %d is newer than this binary's %d",
			v, len(migrations))
	case v == len(migrations):
		return true, nil
	}

	if _, err := conn.ExecContext(ctx, migrations[v]); err != nil {
		return false, fmt.Errorf("migrating to version %d: %w", v+1, err)
	}
	if _, err := conn.ExecContext(ctx,
		"UPDATE audit_schema SET version = ? WHERE id = 1", v+1); err != nil {
		return false, fmt.Errorf("setting version %d: %w", v+1, err)
	}

	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		return false, fmt.Errorf("committing version %d: %w", v+1, err)
	}
	committed = true
	return false, nil
}

// schemaVersion reads the version of the audit tables, creating the
// version table, which lives outside the ladder, on first use.
func schemaVersion(ctx context.Context, conn *sql.Conn) (int, error) {
	_, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS audit_schema (
		id      INTEGER PRIMARY KEY CHECK (id = 1),
		version INTEGER NOT NULL
	) STRICT`)
	if err != nil {
		return 0, fmt.Errorf("creating schema table: %w", err)
	}

	_, err = conn.ExecContext(ctx,
		"INSERT INTO audit_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
	if err != nil {
		return 0, fmt.Errorf("initialising schema version: %w", err)
	}

	var v int
	if err := conn.QueryRowContext(ctx,
		"SELECT version FROM audit_schema WHERE id = 1").Scan(&v); err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	return v, nil
}

// Options configures [Open].
type Options struct {
	// Logger receives the log's own events (never entry details). Nil
	// discards them.
	Logger *slog.Logger
	// Now is the clock of events recorded without a time. Nil means
	// time.Now.
	Now func() time.Time
}

// Log is the control plane's audit log in its SQLite database. It is safe
// for concurrent use, also by several processes sharing the file.
type Log struct {
	db  *sqldb.DB
	log *slog.Logger
	now func() time.Time
}

// Open returns the audit log kept in db, which [Migrate] must have
// prepared: Open changes nothing, so that read-only tools such as 'audit
// verify' can use it. It fails with [ErrNoLog] when the tables are
// missing. The caller keeps ownership of db, whose DSN should set a busy
// timeout (internal/fleet's does) so that appends from several processes
// wait for each other instead of failing.
func Open(ctx context.Context, db *sqldb.DB, opts Options) (*Log, error) {
	if db == nil {
		return nil, errors.New("audit: database is required")
	}

	if err := checkSchema(ctx, db.SQL()); err != nil {
		return nil, err
	}

	l := &Log{db: db, log: opts.Logger, now: opts.Now}
	if l.log == nil {
		l.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if l.now == nil {
		l.now = time.Now
	}
	return l, nil
}

func checkSchema(ctx context.Context, db *sql.DB) error {
	var n int
	err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_schema
		WHERE type = 'table' AND name = 'audit_schema'`).Scan(&n)
	if err != nil {
		return fmt.Errorf("audit: reading schema: %w", err)
	}

	v := 0
	if n > 0 {
		err = db.QueryRowContext(ctx, "SELECT version FROM audit_schema WHERE id = 1").Scan(&v)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("audit: reading schema version: %w", err)
		}
	}

	switch {
	case v == 0:
		return ErrNoLog
	case v != len(migrations):
		return fmt.Errorf("audit: schema version is %d, this binary needs %d (run Migrate)",
			v, len(migrations))
	}
	return nil
}

// Head is the newest entry of a chain: its number and hash. Seq 0 with
// [GenesisHash] is the head of an empty chain.
type Head struct {
	Seq  int64  `json:"seq"`
	Hash string `json:"hash"`
}

// Head returns the head that the last append recorded.
//
// TODO(#4): publish or sign the head periodically, outside the database,
// so that rewriting the whole tail of the log is detected too.
func (l *Log) Head(ctx context.Context) (Head, error) {
	var h Head
	err := l.db.QueryRowContext(ctx,
		"SELECT seq, hash FROM audit_head WHERE id = 1").Scan(&h.Seq, &h.Hash)
	if err != nil {
		return Head{}, fmt.Errorf("audit: reading head: %w", err)
	}
	return h, nil
}

// Append records ev as the next entry and returns it. Appends are
// serialised: each reads the head and writes the entry and the new head
// in one transaction that holds SQLite's write lock, so concurrent
// appends, even from several processes, never fork the chain. An event
// that breaks a rule of its fields fails with [ErrInvalid]. On any error
// nothing is recorded.
func (l *Log) Append(ctx context.Context, ev Event) (Entry, error) {
	var e Entry
	err := l.db.Write(ctx, func(tx sqldb.Tx) error {
		var err error
		e, err = l.record(ctx, tx, ev)
		return err
	})
	if err != nil {
		return Entry{}, fmt.Errorf("audit: recording %q: %w", ev.Action, err)
	}

	l.log.Debug("audit entry recorded", "seq", e.Seq, "action", e.Action,
		"outcome", e.Outcome, "target", e.Target)
	return e, nil
}

// AppendTx is [Log.Append] inside a write transaction of the log's
// database, so that a change and the entry recording it are committed
// together or not at all. The entry is recorded only if tx commits.
func (l *Log) AppendTx(ctx context.Context, tx sqldb.Tx, ev Event) (Entry, error) {
	e, err := l.record(ctx, tx, ev)
	if err != nil {
		return Entry{}, fmt.Errorf("audit: recording %q: %w", ev.Action, err)
	}
	return e, nil
}

// record appends ev to the chain in tx.
func (l *Log) record(ctx context.Context, tx sqldb.Tx, ev Event) (Entry, error) {
	e, err := newEntry(ev, l.now)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}

	err = l.withHead(ctx, tx, func(head *Head) error {
		return appendTx(ctx, tx, head, &e)
	})
	return e, err
}

// withHead runs fn with the current head in tx, then stores the head fn
// leaves behind.
func (l *Log) withHead(ctx context.Context, tx sqldb.Tx, fn func(head *Head) error) error {
	head, err := l.lockHead(ctx, tx)
	if err != nil {
		return err
	}
	if err := fn(&head); err != nil {
		return err
	}

	_, err = tx.ExecContext(ctx, "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1",
		head.Seq, head.Hash)
	if err != nil {
		return fmt.Errorf("storing head: %w", err)
	}
	return nil
}

// lockHead takes the write lock by writing the head row before reading
// anything: a deferred transaction that read first could not upgrade once
// another process had committed (SQLITE_BUSY_SNAPSHOT), whatever the DSN's
// _txlock says.
func (l *Log) lockHead(ctx context.Context, tx sqldb.Tx) (Head, error) {
	res, err := tx.ExecContext(ctx, "UPDATE audit_head SET seq = seq WHERE id = 1")
	if err != nil {
		return Head{}, fmt.Errorf("locking head: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return Head{}, fmt.Errorf("locking head: head row missing (%d rows, %v)", n, err)
	}

	var h Head
	err = tx.QueryRowContext(ctx,
		"SELECT seq, hash FROM audit_head WHERE id = 1").Scan(&h.Seq, &h.Hash)
	if err != nil {
		return Head{}, fmt.Errorf("reading head: %w", err)
	}

	// A head behind the newest row means entries were added around the
	// head, or newest entries deleted and the head wound back: either is
	// tampering that Verify reports; appending goes on from the head.
	var last int64
	err = tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(seq), 0) FROM audit_log").Scan(&last)
	if err != nil {
		return Head{}, fmt.Errorf("reading last entry: %w", err)
	}

	if last != h.Seq {
		l.log.Error("audit head disagrees with the log", "head_seq", h.Seq, "last_seq", last)
	}
	return h, nil
}

// appendTx gives e the next place in the chain after head and inserts it.
func appendTx(ctx context.Context, tx sqldb.Tx, head *Head, e *Entry) error {
	e.Seq, e.PrevHash = head.Seq+1, head.Hash
	e.Hash = e.ComputeHash()

	var o Origin
	if e.Origin != nil {
		o = *e.Origin
	}

	_, err := tx.ExecContext(ctx, `INSERT INTO audit_log (seq, time, actor_kind, actor_name,
		actor_id, action, target, outcome, details, origin_agent, origin_seq, origin_prev,
		origin_hash, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.Seq, e.Time.UTC().Format(timeLayout), e.Actor.Kind, e.Actor.Name, e.Actor.ID,
		e.Action, e.Target, e.Outcome, string(e.Details),
		o.Agent, o.Seq, o.PrevHash, o.Hash, e.PrevHash, e.Hash)
	if err != nil {
		return fmt.Errorf("inserting entry %d: %w", e.Seq, err)
	}

	head.Seq, head.Hash = e.Seq, e.Hash
	return nil
}
