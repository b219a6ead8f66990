// Package sqldb runs queries on a SQLite database that several parts of
// the control plane share (the registry, the audit log, web sessions).
//
// Two things make that cheaper than plain database/sql:
//
//   - Statements are prepared once per query text. SQLite parses and plans
//     a statement each time it is prepared, and for the registry's wide
//     rows that costs about as much as running it; database/sql then keeps
//     the prepared statement per pooled connection, also for use inside
//     transactions.
//   - Writers of this process take turns on a mutex before they begin.
//     SQLite admits one writer at a time, and a second connection that
//     finds the write lock taken sleeps in its busy handler (1 ms at
//     least) before it asks again; queueing in Go wakes it as soon as the
//     lock is free. Other processes sharing the file still wait on the
//     busy timeout.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// maxStatements bounds a cache whose callers build query texts, such as
// an IN list of a varying length; past it, queries run unprepared.
const maxStatements = 256

// DB is a shared SQLite database. It is safe for concurrent use.
type DB struct {
	db *sql.DB

	// write is held by this process's writer: a transaction of
	// [DB.Write], or a statement of [DB.ExecContext].
	write sync.Mutex

	mu     sync.Mutex // guards stmts and closed
	stmts  map[string]*sql.Stmt
	closed bool
}

// New returns db, which should begin its transactions IMMEDIATE (the
// modernc.org/sqlite DSN parameter _txlock=immediate) so that a write
// transaction holds SQLite's write lock from its start, and must not be
// limited to one open connection: the first use of a query inside a
// transaction prepares it on another. The caller keeps owning db, and
// closes the returned DB just before it.
func New(db *sql.DB) *DB {
	return &DB{db: db, stmts: map[string]*sql.Stmt{}}
}

// SQL returns the underlying database, for what DB does not offer, such as
// a read-only transaction. Writes through it do not take their turn.
func (d *DB) SQL() *sql.DB { return d.db }

// QueryContext runs a reading query like [sql.DB.QueryContext].
func (d *DB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows,
	error) {
	return scope{d: d}.query(ctx, query, args)
}

// QueryRowContext runs a reading query like [sql.DB.QueryRowContext].
func (d *DB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return scope{d: d}.queryRow(ctx, query, args)
}

// ExecContext runs a statement like [sql.DB.ExecContext], in this
// process's turn of writers. Inside [DB.Write] use [Tx.ExecContext]: this
// would wait for the transaction that called it.
func (d *DB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result,
	error) {
	d.write.Lock()
	defer d.write.Unlock()

	return scope{d: d}.exec(ctx, query, args)
}

// Write runs fn in a write transaction, in this process's turn of
// writers, and commits it if fn returns nil. fn must run its statements on
// the Tx it is given; it may read through d.
func (d *DB) Write(ctx context.Context, fn func(Tx) error) error {
	d.write.Lock()
	defer d.write.Unlock()

	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	defer tx.Rollback()

	if err := fn(Tx{d: d, tx: tx}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

// Close closes the prepared statements. Call it as the database closes:
// a query that runs meanwhile may fail.
func (d *DB) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()

	var errs []error
	for q, st := range d.stmts {
		errs = append(errs, st.Close())
		delete(d.stmts, q)
	}
	d.closed = true
	return errors.Join(errs...)
}

// stmt returns the statement for query, preparing it on first use. It
// returns nil without an error when the query is to run unprepared: the
// cache is full or closed.
func (d *DB) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	d.mu.Lock()
	st, ok := d.stmts[query]
	full := d.closed || len(d.stmts) >= maxStatements
	d.mu.Unlock()

	switch {
	case ok:
		return st, nil
	case full:
		return nil, nil
	}

	// Prepare without holding mu, which every query takes: a slow
	// preparation must not hold up the statements already prepared.
	st, err := d.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	return d.keep(query, st), nil
}

// keep caches st for query and returns the statement to use: st, the one
// another caller prepared meanwhile, or nil to run query unprepared if the
// cache filled or closed meanwhile.
func (d *DB) keep(query string, st *sql.Stmt) *sql.Stmt {
	d.mu.Lock()
	defer d.mu.Unlock()

	kept, ok := d.stmts[query]
	switch {
	case ok:
		st.Close()
		return kept
	case d.closed || len(d.stmts) >= maxStatements:
		st.Close()
		return nil
	}

	d.stmts[query] = st
	return st
}

// Tx is a transaction of [DB.Write]. Its statements are shared by query
// text: close the rows of a query before running the same text again in
// the transaction.
type Tx struct {
	d  *DB
	tx *sql.Tx
}

// QueryContext runs query like [sql.Tx.QueryContext].
func (t Tx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return scope(t).query(ctx, query, args)
}

// QueryRowContext runs query like [sql.Tx.QueryRowContext].
func (t Tx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return scope(t).queryRow(ctx, query, args)
}

// ExecContext runs query like [sql.Tx.ExecContext].
func (t Tx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return scope(t).exec(ctx, query, args)
}

// scope is where a query runs: in transaction tx, or on the pool when tx
// is nil.
type scope struct {
	d  *DB
	tx *sql.Tx
}

// runner is what *sql.DB and *sql.Tx share.
type runner interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (s scope) runner() runner {
	if s.tx != nil {
		return s.tx
	}
	return s.d.db
}

// prepared returns the statement for query bound to the scope, or nil
// with the runner to run query unprepared.
func (s scope) prepared(ctx context.Context, query string) (*sql.Stmt, runner, error) {
	st, err := s.d.stmt(ctx, query)
	switch {
	case err != nil:
		return nil, nil, err
	case st == nil:
		return nil, s.runner(), nil
	case s.tx != nil:
		// Tx.StmtContext reuses what the pool prepared on tx's
		// connection; the bound copy closes with the transaction.
		st = s.tx.StmtContext(ctx, st)
	}
	return st, nil, nil
}

func (s scope) query(ctx context.Context, query string, args []any) (*sql.Rows, error) {
	st, r, err := s.prepared(ctx, query)
	switch {
	case err != nil:
		return nil, err
	case r != nil:
		return r.QueryContext(ctx, query, args...)
	}
	return st.QueryContext(ctx, args...)
}

func (s scope) queryRow(ctx context.Context, query string, args []any) *sql.Row {
	st, r, err := s.prepared(ctx, query)
	switch {
	case err != nil:
		// Unprepared, the query reports its own preparation error
		// through the row, as database/sql does.
		return s.runner().QueryRowContext(ctx, query, args...)
	case r != nil:
		return r.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

func (s scope) exec(ctx context.Context, query string, args []any) (sql.Result, error) {
	st, r, err := s.prepared(ctx, query)
	switch {
	case err != nil:
		return nil, err
	case r != nil:
		return r.ExecContext(ctx, query, args...)
	}
	return st.ExecContext(ctx, args...)
}
