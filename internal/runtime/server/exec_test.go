package server

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
)

func TestExec(t *testing.T) {
	t.Parallel()
	env := []string{"PATH=/usr/bin:/bin", "X=from-runtime"}
	ts := startServer(t, Options{Token: testToken, Env: env})
	tests := []struct {
		name string
		argv []string
		want runtime.ExecResult
	}{
		{"output and exit code", sh(`echo out; echo err >&2; echo "$X"; exit 3`),
			runtime.ExecResult{ExitCode: 3, Stdout: "out\nfrom-runtime\n", Stderr: "err\n"}},
		{"bare name on PATH", []string{"echo", "hi"}, runtime.ExecResult{Stdout: "hi\n"}},
		{"signal", sh("kill -TERM $$"), runtime.ExecResult{ExitCode: -1}},
		{"stdin is empty", []string{"cat"}, runtime.ExecResult{}},
		{"invalid utf-8", sh(`printf 'a\377b'`), runtime.ExecResult{Stdout: "a\uFFFDb"}},
		{"runtime secrets hidden", sh(`echo "${EE_TOKEN-unset}"`), runtime.ExecResult{Stdout: "unset\n"}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ts.client.Exec(context.Background(), tt.argv, 0)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("exec mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	dir := t.TempDir()

	// The background child records its pid so the test can check it died.
	_, err := ts.client.Exec(context.Background(),
		sh(`sleep 1000 & echo $! > `+dir+`/pid; wait`), time.Second)
	if !isRuntimeError(err, "command timed out after 1s") {
		t.Fatalf("Exec: %v, want the timeout error", err)
	}

	pid := readPID(t, dir+"/pid")
	waitFor(t, "the timed-out command's child to die", func() bool { return !alive(pid) })
}
