package audit

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// stepClock returns a clock that starts at t0 and advances a second per
// call, so that entries have distinct, predictable times.
func stepClock() func() time.Time {
	var mu sync.Mutex
	now := t0
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Second)
		return now
	}
}

// openDB opens path the way a caller of this package would. The DSN has
// no _txlock, so appends must take the write lock themselves.
func openDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_busy_timeout=10000&_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// newTestLog migrates a fresh database and opens its log.
func newTestLog(t testing.TB) (*Log, *sql.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cp.db")
	db := openDB(t, path)
	ctx := context.Background()
	if err := Migrate(ctx, db); err != nil {
		t.Fatalf("Migrate: %v", err)
	}

	l, err := Open(ctx, sqldb.New(db), Options{Now: stepClock()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l, db, path
}

func mustAppend(t *testing.T, r Recorder, ev Event) Entry {
	t.Helper()
	e, err := r.Append(context.Background(), ev)
	if err != nil {
		t.Fatalf("Append(%s): %v", ev.Action, err)
	}
	return e
}

// deployEvent is a typical CI deploy to agent.
func deployEvent(agent, sha string) Event {
	return Event{
		Actor:   CI("org:acme(1)", "acme/app", sha),
		Action:  ActionDeploy,
		Target:  agent,
		Outcome: OutcomeOK,
		Details: map[string]any{
			"spec_hash": "sha256:0f1e", "repository": "acme/app", "ref": "refs/heads/main",
			"sha": sha, "workflow": "deploy", "run_id": 12345678901,
		},
	}
}

// tamper runs SQL against the log's tables as someone with write access
// to the file would: first dropping the append-only triggers.
func tamper(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	all := append([]string{
		"DROP TRIGGER IF EXISTS audit_log_no_update",
		"DROP TRIGGER IF EXISTS audit_log_no_delete",
	}, stmts...)
	for _, s := range all {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("tampering with %q: %v", s, err)
		}
	}
}

// seqs returns the Seq of each entry.
func seqs(entries []Entry) []int64 {
	out := make([]int64, len(entries))
	for i, e := range entries {
		out[i] = e.Seq
	}
	return out
}

func agentName(i int) string { return fmt.Sprintf("dd-dev-agent-%04d", i) }
