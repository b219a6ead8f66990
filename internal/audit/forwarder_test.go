package audit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func openForwarder(t *testing.T, path string, batch int) *Forwarder {
	t.Helper()
	f, err := OpenForwarder(ForwarderOptions{Path: path, Batch: batch, Now: stepClock()})
	if err != nil {
		t.Fatalf("OpenForwarder: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// recorder is a SendFunc that keeps what it was sent and fails on the
// calls listed in failOn (counting from 1).
type recorder struct {
	mu      sync.Mutex
	calls   int
	failOn  map[int]bool
	batches [][]int64
	entries []Entry
}

func (r *recorder) send(ctx context.Context, entries []Entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.failOn[r.calls] {
		return errors.New("control plane unreachable")
	}

	r.batches = append(r.batches, seqs(entries))
	r.entries = append(r.entries, entries...)
	return nil
}

func appendN(t *testing.T, f *Forwarder, n int) {
	t.Helper()
	for i := range n {
		mustAppend(t, f, deployEvent("", string(rune('a'+i))))
	}
}

func TestForwarderKeepsEntriesUntilAcknowledged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit", "queue.jsonl")
	f := openForwarder(t, path, 2)
	appendN(t, f, 3)
	ctx := context.Background()

	down := &recorder{failOn: map[int]bool{1: true}}
	if n, err := f.Ship(ctx, down.send); err == nil || n != 0 {
		t.Fatalf("Ship to a failing control plane = %d, %v; want an error", n, err)
	}
	if got := seqs(f.Pending()); !cmp.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("pending after a failed send = %v, want all three", got)
	}

	up := &recorder{}
	if n, err := f.Ship(ctx, up.send); err != nil || n != 3 {
		t.Fatalf("Ship = %d, %v; want 3 shipped", n, err)
	}

	if diff := cmp.Diff([][]int64{{1, 2}, {3}}, up.batches); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}
	if p := f.Pending(); len(p) != 0 {
		t.Errorf("pending after acknowledgement = %v, want none", seqs(p))
	}
	if data, err := os.ReadFile(path); err != nil || len(data) != 0 {
		t.Errorf("queue after acknowledgement = %q, %v; want empty", data, err)
	}

	// The chain goes on from the acknowledged head.
	e := mustAppend(t, f, deployEvent("", "d"))
	if e.Seq != 4 || e.PrevHash != up.entries[2].Hash {
		t.Errorf("entry after acknowledgement = %d after %s, want 4 after entry 3", e.Seq,
			e.PrevHash)
	}
}

func TestForwarderSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.jsonl")
	f := openForwarder(t, path, 2)
	appendN(t, f, 3)

	flaky := &recorder{failOn: map[int]bool{2: true}}
	if n, err := f.Ship(context.Background(), flaky.send); err == nil || n != 2 {
		t.Fatalf("Ship = %d, %v; want 2 shipped, then a failure", n, err)
	}

	before := f.Pending()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	f = openForwarder(t, path, 2)
	if diff := cmp.Diff(before, f.Pending()); diff != "" {
		t.Fatalf("pending after restart (-want +got):\n%s", diff)
	}

	e := mustAppend(t, f, deployEvent("", "d"))
	if e.Seq != 4 || e.PrevHash != before[0].Hash {
		t.Errorf("entry after restart = %d after %s, want 4 after entry 3", e.Seq, e.PrevHash)
	}

	up := &recorder{}
	if _, err := f.Ship(context.Background(), up.send); err != nil {
		t.Fatal(err)
	}
	all := append(flaky.entries, up.entries...)
	if diff := cmp.Diff([]int64{1, 2, 3, 4}, seqs(all)); diff != "" {
		t.Errorf("everything shipped (-want +got):\n%s", diff)
	}
}

func TestForwarderDropsTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.jsonl")
	f := openForwarder(t, path, 0)
	appendN(t, f, 2)
	f.Close()

	// A crash in the middle of an append leaves half a line.
	appendFile(t, path, `{"seq":3,"time":"2026-03-01T12:00:`)

	f = openForwarder(t, path, 0)
	if got := seqs(f.Pending()); !cmp.Equal(got, []int64{1, 2}) {
		t.Fatalf("pending = %v, want the two whole entries", got)
	}

	mustAppend(t, f, deployEvent("", "c"))
	f.Close()
	f = openForwarder(t, path, 0)
	if got := seqs(f.Pending()); !cmp.Equal(got, []int64{1, 2, 3}) {
		t.Errorf("pending after reopening = %v, want 1 2 3", got)
	}
}

func TestForwarderSkipsAcknowledgedEntriesLeftInQueue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.jsonl")
	f := openForwarder(t, path, 0)
	appendN(t, f, 3)
	second := f.Pending()[1]
	f.Close()

	// A crash after the acknowledgement was written, before the queue was
	// rewritten.
	ack := `{"seq":2,"hash":"` + second.Hash + `"}` + "\n"
	if err := os.WriteFile(path+".ack", []byte(ack), 0o600); err != nil {
		t.Fatal(err)
	}

	f = openForwarder(t, path, 0)
	if got := seqs(f.Pending()); !cmp.Equal(got, []int64{3}) {
		t.Errorf("pending = %v, want only entry 3", got)
	}

	data, _ := os.ReadFile(path)
	if n := strings.Count(string(data), "\n"); n != 1 {
		t.Errorf("queue holds %d lines after opening, want it compacted to 1", n)
	}
}

func TestForwarderRefusesDamagedQueue(t *testing.T) {
	tests := map[string]struct {
		damage func(t *testing.T, path string, hashes []string)
		reason Reason
	}{
		"edited entry": {func(t *testing.T, path string, _ []string) {
			editFile(t, path, `"sha":"b"`, `"sha":"z"`)
		}, ReasonHash},
		"removed entry": {func(t *testing.T, path string, _ []string) {
			lines := strings.SplitAfter(readFile(t, path), "\n")
			writeFile(t, path, lines[0]+lines[2])
		}, ReasonMissing},
		"acknowledgement of another chain": {func(t *testing.T, path string, h []string) {
			writeFile(t, path+".ack", `{"seq":2,"hash":"`+h[0]+`"}`)
		}, ReasonHead},
		"queue behind its acknowledgement": {func(t *testing.T, path string, h []string) {
			writeFile(t, path+".ack", `{"seq":7,"hash":"`+h[0]+`"}`)
		}, ReasonOrder},
	}

	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "queue.jsonl")
			f := openForwarder(t, path, 0)
			appendN(t, f, 3)

			var hashes []string
			for _, e := range f.Pending() {
				hashes = append(hashes, e.Hash)
			}
			f.Close()

			tc.damage(t, path, hashes)
			_, err := OpenForwarder(ForwarderOptions{Path: path})
			var ce *ChainError
			if !errors.As(err, &ce) || ce.Reason != tc.reason {
				t.Errorf("OpenForwarder error = %v, want a ChainError %q", err, tc.reason)
			}
		})
	}
}

func TestForwarderRunShipsAfterAppend(t *testing.T) {
	f := openForwarder(t, filepath.Join(t.TempDir(), "queue.jsonl"), 0)
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan []Entry, 10)
	done := make(chan error)
	go func() {
		done <- f.Run(ctx, func(_ context.Context, e []Entry) error { sent <- e; return nil },
			time.Hour)
	}()

	mustAppend(t, f, deployEvent("", "a"))
	select {
	case got := <-sent:
		if len(got) != 1 || got[0].Seq != 1 {
			t.Errorf("Run sent %v, want entry 1", seqs(got))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not ship the appended entry")
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
}

func TestForwarderClosed(t *testing.T) {
	f := openForwarder(t, filepath.Join(t.TempDir(), "queue.jsonl"), 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}

	if _, err := f.Append(context.Background(), deployEvent("", "a")); !errors.Is(err,
		os.ErrClosed) {
		t.Errorf("Append after Close = %v, want os.ErrClosed", err)
	}
	if _, err := f.Ship(context.Background(), (&recorder{}).send); !errors.Is(err,
		os.ErrClosed) {
		t.Errorf("Ship after Close = %v, want os.ErrClosed", err)
	}
}

func TestForwarderOptions(t *testing.T) {
	for name, opts := range map[string]ForwarderOptions{
		"no path":       {},
		"batch too big": {Path: filepath.Join(t.TempDir(), "q"), Batch: MaxImport + 1},
	} {
		if _, err := OpenForwarder(opts); err == nil {
			t.Errorf("%s: OpenForwarder succeeded, want an error", name)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path, data string) {
	t.Helper()
	writeFile(t, path, readFile(t, path)+data)
}

func editFile(t *testing.T, path, old, new string) {
	t.Helper()
	s := readFile(t, path)
	if !strings.Contains(s, old) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	writeFile(t, path, strings.Replace(s, old, new, 1))
}
