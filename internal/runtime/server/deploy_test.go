package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

func TestDeployOutcomes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	intp := func(i int) *int { return &i }
	tests := []struct {
		name  string
		spec  workload.Spec
		want  runtime.Deployment // compared on status, error and exit code
		lines []string           // expected in the log, in order
	}{
		{
			name:  "completed",
			spec:  workload.Spec{AppName: "ok", Cmd: sh("echo hi; echo err >&2")},
			want:  runtime.Deployment{Status: runtime.StatusCompleted, ExitCode: intp(0)},
			lines: []string{"hi", "err"},
		},
		{
			name: "exit code",
			spec: workload.Spec{AppName: "exit3", Cmd: sh("echo before; exit 3")},
			want: runtime.Deployment{Status: runtime.StatusFailed, ExitCode: intp(3),
				ErrorMessage: "exited with code 3"},
			lines: []string{"before"},
		},
		{
			name: "signal",
			spec: workload.Spec{AppName: "sig", Cmd: sh("kill -9 $$")},
			want: runtime.Deployment{Status: runtime.StatusFailed, ExitCode: intp(-1),
				ErrorMessage: "killed by signal 9"},
		},
		{
			name: "neither release nor cmd",
			spec: workload.Spec{AppName: "empty"},
			want: runtime.Deployment{Status: runtime.StatusFailed,
				ErrorMessage: "neither github_release nor cmd specified"},
		},
		{
			name: "spawn failure",
			spec: workload.Spec{AppName: "nope", Cmd: []string{"no-such-program"}},
			want: runtime.Deployment{Status: runtime.StatusFailed,
				ErrorMessage: "spawn no-such-program: executable file not found in PATH"},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := ts.deploy(t, tt.spec)
			got := ts.waitStatus(t, id, runtime.StatusCompleted, runtime.StatusFailed)

			sub := runtime.Deployment{Status: got.Status, ExitCode: got.ExitCode,
				ErrorMessage: got.ErrorMessage}
			if diff := cmp.Diff(tt.want, sub); diff != "" {
				t.Errorf("outcome mismatch (-want +got):\n%s", diff)
			}
			if got.FinishedAt == "" {
				t.Error("finished_at is empty")
			}
			if (got.PID != nil) != (tt.want.ExitCode != nil) {
				t.Errorf("pid %v: want one exactly when a process ran", got.PID)
			}

			if len(tt.lines) > 0 {
				lines, err := ts.client.Logs(context.Background(), id, 100)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tt.lines, lines); diff != "" {
					t.Errorf("log mismatch (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestListShape(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken, Now: fixedNow})
	id := ts.deploy(t, workload.Spec{AppName: "shape", Cmd: []string{"sleep", "1000"}})
	got := ts.waitStatus(t, id, runtime.StatusRunning)

	if got.PID == nil || *got.PID <= 0 {
		t.Errorf("pid %v, want the process id", got.PID)
	}

	got.PID = nil
	want := runtime.Deployment{ID: id, AppName: "shape", Source: "sleep 1000",
		Status: runtime.StatusRunning, StartedAt: "2026-05-01T12:00:00.000000005+00:00"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("list entry mismatch (-want +got):\n%s", diff)
	}
}

func TestReplacementKillsOldGroup(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	spec := workload.Spec{AppName: "web", Cmd: sh("sleep 1000 & echo child=$!; sleep 1000")}
	oldID := ts.deploy(t, spec)
	old := ts.waitStatus(t, oldID, runtime.StatusRunning)
	child := childPID(t, ts.waitLog(t, oldID, "child="))

	newID := ts.deploy(t, spec)
	ts.waitStatus(t, newID, runtime.StatusRunning)
	if alive(*old.PID) || alive(child) {
		t.Errorf("old leader alive %v, its child alive %v; want both gone",
			alive(*old.PID), alive(child))
	}

	if d := ts.find(t, oldID); d != nil {
		t.Errorf("old deployment still listed: %+v", d)
	}

	_, err := ts.client.Logs(context.Background(), oldID, 10)
	if !isRuntimeError(err, runtime.ErrNotFound) {
		t.Errorf("logs of the replaced id: %v, want %q", err, runtime.ErrNotFound)
	}

	// The new run starts with a fresh log.
	lines := ts.waitLog(t, newID, "child=")
	if len(lines) != 1 {
		t.Errorf("new log %q, want only the new run's line", lines)
	}
}

func childPID(t testing.TB, lines []string) int {
	t.Helper()
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, "child="); ok {
			pid, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
	}

	t.Fatalf("no child= line in %q", lines)
	return 0
}

func isRuntimeError(err error, msg string) bool {
	re, ok := err.(*runtime.Error)
	return ok && re.Message == msg
}

func TestStop(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	id := ts.deploy(t, workload.Spec{AppName: "svc",
		Cmd: sh("sleep 1000 & echo child=$!; sleep 1000")})
	d := ts.waitStatus(t, id, runtime.StatusRunning)
	child := childPID(t, ts.waitLog(t, id, "child="))

	if err := ts.client.Stop(context.Background(), id); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	got := ts.find(t, id)
	if got == nil || got.Status != runtime.StatusStopped || got.FinishedAt == "" {
		t.Errorf("after stop: %+v, want status stopped with finished_at", got)
	}
	if alive(*d.PID) || alive(child) {
		t.Errorf("leader alive %v, child alive %v; want the group gone", alive(*d.PID), alive(child))
	}

	err := ts.client.Stop(context.Background(), id)
	if !isRuntimeError(err, "cannot stop deployment in 'stopped' status") {
		t.Errorf("second stop: %v, want the status error", err)
	}
}

func TestStopIgnoringTerm(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	id := ts.deploy(t, workload.Spec{AppName: "stubborn",
		Cmd: sh("trap '' TERM; echo ready; while :; do sleep 1; done")})
	d := ts.waitStatus(t, id, runtime.StatusRunning)
	ts.waitLog(t, id, "ready")

	if err := ts.client.Stop(context.Background(), id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if alive(*d.PID) {
		t.Error("a process ignoring SIGTERM survived stop")
	}
}

func TestLogBoundKeepsNewest(t *testing.T) {
	t.Parallel()
	const bound = 10
	ts := startServer(t, Options{Token: testToken, LogMaxLines: bound})
	id := ts.deploy(t, workload.Spec{AppName: "chatty",
		Cmd: sh("i=1; while [ $i -le 100 ]; do echo line$i; i=$((i+1)); done")})
	ts.waitStatus(t, id, runtime.StatusCompleted)

	lines, err := ts.client.Logs(context.Background(), id, 1000)
	if err != nil {
		t.Fatal(err)
	}

	var want []string
	for i := 91; i <= 100; i++ {
		want = append(want, fmt.Sprintf("line%d", i))
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("logs mismatch (-want +got):\n%s", diff)
	}

	// the file itself is compacted, not only the reply
	data, err := os.ReadFile(filepath.Join(ts.srv.DataDir(), "workloads", "logs", "chatty.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n > bound+compactSlack(bound) {
		t.Errorf("log file holds %d lines, want at most %d", n, bound+compactSlack(bound))
	}

	lines, _ = ts.client.Logs(context.Background(), id, 3)
	if len(lines) != 3 || lines[2] != "line100" {
		t.Errorf("tail 3 = %q, want the last three lines", lines)
	}
	if lines, _ := ts.client.Logs(context.Background(), id, 0); len(lines) != 0 {
		t.Errorf("tail 0 = %q, want none", lines)
	}
}

func TestLogLossyUTF8AndLongLines(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	long := strings.Repeat("y", MaxLogLine+10)
	id := ts.deploy(t, workload.Spec{AppName: "bytes",
		Cmd: sh(`printf 'ok \377\376 bad\r\n'; printf '` + long + `\n'; echo after`)})
	ts.waitStatus(t, id, runtime.StatusCompleted)

	lines, err := ts.client.Logs(context.Background(), id, 100)
	if err != nil {
		t.Fatal(err)
	}

	want := []string{"ok \uFFFD bad", long[:MaxLogLine], long[MaxLogLine:], "after"}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("logs mismatch (-want +got):\n%s", diff)
	}
}

func TestLogsOfFetchOnlyAndFreshApp(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	id := ts.deploy(t, workload.Spec{AppName: "never-spawned"})
	ts.waitStatus(t, id, runtime.StatusFailed)

	lines, err := ts.client.Logs(context.Background(), id, 100)
	if err != nil || len(lines) != 0 {
		t.Errorf("Logs = %q, %v; want no lines and no error", lines, err)
	}
}

func TestWorkloadEnvironment(t *testing.T) {
	t.Parallel()
	tools := t.TempDir()
	script := "#!/bin/sh\n" +
		`echo "FOO=$FOO BASE=$BASE NOEQ=${NOEQ-unset}"` + "\n" +
		`echo "SOCK=$EE_SOCKET_PATH DATA=$EE_DATA_DIR"` + "\n" +
		`echo "TOKEN=${EE_TOKEN-unset} FIXED=${EE_TOKEN_FIXED-unset} GH=${EE_GITHUB_TOKEN-unset}"` + "\n"
	if err := os.WriteFile(filepath.Join(tools, "envtool"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}

	base := []string{"PATH=/usr/bin:/bin", "BASE=base", "FOO=base", "EE_GITHUB_TOKEN=gh-secret",
		"EE_TOKEN_FIXED=" + testToken}
	ts := startServer(t, Options{Token: testToken, Env: base})

	// envtool is found on the PATH the spec sets, not the runtime's.
	id := ts.deploy(t, workload.Spec{AppName: "env", Cmd: []string{"envtool"},
		Env: []string{"PATH=" + tools + ":/usr/bin:/bin", "FOO=1", "NOEQ", "FOO=2"}})
	ts.waitStatus(t, id, runtime.StatusCompleted)

	lines, _ := ts.client.Logs(context.Background(), id, 10)
	want := []string{
		"FOO=2 BASE=base NOEQ=unset",
		"SOCK=" + ts.srv.SocketPath() + " DATA=" + ts.srv.DataDir(),
		"TOKEN=unset FIXED=unset GH=unset",
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("environment mismatch (-want +got):\n%s", diff)
	}
}

func TestBinDirFirstOnPath(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken, Env: []string{"PATH=/usr/bin:/bin"}})
	bin := filepath.Join(ts.srv.DataDir(), "bin")
	err := os.WriteFile(filepath.Join(bin, "true"), []byte("#!/bin/sh\necho bin-true\n"), 0o755)
	if err != nil {
		t.Fatal(err)
	}

	id := ts.deploy(t, workload.Spec{AppName: "shadow", Cmd: []string{"true"}})
	ts.waitLog(t, id, "bin-true")
}

func TestInheritTokenOnlyForBootWorkloads(t *testing.T) {
	t.Parallel()
	show := sh(`echo "token=${EE_TOKEN-unset}"`)
	ts := startServer(t, Options{Token: testToken, BootWorkloads: []workload.Spec{
		{AppName: "boot-heir", Cmd: show, InheritToken: true},
		{AppName: "boot-plain", Cmd: show},
	}})

	ts.deploy(t, workload.Spec{AppName: "runtime-heir", Cmd: show, InheritToken: true})

	want := map[string]string{"boot-heir": "token=" + testToken, "boot-plain": "token=unset",
		"runtime-heir": "token=unset"}
	for app, line := range want {
		d, err := ts.client.Find(context.Background(), app)
		if err != nil || d == nil {
			t.Fatalf("Find(%s) = %v, %v", app, d, err)
		}
		ts.waitLog(t, d.ID, line)
	}
}

func TestPrefixRewrite(t *testing.T) {
	t.Parallel()
	off := false
	script := sh("echo /var/lib/easyenclave/bin/x; echo $V; echo /var/lib/easyenclavex")
	env := []string{"V=/var/lib/easyenclave"}
	tests := []struct {
		name    string
		rewrite *bool
		want    func(data string) []string
	}{
		{"default on", nil, func(data string) []string {
			return []string{data + "/bin/x", data, "/var/lib/easyenclavex"}
		}},
		{"off", &off, func(string) []string {
			return []string{"/var/lib/easyenclave/bin/x", "/var/lib/easyenclave", "/var/lib/easyenclavex"}
		}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := startServer(t, Options{Token: testToken, RewriteDataPrefix: tt.rewrite})
			id := ts.deploy(t, workload.Spec{AppName: "paths", Cmd: script, Env: env})
			ts.waitStatus(t, id, runtime.StatusCompleted)
			lines, _ := ts.client.Logs(context.Background(), id, 10)
			if diff := cmp.Diff(tt.want(ts.srv.DataDir()), lines); diff != "" {
				t.Errorf("rewritten output mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRewritePrefix(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"/var/lib/easyenclave", "/d"},
		{"/var/lib/easyenclave/bin/busybox", "/d/bin/busybox"},
		{"BB=/var/lib/easyenclave/bin/busybox; $BB ls /var/lib/easyenclave",
			"BB=/d/bin/busybox; $BB ls /d"},
		{`"/var/lib/easyenclave/data"`, `"/d/data"`},
		{"/var/lib/easyenclave2/x", "/var/lib/easyenclave2/x"},
		{"/var/lib/easyenclave.bak /var/lib/easyenclave:/x", "/var/lib/easyenclave.bak /d:/x"},
		{"no prefix here", "no prefix here"},
	}

	for _, tt := range tests {
		if got := rewritePrefix(tt.in, "/d"); got != tt.want {
			t.Errorf("rewritePrefix(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMergeEnv(t *testing.T) {
	t.Parallel()
	got := mergeEnv([]string{"A=1", "B=2", "junk"}, []string{"B=3", "C", "D=x=y", "A="})
	want := []string{"A=", "B=3", "D=x=y"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mergeEnv mismatch (-want +got):\n%s", diff)
	}
}

func TestTTYWorkload(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	id := ts.deploy(t, workload.Spec{AppName: "tty", TTY: true,
		Cmd: sh(`[ -t 0 ] && [ -t 1 ] && echo "on a tty: $(stty size)"; echo err >&2`)})
	ts.waitStatus(t, id, runtime.StatusCompleted)
	lines := ts.waitLog(t, id, "err")
	if diff := cmp.Diff([]string{"on a tty: 24 80", "err"}, lines); diff != "" {
		t.Errorf("tty log mismatch (-want +got):\n%s", diff)
	}
}

func TestHostTools(t *testing.T) {
	t.Parallel()
	bb := needBusybox(t)
	ts := startServer(t, Options{Token: testToken, HostTools: []string{"busybox"},
		Env: []string{"PATH=" + filepath.Dir(bb)}})

	link := filepath.Join(ts.srv.DataDir(), "bin", "busybox")
	if target, err := os.Readlink(link); err != nil || target != bb {
		t.Errorf("bin/busybox -> %q (%v), want a symlink to %s", target, err, bb)
	}

	id := ts.deploy(t, workload.Spec{AppName: "bb",
		Cmd: []string{"/var/lib/easyenclave/bin/busybox", "echo", "from busybox"}})
	ts.waitLog(t, id, "from busybox")

	// A missing tool is found out when Serve prepares the data dir.
	srv, err := New(Options{DataDir: t.TempDir(), SocketPath: shortSocketPath(t),
		HostTools: []string{"no-such-tool"}})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Serve(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no-such-tool") {
		t.Errorf("Serve with a missing host tool: %v, want an error naming it", err)
	}
}
