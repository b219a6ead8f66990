// Package cloudflared supervises the cloudflared connector that carries a
// control plane's or an agent's tunnel: it runs
// "cloudflared tunnel --no-autoupdate run" with the tunnel token in the
// TUNNEL_TOKEN environment variable, never on the command line (where
// every local user could read it from /proc), restarts it with capped,
// jittered exponential backoff when it exits, and reports its state for
// /health and the dashboard.
//
// Each exit is also reported to [Options.OnExit]. cloudflared exits when
// its tunnel is deleted, so the control plane treats an exit, confirmed
// by the provider, as being fenced by a newer control plane (reference
// cf.md §7).
package cloudflared

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultArgs run a remotely managed tunnel whose token is in TUNNEL_TOKEN.
var DefaultArgs = []string{"tunnel", "--no-autoupdate", "run"}

// inheritedEnv are the only variables passed on from this process: the
// parent's environment holds secrets cloudflared has no business with,
// such as the Cloudflare API token.
var inheritedEnv = []string{"PATH", "HOME", "TMPDIR", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
	"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"}

// State is what the supervisor is doing.
type State string

// States of a [Supervisor].
const (
	StateStarting State = "starting" // launching the process
	StateRunning  State = "running"  // the process runs
	StateBackoff  State = "backoff"  // waiting to restart after an exit
	StateStopped  State = "stopped"  // not started yet, or stopped for good
)

// Exit describes one end of the process.
type Exit struct {
	// Code is the exit status, or -1 when the process was killed by a
	// signal or did not start.
	Code int `json:"code"`

	// Err says why, e.g. "exit status 1" or the start error.
	Err string `json:"error,omitempty"`

	// At is when the process ended, and Ran how long it had run.
	At  time.Time     `json:"at"`
	Ran time.Duration `json:"ran_ns"`
}

// Status is a snapshot of the supervisor for /health and the dashboard.
type Status struct {
	State State `json:"state"`

	// PID is the running process's id.
	PID int `json:"pid,omitempty"`

	// Since is when State was entered.
	Since time.Time `json:"since"`

	// Restarts counts restarts after exits.
	Restarts int `json:"restarts"`

	// NextStart is when a restart is due, while in backoff.
	NextStart time.Time `json:"next_start,omitzero"`

	// LastExit is the most recent exit, if any.
	LastExit *Exit `json:"last_exit,omitempty"`
}

// Options configures a [Supervisor].
type Options struct {
	// Token is the tunnel token. Required. It is passed in TUNNEL_TOKEN
	// and never logged.
	Token string

	// Binary is the cloudflared executable. Empty means "cloudflared",
	// looked up on PATH.
	Binary string

	// Args are the arguments. Nil means [DefaultArgs]. They may not carry
	// the token or a --token flag.
	Args []string

	// Env holds extra "KEY=VALUE" entries for the process, on top of a
	// few inherited variables (PATH, HOME, TMPDIR, TZ, CA and proxy
	// settings) and TUNNEL_TOKEN.
	Env []string

	// MinBackoff and MaxBackoff bound the wait before a restart, which
	// doubles from MinBackoff after each quick exit. Zero means 1s and 1m.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// StableAfter is how long a run must last to reset the backoff to
	// MinBackoff. Zero means 1m.
	StableAfter time.Duration

	// StopTimeout is how long the process may take to exit after SIGTERM
	// before it is killed. Zero means 10s.
	StopTimeout time.Duration

	// OnExit, if set, is called after every exit that [Supervisor.Stop]
	// or the Run context did not cause, before the backoff. It runs on
	// the supervising goroutine: it must return quickly and must not call
	// Stop (cancel Run's context instead).
	OnExit func(Exit)

	// Output receives the process's stdout and stderr. Nil means each
	// line is logged at Info.
	Output io.Writer

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Sleep waits out a backoff. Nil means a timer that ctx cancels.
	Sleep func(ctx context.Context, d time.Duration) error

	// Logger receives lifecycle events. Nil discards them.
	Logger *slog.Logger
}

// Supervisor runs and restarts one cloudflared process. Create it with
// [New], run [Supervisor.Run] on a goroutine you own, and end it with
// [Supervisor.Stop] or by cancelling Run's context.
type Supervisor struct {
	opts Options
	log  *slog.Logger
	env  []string

	stopCtx context.Context
	stop    context.CancelFunc
	started atomic.Bool
	done    chan struct{}

	mu     sync.Mutex // guards status
	status Status
}

// New validates opts and returns a stopped supervisor.
func New(opts Options) (*Supervisor, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}

	opts.setDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	s := &Supervisor{opts: opts, log: log.With("component", "cloudflared"),
		env: childEnv(opts.Token, opts.Env), done: make(chan struct{})}
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	s.status = Status{State: StateStopped, Since: opts.Now()}
	return s, nil
}

func (o *Options) validate() error {
	var errs []error
	if o.Token == "" {
		errs = append(errs, errors.New("Token is required"))
	}

	for _, a := range o.Args {
		if a == "--token" || strings.HasPrefix(a, "--token=") ||
			(o.Token != "" && strings.Contains(a, o.Token)) {
			errs = append(errs, errors.New("Args must not carry the token; it goes in "+
				"TUNNEL_TOKEN"))
			break
		}
	}

	for _, kv := range o.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || k == "TUNNEL_TOKEN" {
			errs = append(errs, fmt.Errorf("Env entry %q must be KEY=VALUE and not "+
				"TUNNEL_TOKEN", k))
		}
	}

	if o.MinBackoff < 0 || o.MaxBackoff < 0 || o.StableAfter < 0 || o.StopTimeout < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cloudflared: invalid options: %w", err)
	}
	return nil
}

func (o *Options) setDefaults() {
	if o.Binary == "" {
		o.Binary = "cloudflared"
	}
	if o.Args == nil {
		o.Args = DefaultArgs
	}

	o.Args = slices.Clone(o.Args)
	if o.MinBackoff == 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = time.Minute
	}

	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.StableAfter == 0 {
		o.StableAfter = time.Minute
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 10 * time.Second
	}

	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
}

// childEnv is the process environment: a few inherited variables, the
// caller's extras, and the token.
func childEnv(token string, extra []string) []string {
	var env []string
	for _, k := range inheritedEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}

	env = append(env, extra...)
	return append(env, "TUNNEL_TOKEN="+token)
}

// Status returns the current state.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()

	st := s.status
	if st.LastExit != nil {
		e := *st.LastExit
		st.LastExit = &e
	}
	return st
}

// Run starts cloudflared and restarts it after every exit until ctx ends
// or Stop is called; then it stops the process (SIGTERM to its process
// group, then SIGKILL after StopTimeout) and returns nil. Run may be
// called once.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("cloudflared: Run called twice")
	}
	defer close(s.done)

	if s.stopCtx.Err() != nil {
		return nil // stopped before it started
	}

	// Stop ends the loop by cancelling ctx.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.stopCtx, cancel)()
	defer s.setState(StateStopped, 0)

	backoff := s.opts.MinBackoff
	for ctx.Err() == nil {
		exit := s.runOnce(ctx)
		if ctx.Err() != nil {
			break
		}

		if s.opts.OnExit != nil {
			s.opts.OnExit(exit)
		}
		if exit.Ran >= s.opts.StableAfter {
			backoff = s.opts.MinBackoff
		}

		if err := s.wait(ctx, jitter(backoff)); err != nil {
			break
		}
		backoff = min(backoff*2, s.opts.MaxBackoff)
	}

	s.log.InfoContext(ctx, "cloudflared supervisor stopped")
	return nil
}

// Stop ends Run, stopping the process, and waits for Run to return. It
// is safe to call more than once, and before Run.
func (s *Supervisor) Stop() {
	s.stop()
	if s.started.Load() {
		<-s.done
	}
}

// runOnce runs the process until it exits or ctx ends.
func (s *Supervisor) runOnce(ctx context.Context) Exit {
	s.setState(StateStarting, 0)
	cmd := exec.CommandContext(ctx, s.opts.Binary, s.opts.Args...)
	cmd.Env = s.env
	out := s.opts.Output
	if out == nil {
		lw := &lineLogger{log: s.log}
		defer lw.Flush()
		out = lw
	}

	cmd.Stdout, cmd.Stderr = out, out
	prepare(cmd)
	cmd.WaitDelay = s.opts.StopTimeout

	start := s.opts.Now()
	if err := cmd.Start(); err != nil {
		s.log.ErrorContext(ctx, "cloudflared did not start", "binary", s.opts.Binary, "err", err)
		return s.recordExit(Exit{Code: -1, Err: err.Error(), At: start})
	}

	s.setState(StateRunning, cmd.Process.Pid)
	s.log.InfoContext(ctx, "cloudflared started", "pid", cmd.Process.Pid)
	err := cmd.Wait()
	end := s.opts.Now()

	exit := Exit{Code: cmd.ProcessState.ExitCode(), At: end, Ran: end.Sub(start)}
	if err != nil {
		exit.Err = err.Error()
	}
	s.log.WarnContext(ctx, "cloudflared exited", "code", exit.Code, "err", exit.Err,
		"ran", exit.Ran)
	return s.recordExit(exit)
}

func (s *Supervisor) recordExit(e Exit) Exit {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.LastExit = &e
	s.status.PID = 0
	return e
}

// wait sits out a backoff, counting the restart that follows.
func (s *Supervisor) wait(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.status.State, s.status.Since, s.status.PID = StateBackoff, s.opts.Now(), 0
	s.status.NextStart = s.status.Since.Add(d)
	s.mu.Unlock()

	if err := s.opts.Sleep(ctx, d); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}

	s.mu.Lock()
	s.status.Restarts++
	s.mu.Unlock()
	return nil
}

func (s *Supervisor) setState(st State, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.State, s.status.Since, s.status.PID = st, s.opts.Now(), pid
	s.status.NextStart = time.Time{}
}

// jitter returns a wait in [d/2, d] ("equal jitter"), so that many
// connectors failing together do not restart in step.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()

	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lineLogger logs the process's output line by line.
type lineLogger struct {
	log *slog.Logger
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()

	l.buf.Write(p)
	for {
		line, err := l.buf.ReadBytes('\n')
		if err != nil { // no full line yet: keep the rest
			rest := slices.Clone(line)
			l.buf.Reset()
			l.buf.Write(rest)
			break
		}
		l.emit(line)
	}

	if l.buf.Len() > 64<<10 { // a runaway line is logged in pieces
		l.emit(l.buf.Bytes())
		l.buf.Reset()
	}

	return len(p), nil
}

// Flush logs a last line without a newline.
func (l *lineLogger) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 0 {
		l.emit(l.buf.Bytes())
		l.buf.Reset()
	}
}

func (l *lineLogger) emit(line []byte) {
	if text := strings.TrimSpace(string(line)); text != "" {
		l.log.Info("cloudflared output", "line", text)
	}
}
