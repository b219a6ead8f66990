package sqlstmt

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"

	_ "modernc.org/sqlite"
)

func openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "t.db")+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	if _, err := db.Exec("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	return db
}

func TestCacheRunsQueries(t *testing.T) {
	ctx := context.Background()
	c := New(openDB(t))
	defer c.Close()

	for i := range 3 {
		if _, err := c.ExecContext(ctx, "INSERT INTO kv (k, v) VALUES (?, ?)",
			fmt.Sprint("k", i), i); err != nil {
			t.Fatal(err)
		}
	}

	var v int
	if err := c.QueryRowContext(ctx, "SELECT v FROM kv WHERE k = ?", "k2").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != 2 {
		t.Errorf("k2 = %d, want 2", v)
	}
	if got := sum(t, c, "SELECT v FROM kv"); got != 3 {
		t.Errorf("sum = %d, want 3", got)
	}
	if n := len(c.stmts); n != 3 {
		t.Errorf("cache holds %d statements, want 3", n)
	}
}

func TestTxUsesCachedStatements(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	c := New(db)
	defer c.Close()

	const insert = "INSERT INTO kv (k, v) VALUES (?, ?)"
	for _, commit := range []bool{false, true} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}

		if _, err := c.Tx(tx).ExecContext(ctx, insert, fmt.Sprint(commit), 5); err != nil {
			t.Fatal(err)
		}
		var n int
		err = c.Tx(tx).QueryRowContext(ctx, "SELECT COUNT(*) FROM kv").Scan(&n)
		if err != nil || n != 1 {
			t.Fatalf("inside the transaction: %d rows, %v; want 1", n, err)
		}

		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	// Only the committed row is left, and the statements stay usable
	// after their transactions ended.
	rows, err := c.QueryContext(ctx, "SELECT k FROM kv")
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

func TestBadQueryFailsAndIsNotCached(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	c := New(db)
	defer c.Close()

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()

	const bad = "SELECT nope FROM kv"
	if _, err := c.QueryContext(ctx, bad); err == nil {
		t.Error("QueryContext: no error for an unknown column")
	}
	if _, err := c.ExecContext(ctx, bad); err == nil {
		t.Error("ExecContext: no error for an unknown column")
	}
	if err := c.QueryRowContext(ctx, bad).Scan(new(int)); err == nil {
		t.Error("QueryRowContext: no error for an unknown column")
	}
	if err := c.Tx(tx).QueryRowContext(ctx, bad).Scan(new(int)); err == nil {
		t.Error("Tx.QueryRowContext: no error for an unknown column")
	}
	if len(c.stmts) != 0 {
		t.Errorf("cache holds %d statements after failures, want 0", len(c.stmts))
	}
}

func TestFullOrClosedCacheRunsUnprepared(t *testing.T) {
	ctx := context.Background()
	c := New(openDB(t))

	for i := range maxStatements + 10 {
		// Each text differs, as the IN lists of a varying length do.
		q := fmt.Sprintf("SELECT COUNT(*) + %d FROM kv", i)
		var n int
		if err := c.QueryRowContext(ctx, q).Scan(&n); err != nil || n != i {
			t.Fatalf("%s = %d, %v; want %d", q, n, err, i)
		}
	}
	if len(c.stmts) != maxStatements {
		t.Errorf("cache holds %d statements, want the bound %d", len(c.stmts), maxStatements)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(ctx, "INSERT INTO kv (k, v) VALUES ('a', 1)"); err != nil {
		t.Fatalf("exec after Close: %v", err)
	}
	if got := sum(t, c, "SELECT v FROM kv"); got != 1 {
		t.Errorf("sum after Close = %d, want 1", got)
	}
	if len(c.stmts) != 0 {
		t.Errorf("closed cache holds %d statements, want 0", len(c.stmts))
	}
}

func sum(t *testing.T, c *Cache, query string) int {
	t.Helper()
	rows, err := c.QueryContext(context.Background(), query)
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
