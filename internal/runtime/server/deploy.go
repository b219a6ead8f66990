package server

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// deployment is one entry of the runtime's table.
type deployment struct {
	id        string
	app       string
	source    string
	seq       uint64 // deploy order; replacement only removes older entries
	startedAt time.Time
	cancel    context.CancelFunc // ends the deploy goroutine's fetch
	settled   chan struct{}      // closed when the deploy goroutine is done

	// Guarded by Server.mu.
	status     string
	pid        int
	errMsg     string
	exitCode   *int
	finishedAt time.Time
	stopping   bool  // stop, replacement or shutdown claimed it
	proc       *proc // nil until spawned
}

// info renders the entry as "list" reports it. Call with s.mu held.
func (d *deployment) infoLocked() runtime.Deployment {
	info := runtime.Deployment{
		ID:           d.id,
		AppName:      d.app,
		Source:       d.source,
		Status:       d.status,
		ErrorMessage: d.errMsg,
		StartedAt:    formatTime(d.startedAt),
		ExitCode:     d.exitCode,
	}

	if d.pid != 0 {
		pid := d.pid
		info.PID = &pid
	}
	if !d.finishedAt.IsZero() {
		info.FinishedAt = formatTime(d.finishedAt)
	}
	return info
}

// formatTime writes RFC 3339 in UTC with nanoseconds and a "+00:00" offset,
// the form EasyEnclave's clients have always seen (easyenclave.md §1.4).
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000000-07:00")
}

// deploy records a new deployment and starts its background work. boot
// marks a boot workload, the only kind that may inherit the token.
func (s *Server) deploy(ctx context.Context, spec workload.Spec, boot bool) string {
	dctx, cancel := context.WithCancel(ctx)
	d := &deployment{
		id:        uuid.NewString(),
		app:       spec.Name(),
		source:    spec.Source(),
		startedAt: s.opts.Now(),
		cancel:    cancel,
		settled:   make(chan struct{}),
		status:    runtime.StatusDeploying,
	}

	s.mu.Lock()
	s.seq++
	d.seq = s.seq
	s.deps[d.id] = d
	s.mu.Unlock()

	s.log.Info("deploy accepted", "id", d.id, "app", d.app, "boot", boot)
	s.wg.Go(func() {
		defer close(d.settled)
		defer cancel()
		s.run(dctx, d, spec, boot)
	})

	return d.id
}

// run is the deploy goroutine: replace older entries of the app, then
// follow the dispatch table of easyenclave.md §2.4.
func (s *Server) run(ctx context.Context, d *deployment, spec workload.Spec, boot bool) {
	if err := s.replace(ctx, d); err != nil {
		s.fail(d, fmt.Sprintf("replacing older %s deployments: %v", d.app, err))
		return
	}

	spec = s.rewriteSpec(spec)
	if boot && spec.InheritToken && s.token != "" {
		spec.Env = append(spec.Env, "EE_TOKEN="+s.token)
	}

	if rel := spec.GitHubRelease; rel != nil {
		primary, err := s.fetcher.fetch(ctx, *rel)
		if err != nil {
			s.fail(d, err.Error())
			return
		}
		if len(spec.Cmd) == 0 {
			s.finish(d, runtime.StatusCompleted, "")
			return
		}
		// Always, not only when the name matches (easyenclave.md §2.3 step 5).
		spec.Cmd = append([]string{primary}, spec.Cmd[1:]...)
	} else if len(spec.Cmd) == 0 {
		s.fail(d, "neither github_release nor cmd specified")
		return
	}

	// a stop or shutdown may have come while fetching
	if ctx.Err() != nil {
		s.fail(d, "deploy cancelled")
		return
	}

	p, err := s.spawn(d.app, spec)
	if err != nil {
		s.fail(d, fmt.Sprintf("spawn %s: %v", spec.Cmd[0], err))
		return
	}
	s.started(ctx, d, p)
}

// replace stops and removes every older entry with d's app name
// (easyenclave.md §3.3), so the log file and any port are free again.
func (s *Server) replace(ctx context.Context, d *deployment) error {
	s.mu.Lock()
	var old []*deployment
	for _, o := range s.deps {
		if o.app == d.app && o.seq < d.seq {
			o.stopping = true
			old = append(old, o)
		}
	}
	s.mu.Unlock()

	for _, o := range old {
		s.halt(o)
		s.mu.Lock()
		delete(s.deps, o.id)
		s.mu.Unlock()
		s.log.Info("deployment replaced", "id", o.id, "app", o.app, "by", d.id)
	}

	return ctx.Err()
}

// started records a spawned process and starts watching it. A deployment
// that was stopped or whose server shut down meanwhile is not marked
// running; its stopper, or run itself after shutdown, ends the process.
func (s *Server) started(ctx context.Context, d *deployment, p *proc) {
	s.mu.Lock()
	d.proc, d.pid = p, p.pid
	live := !d.stopping && ctx.Err() == nil
	if live {
		d.status = runtime.StatusRunning
	}
	s.mu.Unlock()

	s.wg.Go(func() { s.watch(d, p) })
	if live {
		s.log.Info("deployment running", "id", d.id, "app", d.app, "pid", p.pid)
	} else if ctx.Err() != nil {
		p.terminate(stopGrace)
	}
}

// watch waits for the process and records how it ended.
func (s *Server) watch(d *deployment, p *proc) {
	p.wait()
	code, msg := exitOutcome(p.state)

	s.mu.Lock()
	defer s.mu.Unlock()

	d.exitCode = &code
	d.finishedAt = s.opts.Now()
	switch {
	case d.stopping:
		d.status = runtime.StatusStopped
	case msg == "":
		d.status = runtime.StatusCompleted
	default:
		d.status, d.errMsg = runtime.StatusFailed, msg
	}

	s.log.Info("deployment exited", "id", d.id, "app", d.app, "status", d.status,
		"exit_code", code)
}

// fail marks d failed unless someone stopped it meanwhile.
func (s *Server) fail(d *deployment, msg string) {
	s.log.Warn("deployment failed", "id", d.id, "app", d.app, "err", msg)
	s.finish(d, runtime.StatusFailed, msg)
}

func (s *Server) finish(d *deployment, status, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if d.stopping {
		return
	}
	d.status, d.errMsg, d.finishedAt = status, msg, s.opts.Now()
}

// halt ends d's background work and its process group, waiting for both.
// It leaves the status to the caller and to watch. halt is safe to call
// concurrently and more than once.
func (s *Server) halt(d *deployment) {
	s.mu.Lock()
	d.stopping = true
	s.mu.Unlock()

	d.cancel()
	<-d.settled // the deploy goroutine ends promptly once cancelled

	s.mu.Lock()
	p := d.proc
	s.mu.Unlock()

	if p != nil {
		p.terminate(stopGrace)
	}
}

// stop implements "stop": only running or deploying entries can be
// stopped, and the reply comes once the process group is gone.
func (s *Server) stop(id string) error {
	s.mu.Lock()
	d, ok := s.deps[id]
	if !ok {
		s.mu.Unlock()
		return errors.New(runtime.ErrNotFound)
	}

	if d.status != runtime.StatusRunning && d.status != runtime.StatusDeploying {
		status := d.status
		s.mu.Unlock()
		return fmt.Errorf("cannot stop deployment in '%s' status", status)
	}
	d.stopping = true
	s.mu.Unlock()

	s.halt(d)

	s.mu.Lock()
	d.status = runtime.StatusStopped
	if d.finishedAt.IsZero() {
		d.finishedAt = s.opts.Now()
	}
	s.mu.Unlock()

	s.log.Info("deployment stopped", "id", id, "app", d.app)
	return nil
}

// list returns every entry, oldest deploy first.
func (s *Server) list() []runtime.Deployment {
	s.mu.Lock()
	defer s.mu.Unlock()

	deps := make([]*deployment, 0, len(s.deps))
	for _, d := range s.deps {
		deps = append(deps, d)
	}
	sort.Slice(deps, func(i, j int) bool { return deps[i].seq < deps[j].seq })

	out := make([]runtime.Deployment, len(deps))
	for i, d := range deps {
		out[i] = d.infoLocked()
	}
	return out
}

// appOf returns the app name of deployment id.
func (s *Server) appOf(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()

	d, ok := s.deps[id]
	if !ok {
		return "", false
	}
	return d.app, true
}
