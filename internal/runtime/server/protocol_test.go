package server

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

const testToken = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

// fixedNow is a clock that never moves, so uptime_secs stays 0.
func fixedNow() time.Time { return time.Date(2026, 5, 1, 12, 0, 0, 5, time.UTC) }

func TestTokenSeal(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken, Now: fixedNow})
	c := dialRaw(t, ts)

	// All on one connection: a refused request leaves it open.
	tests := []struct {
		name string
		line string
		want map[string]any
	}{
		{"missing", `{"method":"health"}`,
			map[string]any{"ok": false, "error": "unauthenticated"}},
		{"wrong", `{"method":"health","token":"` + strings.Repeat("0", 64) + `"}`,
			map[string]any{"ok": false, "error": "unauthenticated"}},
		{"not a string", `{"method":"health","token":5}`,
			map[string]any{"ok": false, "error": "unauthenticated"}},
		{"prefix", `{"method":"health","token":"` + testToken[:63] + `"}`,
			map[string]any{"ok": false, "error": "unauthenticated"}},
		{"right", `{"method":"health","token":"` + testToken + `"}`,
			map[string]any{"ok": true, "attestation_type": "none", "workloads": 0.0,
				"uptime_secs": 0.0}},
	}

	for _, tt := range tests {
		c.send(t, tt.line)
		if diff := cmp.Diff(tt.want, c.reply(t)); diff != "" {
			t.Errorf("%s: reply mismatch (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestMintedToken(t *testing.T) {
	t.Parallel()
	a, err := New(Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}

	if !validToken(a.Token()) || a.Token() == b.Token() {
		t.Errorf("tokens %q and %q: want two different 64-hex tokens", a.Token(), b.Token())
	}
}

func TestUnsealed(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Unsealed: true})
	if ts.srv.Token() != "" {
		t.Fatalf("Token() = %q, want empty when unsealed", ts.srv.Token())
	}
	if _, err := ts.client.Health(context.Background()); err != nil {
		t.Fatalf("Health without token: %v", err)
	}
}

func TestEnvelopeErrors(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	tests := []struct {
		name, line string
		want       string // error, or its prefix when it ends in "…"
	}{
		{"invalid json", `{"method":`, "invalid json: …"},
		{"not json", `hello`, "invalid json: …"},
		{"empty line", ``, "invalid json: …"},
		{"missing method", ts.line(t, map[string]any{}), "missing method"},
		{"method not a string", ts.line(t, map[string]any{"method": 7}), "missing method"},
		{"unknown method", ts.line(t, map[string]any{"method": "reboot"}), "unknown method: reboot"},
		{"not an object", `[1,2]`, "unauthenticated"},
	}

	c := dialRaw(t, ts)
	for _, tt := range tests {
		c.send(t, tt.line)
		r := c.reply(t)
		got, _ := r["error"].(string)
		if r["ok"] != false || !matchError(got, tt.want) {
			t.Errorf("%s: reply %v, want error %q", tt.name, r, tt.want)
		}
	}
}

// matchError compares an error string with want, a prefix when it ends
// in "…".
func matchError(got, want string) bool {
	if prefix, ok := strings.CutSuffix(want, "…"); ok {
		return strings.HasPrefix(got, prefix)
	}
	return got == want
}

func TestSeveralRequestsPerConnection(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	c := dialRaw(t, ts)

	// Sent in one write, answered in order, with a final line that has no
	// newline before the half-close.
	_, err := c.Write([]byte(ts.line(t, map[string]any{"method": "health"}) + "\n" +
		ts.line(t, map[string]any{"method": "list"}) + "\n" +
		ts.line(t, map[string]any{"method": "nope"})))
	if err != nil {
		t.Fatal(err)
	}
	c.Conn.(interface{ CloseWrite() error }).CloseWrite()

	if r := c.reply(t); r["ok"] != true || r["attestation_type"] != "none" {
		t.Errorf("first reply %v, want health", r)
	}
	if r := c.reply(t); r["ok"] != true || r["deployments"] == nil {
		t.Errorf("second reply %v, want list", r)
	}
	if r := c.reply(t); r["error"] != "unknown method: nope" {
		t.Errorf("third reply %v, want unknown method", r)
	}
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after the last reply: %v, want EOF", err)
	}
}

func TestRequestLineLimit(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	c := dialRaw(t, ts)
	c.send(t, `{"method":"health","pad":"`+strings.Repeat("x", MaxRequestLine)+`"}`)
	if r := c.reply(t); r["ok"] != false || !strings.Contains(r["error"].(string), "exceeds") {
		t.Errorf("reply %v, want a line-too-long error", r)
	}

	if _, err := c.r.ReadByte(); err == nil {
		t.Error("connection still open after an oversized line")
	}
}

func TestMethodErrors(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	rel := func(r map[string]any) map[string]any {
		return map[string]any{"method": "deploy", "github_release": r, "cmd": []string{"x"}}
	}

	tests := []struct {
		name string
		req  map[string]any
		want string
	}{
		{"stop missing id", map[string]any{"method": "stop"}, "missing id"},
		{"stop id not a string", map[string]any{"method": "stop", "id": 5}, "missing id"},
		{"stop unknown id", map[string]any{"method": "stop", "id": "x"}, "deployment not found"},
		{"logs missing id", map[string]any{"method": "logs"}, "missing id"},
		{"logs unknown id", map[string]any{"method": "logs", "id": "x"}, "deployment not found"},
		{"exec missing cmd", map[string]any{"method": "exec"}, "missing cmd array"},
		{"exec cmd not array", map[string]any{"method": "exec", "cmd": "ls"}, "missing cmd array"},
		{"exec cmd null", map[string]any{"method": "exec", "cmd": nil}, "missing cmd array"},
		{"exec cmd empty", map[string]any{"method": "exec", "cmd": []any{}}, "cmd array is empty"},
		{"exec cmd no strings", map[string]any{"method": "exec", "cmd": []any{1, true}},
			"cmd array is empty"},
		{"exec no such program", map[string]any{"method": "exec", "cmd": []any{"no-such-prog"}},
			"spawn failed: …"},
		{"deploy app_name type", map[string]any{"method": "deploy", "app_name": 5},
			"invalid deploy request: app_name: …"},
		{"deploy cmd null", map[string]any{"method": "deploy", "cmd": nil},
			"invalid deploy request: cmd: …"},
		{"deploy cmd item type", map[string]any{"method": "deploy", "cmd": []any{"a", 1}},
			"invalid deploy request: cmd: …"},
		{"deploy env type", map[string]any{"method": "deploy", "env": "A=1"},
			"invalid deploy request: env: …"},
		{"deploy tty type", map[string]any{"method": "deploy", "tty": "yes"},
			"invalid deploy request: tty: …"},
		{"deploy app_name traversal",
			map[string]any{"method": "deploy", "app_name": "../x", "cmd": []string{"true"}},
			"invalid deploy request: …app_name…"},
		{"deploy release without repo", rel(map[string]any{"asset": "a"}),
			"invalid deploy request: github_release: missing field repo"},
		{"deploy release without asset", rel(map[string]any{"repo": "o/r"}),
			"invalid deploy request: github_release: missing field asset"},
		{"deploy asset with slash", rel(map[string]any{"repo": "o/r", "asset": "../a"}),
			"invalid deploy request: …asset…"},
		{"deploy absolute rename",
			rel(map[string]any{"repo": "o/r", "asset": "a", "rename": "/usr/bin/a"}),
			"invalid deploy request: …rename…"},
		{"deploy rename escaping",
			rel(map[string]any{"repo": "o/r", "asset": "a", "rename": "x/../../a"}),
			"invalid deploy request: …rename…"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, ts)
			c.send(t, ts.line(t, tt.req))
			r := c.reply(t)
			got, _ := r["error"].(string)
			if r["ok"] != false || !matchPattern(got, tt.want) {
				t.Errorf("reply %v, want error %q", r, tt.want)
			}
		})
	}

	if n := len(mustList(t, ts)); n != 0 {
		t.Errorf("%d deployments after refused requests, want 0", n)
	}
}

// matchPattern is matchError where "…" in the middle of want also matches
// anything.
func matchPattern(got, want string) bool {
	parts := strings.Split(want, "…")
	if !strings.HasPrefix(got, parts[0]) {
		return false
	}

	rest := got[len(parts[0]):]
	for _, p := range parts[1:] {
		i := strings.Index(rest, p)
		if i < 0 {
			return false
		}
		rest = rest[i+len(p):]
	}

	return len(parts) > 1 || rest == ""
}

func mustList(t testing.TB, ts *testServer) []runtime.Deployment {
	t.Helper()
	deps, err := ts.client.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return deps
}

func TestUnknownFieldsIgnored(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	c := dialRaw(t, ts)
	c.send(t, ts.line(t, map[string]any{
		"method": "deploy", "app_name": "extra", "cmd": []string{"true"},
		"expose": map[string]any{"port": 1}, "oracle": 5, "inherit_token": true, "zzz": nil,
	}))

	r := c.reply(t)
	if r["ok"] != true || r["status"] != "deploying" || r["id"] == "" {
		t.Fatalf("deploy reply %v, want ok with status deploying", r)
	}

	d := ts.waitStatus(t, r["id"].(string), runtime.StatusCompleted)
	if d.AppName != "extra" || d.Source != "true" {
		t.Errorf("deployment %+v, want app extra with source \"true\"", d)
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken, Now: fixedNow})
	ts.waitStatus(t, ts.deploy(t, workload.Spec{Cmd: []string{"true"}}), runtime.StatusCompleted)

	h, err := ts.client.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	// Finished entries count too (easyenclave.md §1.4).
	want := runtime.Health{AttestationType: "none", Workloads: 1}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Errorf("health mismatch (-want +got):\n%s", diff)
	}
}

func TestSocketLifecycle(t *testing.T) {
	t.Parallel()
	sock := shortSocketPath(t)

	// A stale socket file is replaced.
	if err := os.WriteFile(sock, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	srv, errc := serveAsync(t, Options{SocketPath: sock, Unsealed: true})
	select {
	case <-srv.Ready():
	case err := <-errc:
		t.Fatal(err)
	}

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name string
		opts Options
	}{
		{"short token", Options{Token: "abc"}},
		{"uppercase token", Options{Token: strings.ToUpper(testToken)}},
		{"token and unsealed", Options{Token: testToken, Unsealed: true}},
		{"negative log bound", Options{LogMaxLines: -1}},
		{"attester without type", Options{Attester: fakeAttester{}}},
		{"socket path too long", Options{SocketPath: "/tmp/" + strings.Repeat("s", 120)}},
		{"bad boot workload", Options{BootWorkloads: []workload.Spec{{AppName: "a/b"}}}},
		{"bad host tool", Options{HostTools: []string{".."}}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.DataDir = dir
			if _, err := New(tt.opts); err == nil {
				t.Error("New succeeded, want an error")
			}
		})
	}
}
