package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

func TestMigrateConcurrently(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cp.db")
	dbs := []*sql.DB{openDB(t, path), openDB(t, path), openDB(t, path)}

	// The file exists, in WAL mode, before the race, as the control plane's
	// store leaves it: turning a new file to WAL from several connections
	// at once can deadlock in the rollback journal, which SQLite breaks by
	// failing one connection at once, whatever the busy timeout.
	if err := dbs[0].Ping(); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make([]error, len(dbs))
	for i := range dbs {
		wg.Go(func() { errs[i] = Migrate(context.Background(), dbs[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Migrate: %v", err)
	}
}

func TestAppend(t *testing.T) {
	l, _, _ := newTestLog(t)
	ctx := context.Background()

	first := mustAppend(t, l, Event{Actor: User("alice", 42), Action: ActionLogin,
		Outcome: OutcomeOK})
	second := mustAppend(t, l, deployEvent("dd-dev-agent-0001", "abc"))

	want := Entry{
		Seq: 1, Time: t0.Add(time.Second), Actor: Actor{Kind: ActorUser, Name: "alice", ID: "42"},
		Action: ActionLogin, Outcome: OutcomeOK, Details: json.RawMessage("{}"),
		PrevHash: GenesisHash, Hash: first.Hash,
	}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first entry (-want +got):\n%s", diff)
	}
	if first.Hash != first.ComputeHash() || !validHash(first.Hash) {
		t.Errorf("first hash %q is not its computed hash", first.Hash)
	}
	if second.Seq != 2 || second.PrevHash != first.Hash {
		t.Errorf("second entry seq %d prev %s, want 2 after %s", second.Seq, second.PrevHash,
			first.Hash)
	}

	head, err := l.Head(ctx)
	if err != nil || head != (Head{Seq: 2, Hash: second.Hash}) {
		t.Errorf("Head = %+v, %v; want entry 2", head, err)
	}

	page, err := l.List(ctx, Filter{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if diff := cmp.Diff([]Entry{second, first}, page.Entries); diff != "" {
		t.Errorf("stored entries differ from returned ones (-want +got):\n%s", diff)
	}
}

func TestAppendRefusesBadEvents(t *testing.T) {
	ok := Event{Actor: User("alice", 42), Action: ActionLogin, Outcome: OutcomeOK}
	tests := map[string]func(e *Event){
		"unknown actor kind":   func(e *Event) { e.Actor.Kind = "robot" },
		"empty actor name":     func(e *Event) { e.Actor.Name = "" },
		"non-numeric actor id": func(e *Event) { e.Actor.ID = "4x2" },
		"newline in name":      func(e *Event) { e.Actor.Name = "alice\nuser:root" },
		"upper-case action":    func(e *Event) { e.Action = "Deploy" },
		"empty action":         func(e *Event) { e.Action = "" },
		"unknown outcome":      func(e *Event) { e.Outcome = "maybe" },
		"long target":          func(e *Event) { e.Target = strings.Repeat("a", MaxField+1) },
		"invalid UTF-8":        func(e *Event) { e.Target = "agent-\xff" },
		"details array":        func(e *Event) { e.Details = []int{1} },
		"details null":         func(e *Event) { e.Details = json.RawMessage("null") },
		"details two objects":  func(e *Event) { e.Details = json.RawMessage(`{}{}`) },
		"details not JSON":     func(e *Event) { e.Details = json.RawMessage(`{"a":`) },
		"details too large": func(e *Event) {
			e.Details = map[string]string{"x": strings.Repeat("a", MaxDetails)}
		},
		"unencodable details": func(e *Event) { e.Details = map[string]any{"f": func() {}} },
	}

	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			l, _, _ := newTestLog(t)
			ev := ok
			mutate(&ev)

			if _, err := l.Append(context.Background(), ev); !errors.Is(err, ErrInvalid) {
				t.Errorf("Append error = %v, want ErrInvalid", err)
			}
			if head, _ := l.Head(context.Background()); head.Seq != 0 {
				t.Errorf("head after a refused event = %+v, want nothing recorded", head)
			}
		})
	}
}

func TestDetailsAreCanonical(t *testing.T) {
	l, _, _ := newTestLog(t)
	tests := []struct {
		name    string
		details any
		want    string
	}{
		{"nil", nil, `{}`},
		{"sorted keys and nesting",
			map[string]any{"b": 1, "a": map[string]any{"z": true, "y": nil}},
			`{"a":{"y":null,"z":true},"b":1}`},
		{"raw with spaces, numbers kept as written", json.RawMessage(
			` { "run_id" : 123456789012345678901, "f": 1.50 } `),
			`{"f":1.50,"run_id":123456789012345678901}`},
		{"html escaped", map[string]string{"ref": "<a&b>"}, `{"ref":"\u003ca\u0026b\u003e"}`},
		{"struct", struct {
			SpecHash string `json:"spec_hash"`
		}{"sha256:00"}, `{"spec_hash":"sha256:00"}`},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := mustAppend(t, l, Event{Actor: System("cp"), Action: "test", Outcome: OutcomeOK,
				Details: tc.details})
			if string(e.Details) != tc.want {
				t.Errorf("details = %s, want %s", e.Details, tc.want)
			}

			// The entry keeps its hash through a JSON round trip, as it
			// makes between an agent and the control plane.
			data, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			var back Entry
			if err := json.Unmarshal(data, &back); err != nil {
				t.Fatal(err)
			}
			if back.ComputeHash() != e.Hash {
				t.Errorf("hash changed through JSON: %s", data)
			}
		})
	}
}

// TestConcurrentAppends appends from several goroutines through two
// database handles, as two processes would; the chain must stay one.
func TestConcurrentAppends(t *testing.T) {
	l1, _, path := newTestLog(t)
	l2, err := Open(context.Background(), sqldb.New(openDB(t, path)), Options{})
	if err != nil {
		t.Fatal(err)
	}

	const workers, each = 8, 15
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		l := []*Log{l1, l2}[w%2]
		wg.Go(func() {
			for range each {
				_, err := l.Append(context.Background(), deployEvent(agentName(w), "abc"))
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
	}

	head, err := l1.Verify(context.Background())
	if err != nil {
		t.Fatalf("Verify after concurrent appends: %v", err)
	}
	if head.Seq != workers*each {
		t.Errorf("head seq = %d, want %d", head.Seq, workers*each)
	}
}

func BenchmarkAppend(b *testing.B) {
	l, _, _ := newTestLog(b)
	ctx := context.Background()
	ev := deployEvent("dd-dev-agent-0001", "abc")
	for b.Loop() {
		if _, err := l.Append(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}
