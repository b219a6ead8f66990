package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/sqldb"
	"github.com/devopsdefender/devopsdefender/internal/workload"

	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver
)

// Options configures [Open].
type Options struct {
	// Logger receives store events. Nil discards them.
	Logger *slog.Logger

	// BusyTimeout is how long a statement waits for a lock that another
	// connection holds before it fails. Zero means 5s.
	BusyTimeout time.Duration

	// Now is the clock of audit events recorded without a time. Nil means
	// time.Now.
	Now func() time.Time
}

// maxIdleConns is how many connections the store keeps open between uses.
// Open connections are not capped: a transaction may need a second
// connection for a statement prepared on first use.
const maxIdleConns = 8

// Store is the agent registry kept in one SQLite file. It is safe for
// concurrent use; several processes may open the same file, because
// SQLite's locking (WAL mode plus a busy timeout) serialises writers.
type Store struct {
	db    *sql.DB
	q     *sqldb.DB // queries and writes; db itself only for migrations
	log   *slog.Logger
	audit *audit.Log

	closeOnce sync.Once
	closeErr  error
}

// migrations is the schema ladder: migrations[i] moves a database from
// PRAGMA user_version i to i+1. Append new steps; never edit a shipped one.
var migrations = []string{
	// v1: the agents table. Times are RFC 3339 UTC text ("" when unset) so
	// that the file stays readable with the sqlite3 shell.
	`CREATE TABLE agents (
		id                  TEXT PRIMARY KEY,
		vm_name             TEXT NOT NULL UNIQUE,
		hostname            TEXT NOT NULL,
		url                 TEXT NOT NULL,
		origin              TEXT NOT NULL,
		status              TEXT NOT NULL
			CHECK (status IN ('registering', 'healthy', 'stale', 'dead')),
		registered_at       TEXT NOT NULL,
		last_seen           TEXT NOT NULL DEFAULT '',
		att_type            TEXT NOT NULL,
		att_quote_format    TEXT NOT NULL DEFAULT '',
		att_quote_b64       TEXT NOT NULL DEFAULT '',
		att_report_data_b64 TEXT NOT NULL DEFAULT '',
		att_verified        INTEGER NOT NULL DEFAULT 0,
		att_status          TEXT NOT NULL,
		att_mrtd            TEXT NOT NULL DEFAULT '',
		att_tcb_status      TEXT NOT NULL DEFAULT '',
		att_verified_at     TEXT NOT NULL DEFAULT '',
		units               TEXT NOT NULL DEFAULT '[]',
		token_hash          BLOB NOT NULL,
		last_error          TEXT NOT NULL DEFAULT ''
	) STRICT`,
	// v2: the agent's public keys bound into its evidence, and the full
	// verified measurements and TCB date.
	`ALTER TABLE agents ADD COLUMN signing_key TEXT NOT NULL DEFAULT '';
	ALTER TABLE agents ADD COLUMN noise_key TEXT NOT NULL DEFAULT '';
	ALTER TABLE agents ADD COLUMN att_measurements TEXT NOT NULL DEFAULT '';
	ALTER TABLE agents ADD COLUMN att_tcb_date TEXT NOT NULL DEFAULT '';`,
	// v3: the tenant principal an admin assigned the agent to.
	`ALTER TABLE agents ADD COLUMN tenant_kind TEXT NOT NULL DEFAULT '';
	ALTER TABLE agents ADD COLUMN tenant_name TEXT NOT NULL DEFAULT '';
	ALTER TABLE agents ADD COLUMN tenant_id INTEGER NOT NULL DEFAULT 0;`,
	// v4: the agent's tunnel at the ingress provider, and the hostname
	// claims (expose) its workloads made, as JSON.
	`ALTER TABLE agents ADD COLUMN tunnel_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE agents ADD COLUMN ingress_claims TEXT NOT NULL DEFAULT '[]';`,
}

// Open opens (creating if needed) the store at path and brings its schema
// up to date. path is a plain file name; it must not contain '?'.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("fleet: store path is required")
	}
	if strings.Contains(path, "?") {
		// The driver would read the rest as connection parameters.
		return nil, fmt.Errorf("fleet: store path %q must not contain '?'", path)
	}
	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = 5 * time.Second
	}
	// The registry holds credential hashes: keep its directory private.
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("fleet: creating store directory: %w", err)
	}

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	// Every pooled connection gets these settings. Write transactions
	// begin IMMEDIATE so that two writers queue on the busy timeout
	// instead of failing when a read lock cannot be upgraded.
	dsn := fmt.Sprintf("%s?_busy_timeout=%d&_journal_mode=WAL&_synchronous=NORMAL"+
		"&_foreign_keys=1&_txlock=immediate", path, opts.BusyTimeout.Milliseconds())
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("fleet: opening %s: %w", path, err)
	}
	// A new SQLite connection reads the schema and prepares every
	// statement again; database/sql's default of two idle connections
	// made concurrent requests open and close one each.
	db.SetMaxIdleConns(maxIdleConns)

	s := &Store{db: db, q: sqldb.New(db), log: log}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("fleet: opening %s: %w", path, err)
	}
	if s.audit, err = openAudit(ctx, s.q, log, opts.Now); err != nil {
		db.Close()
		return nil, fmt.Errorf("fleet: opening %s: %w", path, err)
	}

	return s, nil
}

// openAudit prepares the audit log that shares the registry's database,
// so that a registration and its record live and are backed up together.
func openAudit(ctx context.Context, db *sqldb.DB, log *slog.Logger,
	now func() time.Time) (*audit.Log, error) {
	if err := audit.Migrate(ctx, db.SQL()); err != nil {
		return nil, err
	}
	return audit.Open(ctx, db, audit.Options{Logger: log, Now: now})
}

// Audit returns the fleet's audit log.
func (s *Store) Audit() *audit.Log { return s.audit }

func (s *Store) init(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("reading journal mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		// Some file systems cannot hold a WAL; the store still works.
		s.log.Warn("store not in WAL mode", "journal_mode", mode)
	}

	return s.migrate(ctx)
}

// migrate applies the missing steps of [migrations], each in its own
// transaction together with its user_version bump, so a crash leaves the
// database at a whole version.
func (s *Store) migrate(ctx context.Context) error {
	for {
		done, err := s.migrateStep(ctx)
		if err != nil || done {
			return err
		}
	}
}

func (s *Store) migrateStep(ctx context.Context) (done bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("beginning migration: %w", err)
	}
	defer tx.Rollback()

	// Read the version inside the transaction: another process may have
	// migrated while this one waited for the lock.
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return false, fmt.Errorf("reading schema version: %w", err)
	}
	switch {
	case v > len(migrations):
		return false, fmt.Errorf("schema version %d is newer than this binary's %d",
			v, len(migrations))
	case v == len(migrations):
		return true, nil
	}

	if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
		return false, fmt.Errorf("migrating schema to version %d: %w", v+1, err)
	}
	// PRAGMA takes no bound parameters; v+1 is an int we computed.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
		return false, fmt.Errorf("setting schema version %d: %w", v+1, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("committing schema version %d: %w", v+1, err)
	}

	s.log.Info("store schema migrated", "version", v+1)
	return false, nil
}

// Close closes the database. Calling it again returns the first result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = errors.Join(s.q.Close(), s.db.Close())
	})
	return s.closeErr
}

// Register stores a new agent. In the same transaction it removes every
// other agent with the same VMName, which it returns so that the caller can
// release what they held (their ingress), and, if audited is not nil,
// appends the audit entry that audited returns for them: a registration
// is never stored without its record. A nil a.Tenant is taken from a
// replaced record only if that record has a's signing key (see
// [SameSigningKey]): a restarted agent keeps its tenant, a newcomer
// under the same name starts without one. Register fails with [ErrExists]
// if the id is taken, and changes nothing on any error.
func (s *Store) Register(ctx context.Context, a Agent,
	audited func(replaced []Agent) audit.Event) (replaced []Agent, err error) {
	if err := a.validate(); err != nil {
		return nil, fmt.Errorf("fleet: registering agent: %w", err)
	}

	rec, err := encodeAgent(&a)
	if err != nil {
		return nil, fmt.Errorf("fleet: registering agent %s: %w", a.ID, err)
	}

	err = s.q.Write(ctx, func(tx sqldb.Tx) error {
		if replaced, err = s.registerTx(ctx, tx, a, rec); err != nil || audited == nil {
			return err
		}
		_, err = s.audit.AppendTx(ctx, tx, audited(replaced))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: registering agent %s: %w", a.ID, err)
	}

	return replaced, nil
}

func (s *Store) registerTx(ctx context.Context, tx sqldb.Tx, a Agent,
	rec []any) ([]Agent, error) {
	var n int
	err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM agents WHERE id = ?", a.ID).Scan(&n)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		return nil, ErrExists
	}

	replaced, err := queryAgents(ctx, tx,
		"SELECT "+agentColumns+" FROM agents WHERE vm_name = ? ORDER BY id", a.VMName)
	if err != nil {
		return nil, err
	}
	// The tenant outlives one registration only for the holder of the
	// same signing key, i.e. the same agent restarted. Anyone else who
	// gets the name must not get the tenant's trust with it.
	if a.Tenant == nil {
		if t := inheritedTenant(&a, replaced); t != nil {
			a.Tenant = t
			if rec, err = encodeAgent(&a); err != nil {
				return nil, err
			}
		}
	}

	if _, err := tx.ExecContext(ctx, "DELETE FROM agents WHERE vm_name = ?", a.VMName); err != nil {
		return nil, fmt.Errorf("removing old: %w", err)
	}
	if _, err := tx.ExecContext(ctx, insertAgent, rec...); err != nil {
		return nil, fmt.Errorf("inserting: %w", err)
	}

	return replaced, nil
}

// inheritedTenant returns the tenant a registration of a takes over from
// the records it replaces: that of a record with a's signing key, or nil.
func inheritedTenant(a *Agent, replaced []Agent) *ghoidc.Principal {
	for _, old := range replaced {
		if old.Tenant != nil && SameSigningKey(&old, a) {
			return old.Tenant
		}
	}
	return nil
}

// SameSigningKey reports whether a and b hold the same, non-empty, signing
// key: whether b is a registration of the agent process that a was.
func SameSigningKey(a, b *Agent) bool {
	return len(a.SigningKey) > 0 && bytes.Equal(a.SigningKey, b.SigningKey)
}

// Get returns the agent with the given id, or [ErrNotFound].
func (s *Store) Get(ctx context.Context, id string) (Agent, error) {
	row := s.q.QueryRowContext(ctx, "SELECT "+agentColumns+" FROM agents WHERE id = ?", id)
	a, err := scanAgent(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, fmt.Errorf("fleet: agent %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Agent{}, fmt.Errorf("fleet: reading agent %s: %w", id, err)
	}

	return a, nil
}

// ByVMName returns the agent registered under vmName, or [ErrNotFound].
func (s *Store) ByVMName(ctx context.Context, vmName string) (Agent, error) {
	row := s.q.QueryRowContext(ctx, "SELECT "+agentColumns+" FROM agents WHERE vm_name = ?",
		vmName)
	a, err := scanAgent(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, fmt.Errorf("fleet: vm %s: %w", vmName, ErrNotFound)
	}
	if err != nil {
		return Agent{}, fmt.Errorf("fleet: reading vm %s: %w", vmName, err)
	}

	return a, nil
}

// ByVMNames returns the agents registered under any of vmNames, in one
// read.
func (s *Store) ByVMNames(ctx context.Context, vmNames []string) ([]Agent, error) {
	if len(vmNames) == 0 {
		return nil, nil
	}

	// One JSON array rather than a "?" per name keeps the query text, and
	// so its prepared statement, the same for any number of names.
	names, err := json.Marshal(vmNames)
	if err != nil {
		return nil, fmt.Errorf("fleet: reading vms %v: %w", vmNames, err)
	}
	agents, err := queryAgents(ctx, s.q, "SELECT "+agentColumns+
		" FROM agents WHERE vm_name IN (SELECT value FROM json_each(?)) ORDER BY vm_name",
		string(names))
	if err != nil {
		return nil, fmt.Errorf("fleet: reading vms %v: %w", vmNames, err)
	}

	return agents, nil
}

// List returns every agent, sorted by VMName.
func (s *Store) List(ctx context.Context) ([]Agent, error) {
	agents, err := queryAgents(ctx, s.q, "SELECT "+agentColumns+" FROM agents ORDER BY vm_name")
	if err != nil {
		return nil, fmt.Errorf("fleet: listing agents: %w", err)
	}
	return agents, nil
}

// Counts returns how many agents there are and how many are healthy.
func (s *Store) Counts(ctx context.Context) (Counts, error) {
	var c Counts
	err := s.q.QueryRowContext(ctx, `SELECT COUNT(*),
		COUNT(*) FILTER (WHERE status = 'healthy') FROM agents`).Scan(&c.Agents, &c.Healthy)
	if err != nil {
		return Counts{}, fmt.Errorf("fleet: counting agents: %w", err)
	}

	return c, nil
}

// UpdateHealth records a good scrape at seen: the agent becomes healthy,
// its units are replaced and its last error is cleared.
func (s *Store) UpdateHealth(ctx context.Context, id string, seen time.Time,
	units []agentapi.Unit) error {
	if units == nil {
		units = []agentapi.Unit{}
	}
	data, err := json.Marshal(units)
	if err != nil {
		return fmt.Errorf("fleet: encoding units of %s: %w", id, err)
	}

	return s.update(ctx, id, `UPDATE agents SET status = ?, last_seen = ?, units = ?,
		last_error = '' WHERE id = ?`, StatusHealthy, formatTime(seen), string(data), id)
}

// UpdateAttestation replaces the agent's attestation record, e.g. after a
// re-attestation or when its evidence grew too old.
func (s *Store) UpdateAttestation(ctx context.Context, id string, at Attestation) error {
	m, err := encodeMeasurements(at.Measurements)
	if err != nil {
		return fmt.Errorf("fleet: updating attestation of %s: %w", id, err)
	}
	return s.update(ctx, id, `UPDATE agents SET att_type = ?, att_quote_format = ?,
		att_quote_b64 = ?, att_report_data_b64 = ?, att_verified = ?, att_status = ?,
		att_mrtd = ?, att_tcb_status = ?, att_verified_at = ?, att_measurements = ?,
		att_tcb_date = ? WHERE id = ?`,
		at.Type, at.QuoteFormat, at.QuoteB64, at.ReportDataB64, at.Verified, at.Status,
		at.MRTD, at.TCBStatus, formatTime(at.VerifiedAt), m, formatTime(at.TCBDate), id)
}

// SetTenant assigns the agent to tenant, or clears its tenant when tenant
// is nil. It returns the previous tenant.
func (s *Store) SetTenant(ctx context.Context, id string,
	tenant *ghoidc.Principal) (prev *ghoidc.Principal, err error) {
	a, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var kind, name string
	var pid int64
	if tenant != nil {
		kind, name, pid = string(tenant.Kind), tenant.Name, tenant.ID
	}

	err = s.update(ctx, id, `UPDATE agents SET tenant_kind = ?, tenant_name = ?, tenant_id = ?
		WHERE id = ?`, kind, name, pid, id)
	return a.Tenant, err
}

// SetClaims replaces the hostname claims of the agent's workloads.
func (s *Store) SetClaims(ctx context.Context, id string, claims []ingress.Claim) error {
	data, err := encodeClaims(claims)
	if err != nil {
		return fmt.Errorf("fleet: encoding claims of %s: %w", id, err)
	}
	return s.update(ctx, id, "UPDATE agents SET ingress_claims = ? WHERE id = ?", data, id)
}

// Shared returns the store's database handle, which the audit log and the
// session tables share.
func (s *Store) Shared() *sqldb.DB { return s.q }

// SetStatus sets an agent's status and last error, leaving LastSeen alone.
func (s *Store) SetStatus(ctx context.Context, id string, status Status, lastError string) error {
	if !status.Valid() {
		return fmt.Errorf("fleet: setting status of %s: invalid status %q", id, status)
	}
	return s.update(ctx, id, "UPDATE agents SET status = ?, last_error = ? WHERE id = ?",
		status, lastError, id)
}

func (s *Store) update(ctx context.Context, id, query string, args ...any) error {
	res, err := s.q.ExecContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("fleet: updating agent %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("fleet: updating agent %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("fleet: updating agent %s: %w", id, ErrNotFound)
	}

	return nil
}

// AuthenticateAgent returns the agent with the given id if token is its
// token, and [ErrBadToken] otherwise (including when there is no such
// agent). The digests are compared in constant time.
func (s *Store) AuthenticateAgent(ctx context.Context, id, token string) (Agent, error) {
	a, err := s.Get(ctx, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Agent{}, err
	}
	want := a.TokenHash
	if len(want) != sha256.Size {
		// Unknown agent: still hash and compare, so that the answer takes
		// about as long as for a known one.
		want = make([]byte, sha256.Size)
	}

	ok := subtle.ConstantTimeCompare(HashToken(token), want) == 1
	if !ok || err != nil || token == "" {
		return Agent{}, fmt.Errorf("fleet: authenticating agent %s: %w", id, ErrBadToken)
	}
	return a, nil
}

func (a *Agent) validate() error {
	var errs []error
	if a.ID == "" {
		errs = append(errs, errors.New("id is required"))
	}
	if !workload.ValidLabel(a.VMName) {
		errs = append(errs, fmt.Errorf("vm_name %q is not a lowercase DNS label", a.VMName))
	}
	if !a.Status.Valid() {
		errs = append(errs, fmt.Errorf("invalid status %q", a.Status))
	}
	if a.RegisteredAt.IsZero() {
		errs = append(errs, errors.New("registration time is required"))
	}

	if len(a.TokenHash) != sha256.Size {
		errs = append(errs, errors.New("token hash must be a SHA-256 digest"))
	}
	return errors.Join(errs...)
}
