package server

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
)

// maxExecOutput bounds what exec keeps of each of stdout and stderr; the
// rest is read and dropped so the command never blocks on a full pipe.
const maxExecOutput = 16 << 20

// execRequest answers "exec" (easyenclave.md §1.4): the argv runs directly,
// in its own process group, with stdin on /dev/null and the workload base
// environment; a timeout kills the group and fails the request.
func (s *Server) execRequest(ctx context.Context, fields map[string]json.RawMessage) any {
	argv, ok := stringsField(fields, "cmd")
	if !ok {
		return errorReply{Error: "missing cmd array"}
	}
	if len(argv) == 0 {
		return errorReply{Error: "cmd array is empty"}
	}

	secs := uintField(fields, "timeout_secs", uint64(runtime.DefaultExecTimeout/time.Second))
	res, err := s.runExec(ctx, s.rewriteAll(argv), secs)
	if err != nil {
		return errorReply{Error: err.Error()}
	}
	return execReply{OK: true, ExecResult: res}
}

func (s *Server) runExec(ctx context.Context, argv []string, secs uint64) (runtime.ExecResult, error) {
	path, err := lookPath(argv[0], s.baseEnv)
	if err != nil {
		return runtime.ExecResult{}, fmt.Errorf("spawn failed: %s: %v", argv[0], err)
	}

	var stdout, stderr cappedBuffer
	cmd := &exec.Cmd{
		Path:        path,
		Args:        argv,
		Env:         s.baseEnv,
		Stdout:      &stdout,
		Stderr:      &stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		// A backgrounded child may hold the pipes after the command exits.
		WaitDelay: stopGrace,
	}
	if err := cmd.Start(); err != nil {
		return runtime.ExecResult{}, fmt.Errorf("spawn failed: %v", err)
	}

	// wait in the background so a timeout or shutdown can interrupt it
	done := make(chan struct{})
	go func() {
		defer close(done)
		cmd.Wait() // the exit status is read from cmd.ProcessState
	}()

	timer := time.NewTimer(secondsDuration(secs))
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		killExec(cmd.Process.Pid, done)
		return runtime.ExecResult{}, fmt.Errorf("command timed out after %ds", secs)
	case <-ctx.Done():
		killExec(cmd.Process.Pid, done)
		return runtime.ExecResult{}, fmt.Errorf("wait failed: %w", ctx.Err())
	}

	code, _ := exitOutcome(cmd.ProcessState)
	return runtime.ExecResult{
		ExitCode: code,
		Stdout:   strings.ToValidUTF8(stdout.String(), "\uFFFD"),
		Stderr:   strings.ToValidUTF8(stderr.String(), "\uFFFD"),
	}, nil
}

// killExec ends an exec's process group: SIGTERM, up to 2 s, SIGKILL.
func killExec(pgid int, done <-chan struct{}) {
	signalGroup(pgid, syscall.SIGTERM)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}

	signalGroup(pgid, syscall.SIGKILL)
	<-done
}

// secondsDuration converts a client's timeout without overflowing.
func secondsDuration(secs uint64) time.Duration {
	if secs > math.MaxInt64/uint64(time.Second) {
		return math.MaxInt64
	}
	return time.Duration(secs) * time.Second
}

// cappedBuffer keeps the first maxExecOutput bytes written to it.
type cappedBuffer struct{ strings.Builder }

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := maxExecOutput - b.Len(); room > 0 {
		b.Builder.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
