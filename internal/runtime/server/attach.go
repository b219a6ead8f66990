package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sync"
	"time"
)

// attachAck is written before anything is spawned (easyenclave.md §1.5).
const attachAck = `{"ok":true,"attached":true}` + "\n"

// attach bridges conn to a command on a new PTY: after the ack the
// connection carries raw bytes both ways. The session ends when the command
// exits or the client stops sending (a half-close counts); then the
// command's process group is ended, the remaining output is delivered and
// conn is closed by the caller. br may hold bytes the client sent right
// after the request; they reach the PTY first.
func (s *Server) attach(ctx context.Context, conn net.Conn, br *bufio.Reader, req request) {
	if _, err := io.WriteString(conn, attachAck); err != nil {
		return
	}

	argv, _ := stringsField(req.fields, "cmd")
	if len(argv) == 0 {
		argv = []string{s.opts.Shell}
	}
	argv = s.rewriteAll(argv)

	p, err := s.startAttach(argv)
	if err != nil {
		fmt.Fprintf(conn, "\nattach failed: %v\n", err)
		return
	}

	s.log.Info("attach started", "cmd", argv[0], "pid", p.pid)
	s.bridge(ctx, conn, br, p)
	s.log.Info("attach ended", "cmd", argv[0], "pid", p.pid)
}

func (s *Server) startAttach(argv []string) (*proc, error) {
	env := mergeEnv(s.baseEnv, []string{"TERM=xterm-256color"})
	path, err := lookPath(argv[0], env)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", argv[0], err)
	}

	cmd := &exec.Cmd{Path: path, Args: argv, Env: env}
	master, err := startOnPTY(cmd)
	if err != nil {
		return nil, err
	}
	return newProc(cmd, master), nil
}

// bridge copies between conn and the PTY until the command exits, the
// client's input ends, or the server shuts down, then ends the session.
func (s *Server) bridge(ctx context.Context, conn net.Conn, br *bufio.Reader, p *proc) {
	inputDone := make(chan struct{})
	var copies sync.WaitGroup
	copies.Go(func() {
		defer close(inputDone)
		io.Copy(p.out, br)
	})
	copies.Go(func() {
		defer close(p.drained)
		io.Copy(conn, p.out)
	})
	copies.Go(func() {
		p.cmd.Wait()
		close(p.exited)
	})

	select {
	case <-p.exited:
	case <-inputDone:
	case <-ctx.Done():
	}

	p.terminate(stopGrace)
	p.closeOutput()
	// Closing the connection ends a copy still reading client input.
	conn.SetReadDeadline(time.Unix(1, 0))
	copies.Wait()
}
