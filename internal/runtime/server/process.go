package server

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"

	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// exitDrainGrace is how long an exit waits for the last output lines before
// it is recorded; a backgrounded child may keep the output open for ever.
const exitDrainGrace = 500 * time.Millisecond

// ttySize is the initial window of PTYs; the kernel default is 0x0.
var ttySize = &pty.Winsize{Rows: 24, Cols: 80}

// proc is a spawned workload: its own process group (or session, on a PTY)
// led by pid, with one output stream that a reader drains into the app's
// log.
type proc struct {
	cmd     *exec.Cmd
	pid     int
	out     *os.File
	exited  chan struct{} // closed once Wait has returned; state is set
	drained chan struct{} // closed once the output reader has finished
	state   *os.ProcessState

	closeOut sync.Once
}

// spawn starts spec.Cmd for app with the workload environment, its output
// going to a fresh log.
func (s *Server) spawn(app string, spec workload.Spec) (*proc, error) {
	env := mergeEnv(s.baseEnv, spec.Env)
	path, err := lookPath(spec.Cmd[0], env)
	if err != nil {
		return nil, err
	}

	sink, err := createLog(s.logDir, app, s.opts.LogMaxLines, s.log)
	if err != nil {
		return nil, err
	}

	cmd := &exec.Cmd{Path: path, Args: spec.Cmd, Env: env}
	var p *proc
	if spec.TTY {
		p, err = startTTY(cmd)
	} else {
		p, err = startPiped(cmd)
	}
	if err != nil {
		sink.close()
		return nil, err
	}

	s.wg.Go(func() {
		defer close(p.drained)
		defer p.closeOutput()
		defer sink.close()
		sink.drain(p.out)
	})

	return p, nil
}

// startPiped runs cmd in a new process group with stdin on /dev/null and
// stdout and stderr sharing one pipe, so lines interleave as written.
func startPiped(cmd *exec.Cmd) (*proc, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("creating output pipe: %w", err)
	}

	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return nil, err
	}
	return newProc(cmd, r), nil
}

// startTTY runs cmd as a session leader on a new PTY; the master carries
// the one output stream (easyenclave.md §2.5).
func startTTY(cmd *exec.Cmd) (*proc, error) {
	master, err := startOnPTY(cmd)
	if err != nil {
		return nil, err
	}
	return newProc(cmd, master), nil
}

// startOnPTY starts cmd with the PTY slave as its controlling terminal and
// returns the master, made pollable so that closing it ends a blocked read.
func startOnPTY(cmd *exec.Cmd) (*os.File, error) {
	attrs := &syscall.SysProcAttr{Setsid: true, Setctty: true}
	master, err := pty.StartWithAttrs(cmd, ttySize, attrs)
	if err != nil {
		return nil, err
	}

	pollable, err := pollableFile(master)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	return pollable, nil
}

// pollableFile returns a non-blocking copy of f and closes f. creack/pty
// leaves the master in blocking mode, where Close cannot interrupt a Read.
func pollableFile(f *os.File) (*os.File, error) {
	defer f.Close()
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		return nil, fmt.Errorf("duplicating pty master: %w", err)
	}

	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("pty master: %w", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func newProc(cmd *exec.Cmd, out *os.File) *proc {
	return &proc{
		cmd:     cmd,
		pid:     cmd.Process.Pid,
		out:     out,
		exited:  make(chan struct{}),
		drained: make(chan struct{}),
	}
}

// wait reaps the process, then gives the reader a moment to log the last
// lines. Only the watcher calls it.
func (p *proc) wait() {
	p.cmd.Wait()
	p.state = p.cmd.ProcessState
	close(p.exited)

	t := time.NewTimer(exitDrainGrace)
	defer t.Stop()
	select {
	case <-p.drained:
	case <-t.C:
	}
}

func (p *proc) closeOutput() {
	p.closeOut.Do(func() { p.out.Close() })
}

// terminate ends the process group: SIGTERM, then SIGKILL if the leader has
// not exited and the output is not closed within grace. It returns as soon
// as both happened. A process that escaped into its own session may still
// hold the output; after a short grace the output is closed under it, so no
// reader is left behind.
func (p *proc) terminate(grace time.Duration) {
	if p.gone(nil) {
		return
	}

	if !p.hasExited() || groupAlive(p.pid) {
		signalGroup(p.pid, syscall.SIGTERM)
		t := time.NewTimer(grace)
		defer t.Stop()
		if p.gone(t.C) {
			return
		}
		signalGroup(p.pid, syscall.SIGKILL)
		<-p.exited
	}

	// a process that escaped the group may still hold the output
	t := time.NewTimer(exitDrainGrace)
	defer t.Stop()
	if !p.gone(t.C) {
		p.closeOutput()
		<-p.drained
	}
}

// gone waits until the leader has exited and the output is drained, or
// until timeout fires; a nil timeout only checks.
func (p *proc) gone(timeout <-chan time.Time) bool {
	for _, ch := range []chan struct{}{p.exited, p.drained} {
		if timeout == nil {
			select {
			case <-ch:
				continue
			default:
				return false
			}
		}
		select {
		case <-ch:
		case <-timeout:
			return false
		}
	}
	return true
}

func (p *proc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// The runtime does not become a child subreaper (PR_SET_CHILD_SUBREAPER,
// a MAY of easyenclave.md §7.5): a reaper would race os/exec for the exit
// statuses of our own children, as EasyEnclave's once-a-second reaper does
// (§3.2). Orphaned grandchildren are reaped by init instead, and every
// workload's process group is signalled as a whole when it stops.

// signalGroup signals every process of the group led by pgid. The leader is
// the group's id for as long as any member lives, so the signal cannot hit
// a stranger while the group exists.
func signalGroup(pgid int, sig syscall.Signal) {
	syscall.Kill(-pgid, sig)
}

// groupAlive reports whether any process is left in group pgid.
func groupAlive(pgid int) bool {
	return !errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

// exitOutcome maps a wait status to an exit code and, for anything but a
// clean exit, the error message "list" shows. Death by a signal gives -1,
// as exec reports it.
func exitOutcome(st *os.ProcessState) (int, string) {
	if st == nil {
		return -1, "wait failed"
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		return -1, fmt.Sprintf("killed by signal %d", int(ws.Signal()))
	case st.ExitCode() == 0:
		return 0, ""
	default:
		return st.ExitCode(), fmt.Sprintf("exited with code %d", st.ExitCode())
	}
}

// lookPath resolves a bare program name against the PATH of env, the
// child's own environment, as execvp in the child would (easyenclave.md
// §2.5). os/exec would use the runtime's PATH instead. Names with a slash
// are used as they are.
func lookPath(name string, env []string) (string, error) {
	if name == "" {
		return "", errors.New("empty program name")
	}
	if filepath.Base(name) != name {
		return name, nil
	}

	pathVar, _ := envValue(env, "PATH")
	for _, dir := range filepath.SplitList(pathVar) {
		if dir == "" {
			continue // an empty entry would mean the working directory
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}

	return "", errors.New("executable file not found in PATH")
}
