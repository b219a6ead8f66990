package agent

import (
	"context"
	"sync"

	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
)

// Connector carries the agent's tunnel: a [cloudflared.Supervisor] in
// production, the local edge's connector in dev.
type Connector interface {
	// Run runs the connector until ctx ends.
	Run(ctx context.Context) error
	// Status reports its state for /health.
	Status() cloudflared.Status
}

// ConnectFunc builds the connector of the tunnel whose token is token;
// onExit is called after each exit that the Run context did not cause.
type ConnectFunc func(token string, onExit func(cloudflared.Exit)) (Connector, error)

// tunnelRunner owns the goroutine of the current connector. Each
// registration brings a new tunnel token; the old connector is stopped
// before the new one starts, so at most one runs.
type tunnelRunner struct {
	mu     sync.Mutex
	conn   Connector
	cancel context.CancelFunc
	done   chan struct{}
}

// startTunnel replaces the running connector, if any, by one for token.
// It runs until stopTunnel or until ctx ends. A connector that cannot be
// built is logged: the agent keeps serving on its origin, and the next
// registration tries again.
func (a *Agent) startTunnel(ctx context.Context, token string) {
	a.stopTunnel()
	if a.opts.Connect == nil || token == "" {
		return
	}

	conn, err := a.opts.Connect(token, func(e cloudflared.Exit) {
		a.log.Warn("tunnel connector exited", "code", e.Code, "err", e.Err)
	})
	if err != nil {
		a.log.Error("starting the tunnel connector failed", "err", err)
		return
	}

	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	t := &a.tunnel
	t.mu.Lock()
	t.conn, t.cancel, t.done = conn, cancel, done
	t.mu.Unlock()
	go func() {
		defer close(done)
		conn.Run(ctx)
	}()

	a.log.Info("tunnel connector started")
}

// stopTunnel stops the running connector and waits for it.
func (a *Agent) stopTunnel() {
	t := &a.tunnel
	t.mu.Lock()
	cancel, done := t.cancel, t.done
	t.cancel, t.done = nil, nil
	t.mu.Unlock()

	if cancel != nil {
		cancel()
		<-done
	}
}

// tunnelStatus returns the connector's state, or nil when none ran.
func (a *Agent) tunnelStatus() *cloudflared.Status {
	t := &a.tunnel
	t.mu.Lock()
	defer t.mu.Unlock()

	if t.conn == nil {
		return nil
	}
	st := t.conn.Status()
	return &st
}
