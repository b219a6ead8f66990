package audit

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// agentChain records n events in a fresh forwarder and returns them.
func agentChain(t *testing.T, n int) []Entry {
	t.Helper()
	f := openForwarder(t, filepath.Join(t.TempDir(), "queue.jsonl"), 0)
	appendN(t, f, n)
	return f.Pending()
}

func TestImport(t *testing.T) {
	l, _, _ := newTestLog(t)
	ctx := context.Background()
	mustAppend(t, l, Event{Actor: User("alice", 42), Action: ActionLogin, Outcome: OutcomeOK})
	chain := agentChain(t, 4)
	agent := agentName(7)

	steps := []struct {
		name  string
		batch []Entry
		added int
	}{
		{"first batch", chain[:2], 2},
		{"resent batch", chain[:2], 0},
		{"overlapping batch", chain[1:], 2},
		{"everything again", chain, 0},
	}
	for _, s := range steps {
		n, err := l.Import(ctx, agent, s.batch)
		if err != nil || n != s.added {
			t.Fatalf("%s: Import = %d, %v; want %d added", s.name, n, err, s.added)
		}
	}

	page, err := l.List(ctx, Filter{Agent: agent})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{5, 4, 3, 2}, seqs(page.Entries)); diff != "" {
		t.Fatalf("copies listed by agent (-want +got):\n%s", diff)
	}

	for i, got := range page.Entries {
		orig := chain[len(chain)-1-i]
		want := Origin{Agent: agent, Seq: orig.Seq, PrevHash: orig.PrevHash, Hash: orig.Hash}
		if got.Origin == nil || *got.Origin != want || got.Actor != orig.Actor ||
			!got.Time.Equal(orig.Time) || string(got.Details) != string(orig.Details) {
			t.Errorf("copy %d = %+v, want the agent's fields with origin %+v", got.Seq, got, want)
		}
	}

	if _, err := l.Verify(ctx); err != nil {
		t.Errorf("Verify after imports: %v", err)
	}
}

func TestImportRefuses(t *testing.T) {
	chain := agentChain(t, 4)
	edited := append([]Entry(nil), chain...)
	edited[1].Target = "dd-dev-agent-9999"

	reordered := []Entry{chain[1], chain[0]}
	withOrigin := append([]Entry(nil), chain[:1]...)
	withOrigin[0].Origin = &Origin{Agent: "x", Seq: 1}

	other := agentChain(t, 4)
	other[0].Details = []byte(`{"other":true}`)
	rechain(other)

	tests := []struct {
		name    string
		earlier []Entry // imported first, successfully
		batch   []Entry
		want    error
	}{
		{"edited entry", nil, edited, ErrInvalid},
		{"out of order", nil, reordered, ErrInvalid},
		{"entry with an origin", nil, withOrigin, ErrInvalid},
		{"gap after earlier entries", chain[:1], chain[2:], ErrOriginGap},
		{"older than the first copy", chain[2:3], chain[:2], ErrOriginGap},
		{"another chain's entry 1", chain[:2], other[:1], ErrOriginConflict},
		{"another chain continuing", chain[:2], other[2:], ErrOriginGap},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, _, _ := newTestLog(t)
			ctx := context.Background()
			if _, err := l.Import(ctx, "agent-a", tc.earlier); err != nil {
				t.Fatalf("earlier Import: %v", err)
			}

			before, _ := l.Head(ctx)
			if _, err := l.Import(ctx, "agent-a", tc.batch); !errors.Is(err, tc.want) {
				t.Errorf("Import error = %v, want %v", err, tc.want)
			}
			if after, _ := l.Head(ctx); after != before {
				t.Errorf("head moved from %+v to %+v on a refused import", before, after)
			}
		})
	}
}

// rechain recomputes the links and hashes of entries after an edit.
func rechain(entries []Entry) {
	for i := range entries {
		if i > 0 {
			entries[i].PrevHash = entries[i-1].Hash
		}
		entries[i].Hash = entries[i].ComputeHash()
	}
}

// TestImportAcceptsAChainContinuedUnderANewID: an agent that registers
// again gets a new id but keeps its forwarder and chain.
func TestImportAcceptsAChainContinuedUnderANewID(t *testing.T) {
	l, _, _ := newTestLog(t)
	ctx := context.Background()
	chain := agentChain(t, 4)
	if _, err := l.Import(ctx, "agent-old", chain[:2]); err != nil {
		t.Fatal(err)
	}

	if n, err := l.Import(ctx, "agent-new", chain[2:]); err != nil || n != 2 {
		t.Fatalf("Import under a new id = %d, %v; want 2 added", n, err)
	}
	if _, err := l.Verify(ctx); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

// TestVerifyChecksCopies: a copy edited, and rehashed together with the
// head, still fails against the agent's own hash.
func TestVerifyChecksCopies(t *testing.T) {
	l, db, _ := newTestLog(t)
	ctx := context.Background()
	if _, err := l.Import(ctx, "agent-a", agentChain(t, 2)); err != nil {
		t.Fatal(err)
	}

	e, err := scanEntry(db.QueryRow("SELECT " + entryColumns + " FROM audit_log WHERE seq = 2"))
	if err != nil {
		t.Fatal(err)
	}

	e.Outcome = OutcomeError
	tamper(t, db)
	if _, err := db.Exec("UPDATE audit_log SET outcome = ?, hash = ? WHERE seq = 2",
		e.Outcome, e.ComputeHash()); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE audit_head SET hash = ?", e.ComputeHash()); err != nil {
		t.Fatal(err)
	}

	_, err = l.Verify(ctx)
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Seq != 2 || ce.Reason != ReasonOriginHash {
		t.Errorf("Verify = %v, want entry 2 %q", err, ReasonOriginHash)
	}
}
