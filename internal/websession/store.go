package websession

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

// migrations is the schema ladder of this package's tables: migrations[i]
// moves the schema from version i to i+1. The version lives in its own
// table, because PRAGMA user_version belongs to the registry store that
// shares the database. Append new steps; never edit a shipped one.
var migrations = [][]string{
	// v1. Times are Unix seconds. A session's id is the hex SHA-256 of
	// the secret its cookie or bearer token carries, so the table alone
	// lets no one in.
	{
		`CREATE TABLE websession_sessions (
			id         TEXT PRIMARY KEY,
			login      TEXT NOT NULL,
			user_id    INTEGER NOT NULL CHECK (user_id > 0),
			role       TEXT NOT NULL CHECK (role IN ('admin', 'tenant')),
			client     TEXT NOT NULL CHECK (client IN ('browser', 'device')),
			agents     TEXT NOT NULL DEFAULT '[]',
			owner      TEXT NOT NULL,
			parent     TEXT NOT NULL DEFAULT '',
			created_at INTEGER NOT NULL,
			expires_at INTEGER NOT NULL,
			revoked_at INTEGER
		) STRICT`,
		`CREATE INDEX websession_sessions_user ON websession_sessions (user_id)`,
		`CREATE TABLE websession_devices (
			code_hash  TEXT PRIMARY KEY,
			user_code  TEXT NOT NULL UNIQUE,
			state      TEXT NOT NULL
				CHECK (state IN ('pending', 'approved', 'denied', 'consumed')),
			created_at INTEGER NOT NULL,
			expires_at INTEGER NOT NULL,
			last_poll  INTEGER NOT NULL DEFAULT 0,
			approver   TEXT NOT NULL DEFAULT '',
			login      TEXT NOT NULL DEFAULT '',
			user_id    INTEGER NOT NULL DEFAULT 0,
			role       TEXT NOT NULL DEFAULT '',
			agents     TEXT NOT NULL DEFAULT '[]'
		) STRICT`,
		`CREATE TABLE websession_keys (
			id     INTEGER PRIMARY KEY CHECK (id = 1),
			secret BLOB NOT NULL
		) STRICT`,
	},
	// v2. Revoking a session also revokes the device sessions it
	// approved, found by parent.
	{
		`CREATE INDEX websession_sessions_parent ON websession_sessions (parent)`,
	},
}

// Migrate creates or updates this package's tables in db. It is safe to
// run more than once and from several processes; [New] runs it.
func Migrate(ctx context.Context, db *sql.DB) error {
	for {
		done, err := migrateStep(ctx, db)
		if err != nil {
			return fmt.Errorf("websession: migrating: %w", err)
		}
		if done {
			return nil
		}
	}
}

// migrateStep applies one step together with its version bump in one
// transaction, so a crash leaves the schema at a whole version.
func migrateStep(ctx context.Context, db *sql.DB) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()

	// Writing first takes the write lock, so two processes migrating at
	// once queue instead of both reading version 0.
	_, err = tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS websession_schema (
		id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL) STRICT`)
	if err != nil {
		return false, fmt.Errorf("creating version table: %w", err)
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT OR IGNORE INTO websession_schema (id, version) VALUES (1, 0)`); err != nil {
		return false, fmt.Errorf("initialising version: %w", err)
	}

	var v int
	err = tx.QueryRowContext(ctx, `SELECT version FROM websession_schema`).Scan(&v)
	if err != nil {
		return false, fmt.Errorf("reading version: %w", err)
	}

	switch {
	case v > len(migrations):
		return false, fmt.Errorf("schema version %d is newer than this binary's %d",
			v, len(migrations))
	case v == len(migrations):
		return true, tx.Commit()
	}

	for _, stmt := range migrations[v] {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return false, fmt.Errorf("to version %d: %w", v+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx,
		`UPDATE websession_schema SET version = ?`, v+1); err != nil {
		return false, fmt.Errorf("setting version %d: %w", v+1, err)
	}
	return false, tx.Commit()
}

// storedSecret returns the secret kept in the database, creating it on
// first use.
func storedSecret(ctx context.Context, db *sqldb.DB) ([]byte, error) {
	fresh := make([]byte, minSecret)
	rand.Read(fresh)
	if _, err := db.ExecContext(ctx,
		`INSERT OR IGNORE INTO websession_keys (id, secret) VALUES (1, ?)`, fresh); err != nil {
		return nil, fmt.Errorf("storing secret: %w", err)
	}

	var secret []byte
	err := db.QueryRowContext(ctx, `SELECT secret FROM websession_keys WHERE id = 1`).
		Scan(&secret)
	if err != nil {
		return nil, fmt.Errorf("reading secret: %w", err)
	}

	if len(secret) < minSecret {
		return nil, errors.New("stored secret is too short")
	}
	return secret, nil
}

// sessionRow is a row of websession_sessions.
type sessionRow struct {
	Session
	owner   string
	parent  string
	revoked bool
}

const sessionColumns = `id, login, user_id, role, client, agents, owner, parent,
	created_at, expires_at, revoked_at`

// execer runs a write: a *sqldb.DB, which takes this process's turn of
// writers, or a sqldb.Tx, which already holds it.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func insertSession(ctx context.Context, db execer, r *sessionRow) error {
	agents, err := json.Marshal(nonNil(r.Agents))
	if err != nil {
		return fmt.Errorf("encoding agents: %w", err)
	}

	_, err = db.ExecContext(ctx, `INSERT INTO websession_sessions (`+sessionColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)`,
		r.ID, r.Login, r.UserID, string(r.Role), string(r.Client), string(agents),
		r.owner, r.parent, r.Created.Unix(), r.Expires.Unix())
	if err != nil {
		return fmt.Errorf("inserting session: %w", err)
	}
	return nil
}

func getSession(ctx context.Context, db *sqldb.DB, id string) (*sessionRow, error) {
	var (
		r                  sessionRow
		role, client, agts string
		created, expires   int64
		revoked            sql.NullInt64
	)
	err := db.QueryRowContext(ctx, `SELECT `+sessionColumns+
		` FROM websession_sessions WHERE id = ?`, id).Scan(&r.ID, &r.Login, &r.UserID,
		&role, &client, &agts, &r.owner, &r.parent, &created, &expires, &revoked)
	if err != nil {
		return nil, err
	}

	r.Role, r.Client = Role(role), Client(client)
	r.Created, r.Expires = unixTime(created), unixTime(expires)
	r.revoked = revoked.Valid
	if err := json.Unmarshal([]byte(agts), &r.Agents); err != nil {
		return nil, fmt.Errorf("decoding agents of session: %w", err)
	}
	return &r, nil
}

func unixTime(s int64) time.Time { return time.Unix(s, 0).UTC() }

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
