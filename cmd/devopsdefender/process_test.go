package main

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/devfleet"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
)

// runMainEnv makes the test binary behave as devopsdefender itself, so
// tests can run the real command in processes of its own.
const runMainEnv = "DD_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// proc is devopsdefender running in a child process.
type proc struct {
	cmd  *exec.Cmd
	out  syncBuffer
	errs syncBuffer
	done chan struct{}
	err  error // set before done closes
}

// startProc runs devopsdefender with args in a child process, which the
// test's end kills if it still runs.
func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(os.Args[0], args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), runMainEnv+"=1")
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}

	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()

	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}

		if t.Failed() {
			t.Logf("devopsdefender %s: stderr:\n%s", strings.Join(args, " "), p.errs.String())
		}
	})

	return p
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(limit):
		t.Fatalf("devopsdefender %v still runs after %s", p.cmd.Args[1:], limit)
	}

	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		return exit.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// TestSecondControlPlaneProcess runs the dev fleet and then control
// planes in processes of their own, as a person would in two terminals:
// each new control plane makes the previous one stop (a joined one
// exits), while the fleet's agents keep serving.
func TestSecondControlPlaneProcess(t *testing.T) {
	dir := t.TempDir()
	fleet := startProc(t, "dev", "--state-dir", dir, "--listen", "127.0.0.1:0")
	st := waitState(t, dir, func(devfleet.State) bool { return true })

	// A second fleet on the same state dir is refused and changes nothing.
	again := startProc(t, "dev", "--state-dir", dir, "--listen", "127.0.0.1:0")
	if code := again.wait(t, time.Minute); code != 1 ||
		!strings.Contains(again.errs.String(), "already running") {
		t.Errorf("a second dev = exit %d, stderr %q; want 1 and \"already running\"", code,
			again.errs.String())
	}

	second := startProc(t, "dev", "cp", "--state-dir", dir)
	st2 := waitState(t, dir, func(s devfleet.State) bool { return s.CPURL != st.CPURL })
	eventually(t, "the fleet reports its control plane fenced", func() bool {
		return strings.Contains(fleet.errs.String(), "fenced this fleet's own one")
	})
	checkAgentServes(t, st)

	third := startProc(t, "dev", "cp", "--state-dir", dir)
	waitState(t, dir, func(s devfleet.State) bool {
		return s.CPURL != st.CPURL && s.CPURL != st2.CPURL
	})
	if code := second.wait(t, time.Minute); code != 0 {
		t.Errorf("the fenced joined control plane exited with %d", code)
	}
	if !strings.Contains(second.errs.String(), "was fenced") {
		t.Errorf("the fenced control plane did not say why it exited:\n%s", second.errs.String())
	}
	checkAgentServes(t, st)

	select {
	case <-fleet.done:
		t.Errorf("the fleet's process exited: %v", fleet.err)
	case <-third.done:
		t.Errorf("the newest control plane exited: %v", third.err)
	default:
	}

	resp, err := localedge.HTTPClient().Get(st.DashboardURL + "health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the control plane's health through the edge = %d", resp.StatusCode)
	}
}

// waitState waits until dev.json in dir exists and satisfies ok.
func waitState(t *testing.T, dir string, ok func(devfleet.State) bool) devfleet.State {
	t.Helper()
	var st devfleet.State
	eventually(t, "dev.json", func() bool {
		if _, err := os.Stat(filepath.Join(dir, devfleet.StateFile)); err != nil {
			return false
		}
		var err error
		st, err = devfleet.LoadState(dir)
		return err == nil && ok(st)
	})

	return st
}

// checkAgentServes checks that the fleet's first agent answers on the edge.
func checkAgentServes(t *testing.T, st devfleet.State) {
	t.Helper()
	resp, err := localedge.HTTPClient().Get(st.Agents[0].URL + "/health")
	if err != nil {
		t.Fatal(err)
	}

	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("agent health through the edge = %d", resp.StatusCode)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within the deadline", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for a child's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
