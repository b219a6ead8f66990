// Package sqlstmt keeps the prepared statements of a database/sql handle.
//
// SQLite parses and plans a statement each time it is prepared, and for
// the registry's wide rows that costs about as much as running it. A
// [Cache] prepares each query text once on the *sql.DB; database/sql then
// prepares it once per pooled connection and keeps it, also for use inside
// transactions ([Cache.Tx]).
package sqlstmt

import (
	"context"
	"database/sql"
	"errors"
	"sync"
)

// maxStatements bounds a cache whose callers build query texts, such as
// an IN list of a varying length; past it, queries run unprepared.
const maxStatements = 256

// Cache runs queries through statements prepared once per query text. It
// is safe for concurrent use. The zero value is not usable: call [New].
type Cache struct {
	db *sql.DB

	mu     sync.Mutex
	stmts  map[string]*sql.Stmt
	closed bool
}

// New returns a cache of statements prepared on db. The caller keeps
// owning db, and closes the cache before it.
func New(db *sql.DB) *Cache {
	return &Cache{db: db, stmts: map[string]*sql.Stmt{}}
}

// stmt returns the statement for query, preparing it on first use. It
// returns nil without an error when the query is to run unprepared: the
// cache is full or closed.
func (c *Cache) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()

	if st, ok := c.stmts[query]; ok {
		return st, nil
	}
	if c.closed || len(c.stmts) >= maxStatements {
		return nil, nil
	}

	// Preparing under mu keeps two callers from preparing the same text;
	// it happens once per text for the life of the cache.
	st, err := c.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.stmts[query] = st
	return st, nil
}

// QueryContext runs query like [sql.DB.QueryContext].
func (c *Cache) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows,
	error) {
	return scope{c: c}.query(ctx, query, args)
}

// QueryRowContext runs query like [sql.DB.QueryRowContext].
func (c *Cache) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return scope{c: c}.queryRow(ctx, query, args)
}

// ExecContext runs query like [sql.DB.ExecContext].
func (c *Cache) ExecContext(ctx context.Context, query string, args ...any) (sql.Result,
	error) {
	return scope{c: c}.exec(ctx, query, args)
}

// Tx returns the cache's view of tx: its queries use the statements
// already prepared on tx's connection.
func (c *Cache) Tx(tx *sql.Tx) Tx { return Tx{c: c, tx: tx} }

// Close closes the prepared statements. Queries after Close still work,
// unprepared.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()

	var errs []error
	for q, st := range c.stmts {
		errs = append(errs, st.Close())
		delete(c.stmts, q)
	}
	c.closed = true
	return errors.Join(errs...)
}

// Tx runs queries of one transaction through a [Cache].
type Tx struct {
	c  *Cache
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
	c  *Cache
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
	return s.c.db
}

// prepared returns the statement for query bound to the scope, or nil
// with the runner to run query unprepared.
func (s scope) prepared(ctx context.Context, query string) (*sql.Stmt, runner, error) {
	st, err := s.c.stmt(ctx, query)
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
