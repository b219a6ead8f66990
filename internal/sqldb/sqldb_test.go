package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	_ "modernc.org/sqlite"
)

// openDB opens a fresh database with a table kv. Without a busy timeout, a
// writer that finds the write lock taken fails at once with
// SQLITE_BUSY instead of waiting.
func openDB(t *testing.T) *DB {
	t.Helper()
	dsn := filepath.Join(t.TempDir(), "t.db") + "?_journal_mode=WAL&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	if _, err := db.Exec("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	d := New(db)
	t.Cleanup(func() { d.Close() })
	return d
}

func TestQueriesArePreparedOnce(t *testing.T) {
	ctx := context.Background()
	d := openDB(t)

	for i := range 3 {
		if _, err := d.ExecContext(ctx, "INSERT INTO kv (k, v) VALUES (?, ?)",
			fmt.Sprint("k", i), i); err != nil {
			t.Fatal(err)
		}
	}

	var v int
	if err := d.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = ?", "k2").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != 2 {
		t.Errorf("k2 = %d, want 2", v)
	}
	if got := sum(t, d, "SELECT v FROM kv"); got != 3 {
		t.Errorf("sum = %d, want 3", got)
	}
	if n := len(d.stmts); n != 3 {
		t.Errorf("cache holds %d statements, want 3", n)
	}
}

func TestWriteCommitsOrRollsBack(t *testing.T) {
	ctx := context.Background()
	d := openDB(t)
	errAbort := errors.New("abort")

	const insert = "INSERT INTO kv (k, v) VALUES (?, ?)"
	for _, commit := range []bool{false, true} {
		err := d.Write(ctx, func(tx Tx) error {
			if _, err := tx.ExecContext(ctx, insert, fmt.Sprint(commit), 5); err != nil {
				return err
			}

			var n int
			err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM kv").Scan(&n)
			if err != nil || n != 1 {
				t.Errorf("inside the transaction: %d rows, %v; want 1", n, err)
			}
			if !commit {
				return errAbort
			}
			return nil
		})
		if want := map[bool]error{false: errAbort, true: nil}[commit]; !errors.Is(err, want) {
			t.Fatalf("Write (commit %v) = %v, want %v", commit, err, want)
		}
	}

	// Only the committed row is left, and the statements stay usable
	// after their transactions ended.
	rows, err := d.QueryContext(ctx, "SELECT k FROM kv")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()

	var keys []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "true" {
		t.Errorf("rows after commit and rollback = %q, want [true]", keys)
	}
}

// TestWritersTakeTurns runs writers at once on a database without a busy
// timeout: any two that met at SQLite's write lock would fail there.
func TestWritersTakeTurns(t *testing.T) {
	ctx := context.Background()
	d := openDB(t)
	if _, err := d.ExecContext(ctx, "INSERT INTO kv (k, v) VALUES ('n', 0)"); err != nil {
		t.Fatal(err)
	}

	const writers, rounds = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*rounds)
	for w := range writers {
		wg.Go(func() {
			for range rounds {
				errs <- write(ctx, d, w%2 == 0)
			}
		})
	}
	wg.Wait()
	close(errs)

	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := d.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = 'n'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != writers*rounds {
		t.Errorf("counter = %d, want %d", n, writers*rounds)
	}
}

// write adds one to the counter, in a transaction or as one statement.
func write(ctx context.Context, d *DB, inTx bool) error {
	const incr = "UPDATE kv SET v = v + 1 WHERE k = 'n'"
	if !inTx {
		_, err := d.ExecContext(ctx, incr)
		return err
	}

	return d.Write(ctx, func(tx Tx) error {
		var v int
		if err := tx.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = 'n'").Scan(&v); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE kv SET v = ? WHERE k = 'n'", v+1)
		return err
	})
}

func TestBadQueryFailsAndIsNotCached(t *testing.T) {
	ctx := context.Background()
	d := openDB(t)

	const bad = "SELECT nope FROM kv"
	if _, err := d.QueryContext(ctx, bad); err == nil {
		t.Error("QueryContext: no error for an unknown column")
	}
	if _, err := d.ExecContext(ctx, bad); err == nil {
		t.Error("ExecContext: no error for an unknown column")
	}
	if err := d.QueryRowContext(ctx, bad).Scan(new(int)); err == nil {
		t.Error("QueryRowContext: no error for an unknown column")
	}

	err := d.Write(ctx, func(tx Tx) error { return tx.QueryRowContext(ctx, bad).Scan(new(int)) })
	if err == nil {
		t.Error("Tx.QueryRowContext: no error for an unknown column")
	}
	if len(d.stmts) != 0 {
		t.Errorf("cache holds %d statements after failures, want 0", len(d.stmts))
	}
}

func TestFullOrClosedCacheRunsUnprepared(t *testing.T) {
	ctx := context.Background()
	d := openDB(t)

	for i := range maxStatements + 10 {
		// Each text differs, as the IN lists of a varying length do.
		q := fmt.Sprintf("SELECT COUNT(*) + %d FROM kv", i)
		var n int
		if err := d.QueryRowContext(ctx, q).Scan(&n); err != nil || n != i {
			t.Fatalf("%s = %d, %v; want %d", q, n, err, i)
		}
	}
	if len(d.stmts) != maxStatements {
		t.Errorf("cache holds %d statements, want the bound %d", len(d.stmts), maxStatements)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ExecContext(ctx, "INSERT INTO kv (k, v) VALUES ('a', 1)"); err != nil {
		t.Fatalf("exec after Close: %v", err)
	}
	if got := sum(t, d, "SELECT v FROM kv"); got != 1 {
		t.Errorf("sum after Close = %d, want 1", got)
	}
	if len(d.stmts) != 0 {
		t.Errorf("closed cache holds %d statements, want 0", len(d.stmts))
	}
}

func sum(t *testing.T, d *DB, query string) int {
	t.Helper()
	rows, err := d.QueryContext(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()

	total := 0
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		total += v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// TestFirstUsesAtOnceKeepOneStatement runs a new query from several
// goroutines at once: each gets an answer, and one statement is kept.
func TestFirstUsesAtOnceKeepOneStatement(t *testing.T) {
	ctx := context.Background()
	d := openDB(t)

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			var n int
			errs <- d.QueryRowContext(ctx, "SELECT COUNT(*) FROM kv").Scan(&n)
		})
	}
	wg.Wait()
	close(errs)

	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(d.stmts) != 1 {
		t.Errorf("cache holds %d statements, want 1", len(d.stmts))
	}
}
