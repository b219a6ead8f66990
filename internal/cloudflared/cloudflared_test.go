//go:build unix

package cloudflared

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const testToken = "eyJhIjoiYWNjdCIsInQiOiJ0dW5uZWwiLCJzIjoic2VjcmV0In0="

// fakeScript is a stand-in for cloudflared. Each run appends a line to
// $FAKE_LOG: "argv=<args> token=<TUNNEL_TOKEN> secret=<DD_CF_API_TOKEN>".
// FAKE_MODE=exit exits with status 3; FAKE_MODE=serve runs until
// SIGTERM, which it records as "term".
const fakeScript = `#!/bin/sh
echo "argv=$* token=$TUNNEL_TOKEN secret=$DD_CF_API_TOKEN pid=$$" >> "$FAKE_LOG"
case "$FAKE_MODE" in
exit) exit 3 ;;
serve)
	trap 'echo term >> "$FAKE_LOG"; exit 0' TERM
	echo "connected"
	while :; do sleep 0.05; done ;;
esac
`

type harness struct {
	sv    *Supervisor
	log   string
	exits chan Exit
	mu    sync.Mutex
	waits []time.Duration
	ran   chan error
}

// start writes the fake binary, starts a supervisor in mode, and stops it
// when the test ends.
func start(t *testing.T, mode string, edit func(*Options)) *harness {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "cloudflared")
	if err := os.WriteFile(bin, []byte(fakeScript), 0o755); err != nil {
		t.Fatal(err)
	}

	h := &harness{log: filepath.Join(dir, "log"), exits: make(chan Exit, 100),
		ran: make(chan error, 1)}

	opts := Options{Token: testToken, Binary: bin,
		Env:         []string{"FAKE_LOG=" + h.log, "FAKE_MODE=" + mode},
		OnExit:      func(e Exit) { h.exits <- e },
		StopTimeout: 5 * time.Second,
		Sleep: func(ctx context.Context, d time.Duration) error {
			h.mu.Lock()
			h.waits = append(h.waits, d)
			h.mu.Unlock()
			return ctx.Err()
		}}

	if edit != nil {
		edit(&opts)
	}
	sv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}

	h.sv = sv
	go func() { h.ran <- sv.Run(context.Background()) }()
	t.Cleanup(sv.Stop)
	return h
}

func (h *harness) lines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(h.log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func (h *harness) nextExit(t *testing.T) Exit {
	t.Helper()
	select {
	case e := <-h.exits:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no exit reported")
		return Exit{}
	}
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTokenInEnvironmentNotArgv(t *testing.T) {
	t.Setenv("DD_CF_API_TOKEN", "parent-secret")
	h := start(t, "exit", nil)
	e := h.nextExit(t)
	h.sv.Stop()
	if e.Code != 3 {
		t.Errorf("exit code %d, want 3", e.Code)
	}

	first := h.lines(t)[0]
	want := "argv=tunnel --no-autoupdate run token=" + testToken + " secret= "
	if !strings.HasPrefix(first, want) {
		t.Errorf("fake saw %q, want prefix %q", first, want)
	}

	// The token is not on any process's command line either.
	pid := strings.TrimPrefix(first[strings.LastIndex(first, " ")+1:], "pid=")
	if cmdline, err := os.ReadFile("/proc/" + pid + "/cmdline"); err == nil &&
		strings.Contains(string(cmdline), testToken) {
		t.Errorf("token on the command line: %q", cmdline)
	}
}

func TestRestartsWithBackoff(t *testing.T) {
	h := start(t, "exit", func(o *Options) {
		o.MinBackoff, o.MaxBackoff = time.Second, 4*time.Second
	})

	for range 5 {
		if e := h.nextExit(t); e.Code != 3 {
			t.Fatalf("exit code %d, want 3", e.Code)
		}
	}

	h.sv.Stop()
	h.mu.Lock()
	waits := slices.Clone(h.waits)
	h.mu.Unlock()
	if len(waits) < 4 {
		t.Fatalf("waits %v, want at least 4", waits)
	}

	for i, w := range waits[:4] {
		step := min(time.Second<<i, 4*time.Second)
		if w < step/2 || w > step {
			t.Errorf("wait %d = %v, want within [%v, %v]", i, w, step/2, step)
		}
	}

	st := h.sv.Status()
	if st.State != StateStopped || st.Restarts < 4 || st.LastExit == nil {
		t.Errorf("status = %+v", st)
	}
	if n := len(h.lines(t)); n < 5 {
		t.Errorf("fake ran %d times, want at least 5", n)
	}
}

// A run that lasted StableAfter resets the backoff.
func TestStableRunResetsBackoff(t *testing.T) {
	h := start(t, "exit", func(o *Options) {
		o.MinBackoff, o.MaxBackoff, o.StableAfter = time.Second, time.Minute, time.Nanosecond
	})

	for range 4 {
		h.nextExit(t)
	}

	h.sv.Stop()
	h.mu.Lock()
	defer h.mu.Unlock()

	for i, w := range h.waits {
		if w < time.Second/2 || w > time.Second {
			t.Errorf("wait %d = %v, want within [0.5s, 1s]", i, w)
		}
	}
}

func TestStopKillsProcess(t *testing.T) {
	h := start(t, "serve", nil)
	waitFor(t, "running", func() bool { return h.sv.Status().State == StateRunning })
	pid := h.sv.Status().PID
	waitFor(t, "the fake to log", func() bool { return h.lines(t)[0] != "" })
	h.sv.Stop()

	select {
	case err := <-h.ran:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Run did not return after Stop")
	}

	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("process %d still alive", pid)
	}
	if lines := h.lines(t); lines[len(lines)-1] != "term" {
		t.Errorf("fake log %q, want it to end with a graceful SIGTERM", lines)
	}
	if st := h.sv.Status(); st.State != StateStopped || st.PID != 0 {
		t.Errorf("status after Stop = %+v", st)
	}

	select {
	case e := <-h.exits:
		t.Errorf("OnExit called for a requested stop: %+v", e)
	default:
	}

	h.sv.Stop() // again: no effect
}

func TestMissingBinaryBacksOff(t *testing.T) {
	h := start(t, "exit", func(o *Options) {
		o.Binary = filepath.Join(t.TempDir(), "absent")
	})
	e := h.nextExit(t)
	if e.Code != -1 || e.Err == "" {
		t.Errorf("exit = %+v, want code -1 with an error", e)
	}
	h.nextExit(t) // and it keeps trying
}

func TestRunTwiceAndStopFirst(t *testing.T) {
	sv, err := New(Options{Token: testToken, Binary: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}

	sv.Stop()
	if err := sv.Run(context.Background()); err != nil {
		t.Errorf("Run after Stop = %v, want nil", err)
	}
	if err := sv.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

func TestNewValidates(t *testing.T) {
	bad := map[string]Options{
		"no token":         {},
		"token flag":       {Token: testToken, Args: []string{"tunnel", "run", "--token", "x"}},
		"token flag equal": {Token: testToken, Args: []string{"--token=x"}},
		"token in args":    {Token: testToken, Args: []string{"tunnel", "run", testToken}},
		"env token":        {Token: testToken, Env: []string{"TUNNEL_TOKEN=x"}},
		"env malformed":    {Token: testToken, Env: []string{"NOEQUALS"}},
		"negative":         {Token: testToken, MinBackoff: -1},
	}
	for name, o := range bad {
		_, err := New(o)
		if err == nil {
			t.Errorf("New(%s) succeeded", name)
			continue
		}
		if strings.Contains(err.Error(), testToken) {
			t.Errorf("New(%s) error shows the token: %v", name, err)
		}
	}
}

func TestLineLogger(t *testing.T) {
	rec := &lineRecorder{}
	l := &lineLogger{log: slog.New(rec)}
	l.Write([]byte("one\ntw"))
	l.Write([]byte("o\n\nthree"))
	l.Flush()
	if want := []string{"one", "two", "three"}; !slices.Equal(rec.lines, want) {
		t.Errorf("lines = %q, want %q", rec.lines, want)
	}
}

// lineRecorder is a slog handler that keeps the "line" attributes.
type lineRecorder struct{ lines []string }

func (r *lineRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *lineRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *lineRecorder) WithGroup(string) slog.Handler            { return r }
func (r *lineRecorder) Handle(_ context.Context, rec slog.Record) error {
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "line" {
			r.lines = append(r.lines, a.Value.String())
		}
		return true
	})

	return nil
}
