package server

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// testServer is a runtime serving on a short temporary socket path.
type testServer struct {
	srv    *Server
	client *runtime.Client
}

// startServer runs a server with opts until the test ends. An empty
// DataDir becomes a temporary directory.
func startServer(t testing.TB, opts Options) *testServer {
	t.Helper()
	srv, errc := serveAsync(t, opts)
	select {
	case <-srv.Ready():
	case err := <-errc:
		t.Fatalf("Serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready after 30s")
	}

	copts := runtime.ClientOptions{SocketPath: srv.SocketPath(), Token: srv.Token()}
	c, err := runtime.NewClient(copts)
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{srv: srv, client: c}
}

// serveAsync starts Serve and stops it when the test ends, failing the test
// if it does not return cleanly.
func serveAsync(t testing.TB, opts Options) (*Server, <-chan error) {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	if opts.SocketPath == "" {
		opts.SocketPath = shortSocketPath(t)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}

	srv, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		errc <- srv.Serve(ctx)
	}()

	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return 30s after its context ended")
		}
	})
	return srv, errc
}

// shortSocketPath is a socket path that fits a sockaddr_un, which test
// temporary directories named after long test names may not.
func shortSocketPath(t testing.TB) string {
	dir, err := os.MkdirTemp("", "ee")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir + "/agent.sock"
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// deploy deploys spec and fails the test on an error.
func (ts *testServer) deploy(t testing.TB, spec workload.Spec) string {
	t.Helper()
	id, err := ts.client.Deploy(context.Background(), spec)
	if err != nil {
		t.Fatalf("Deploy(%+v): %v", spec, err)
	}
	return id
}

// find returns deployment id from list, or nil.
func (ts *testServer) find(t testing.TB, id string) *runtime.Deployment {
	t.Helper()
	deps, err := ts.client.List(context.Background())
	if err != nil {
		t.Fatalf("List: %v", err)
	}

	for i := range deps {
		if deps[i].ID == id {
			return &deps[i]
		}
	}
	return nil
}

// waitStatus polls until deployment id has one of the given statuses.
func (ts *testServer) waitStatus(t testing.TB, id string, statuses ...string) runtime.Deployment {
	t.Helper()
	var last *runtime.Deployment
	waitFor(t, "deployment "+id+" to reach "+strings.Join(statuses, "/"), func() bool {
		last = ts.find(t, id)
		for _, s := range statuses {
			if last != nil && last.Status == s {
				return true
			}
		}
		return false
	})

	return *last
}

// waitLog polls the deployment's log until a line contains want.
func (ts *testServer) waitLog(t testing.TB, id, want string) []string {
	t.Helper()
	var lines []string
	waitFor(t, "a log line containing "+strconv.Quote(want), func() bool {
		var err error
		lines, err = ts.client.Logs(context.Background(), id, 1000)
		if err != nil {
			t.Fatalf("Logs: %v", err)
		}
		for _, l := range lines {
			if strings.Contains(l, want) {
				return true
			}
		}
		return false
	})

	return lines
}

// waitFor polls cond until it holds, failing the test after 20 seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alive reports whether pid is a live process (not gone, not a zombie).
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}

	// The state follows the command name, which is in parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// needBusybox returns busybox's path or skips the test when it is absent.
func needBusybox(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/busybox", "/bin/busybox"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}

	if p, err := exec.LookPath("busybox"); err == nil {
		return p
	}
	t.Skip("busybox is not installed (apt-get install -y busybox)")
	return ""
}

// rawConn is a raw protocol connection for envelope-level tests.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(t testing.TB, ts *testServer) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", ts.srv.SocketPath())
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{Conn: c, r: bufio.NewReader(c)}
}

func (c *rawConn) send(t testing.TB, lines ...string) {
	t.Helper()
	if _, err := c.Write([]byte(strings.Join(lines, "\n") + "\n")); err != nil {
		t.Fatal(err)
	}
}

// reply reads one reply line as a generic object.
func (c *rawConn) reply(t testing.TB) map[string]any {
	t.Helper()
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("reading reply: %v", err)
	}

	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("reply %q: %v", line, err)
	}
	return m
}

// line encodes a request object with the server's token.
func (ts *testServer) line(t testing.TB, req map[string]any) string {
	t.Helper()
	if ts.srv.Token() != "" {
		req["token"] = ts.srv.Token()
	}

	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

func readPID(t testing.TB, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}
