package localedge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
)

// Link is one connector's hold on a tunnel: a [*Connection] in the
// process that owns the edge, or a connection stream of a [Client] in
// another process.
type Link interface {
	// TunnelID returns the id of the held tunnel.
	TunnelID() string

	// Done is closed when the link ends: the tunnel was deleted, the link
	// was closed, or the edge became unreachable.
	Done() <-chan struct{}

	// Close ends the link. It is safe to call more than once.
	Close()
}

// Linker opens links to tunnels by token, as cloudflared connects with
// TUNNEL_TOKEN. [*Provider] and [*Client] are Linkers.
type Linker interface {
	// Link opens a link to the live tunnel whose token is token; services
	// is as for [Provider.Connect]. ctx bounds only the opening: the link
	// lasts until the tunnel is deleted or the link is closed.
	Link(ctx context.Context, token string, services map[string]string) (Link, error)
}

// ConnectorOptions configures a [Connector].
type ConnectorOptions struct {
	// Provider opens the connector's links: the edge's own [*Provider], or
	// a [*Client] of another process's edge. Required.
	Provider Linker

	// Token is the tunnel token. Required. It is never logged.
	Token string

	// Services maps the tunnel's services to origins on this machine,
	// e.g. "http://localhost:8080" to the agent's loopback listener. See
	// [Provider.Connect].
	Services map[string]string

	// OnExit, if set, is called after every end of a connection that the
	// Run context did not cause, as [cloudflared.Options.OnExit] is. It
	// must return quickly.
	OnExit func(cloudflared.Exit)

	// MinBackoff and MaxBackoff bound the wait before connecting again.
	// Zero means 100ms and 2s: the dev fleet recovers quickly.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Logger receives lifecycle events. Nil discards them.
	Logger *slog.Logger
}

// Connector is the dev fleet's cloudflared: it holds a connection to its
// tunnel until the tunnel is deleted, then "exits" (reports an exit with
// code 1, as cloudflared does when its tunnel is gone) and tries again
// with backoff, reporting the same [cloudflared.Status] as the real
// supervisor. Create it with [NewConnector] and run [Connector.Run] on a
// goroutine you own; cancel Run's context to stop it.
type Connector struct {
	opts    ConnectorOptions
	log     *slog.Logger
	started atomic.Bool

	mu     sync.Mutex
	status cloudflared.Status
}

// NewConnector validates opts and returns a stopped connector.
func NewConnector(opts ConnectorOptions) (*Connector, error) {
	if opts.Provider == nil || opts.Token == "" {
		return nil, errors.New("localedge: a connector needs a provider and a token")
	}

	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(2*time.Second, opts.MinBackoff)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Connector{opts: opts, log: log.With("component", "localedge-connector")}
	c.status = cloudflared.Status{State: cloudflared.StateStopped, Since: opts.Now()}
	return c, nil
}

// Status returns the connector's state.
func (c *Connector) Status() cloudflared.Status {
	c.mu.Lock()
	defer c.mu.Unlock()

	st := c.status
	if st.LastExit != nil {
		e := *st.LastExit
		st.LastExit = &e
	}
	return st
}

// Run connects and reconnects until ctx ends, then returns nil. It may be
// called once.
func (c *Connector) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("localedge: connector Run called twice")
	}
	defer c.set(cloudflared.StateStopped, nil)

	backoff := c.opts.MinBackoff
	for ctx.Err() == nil {
		exit, ran := c.runOnce(ctx)
		if ctx.Err() != nil {
			break
		}

		c.set(cloudflared.StateBackoff, &exit)
		if c.opts.OnExit != nil {
			c.opts.OnExit(exit)
		}
		if ran {
			backoff = c.opts.MinBackoff
		}

		if sleep(ctx, backoff) != nil {
			break
		}

		backoff = min(backoff*2, c.opts.MaxBackoff)
		c.mu.Lock()
		c.status.Restarts++
		c.mu.Unlock()
	}

	return nil
}

// runOnce holds one connection until it ends or ctx ends. ran reports
// whether the connection was made.
func (c *Connector) runOnce(ctx context.Context) (exit cloudflared.Exit, ran bool) {
	c.set(cloudflared.StateStarting, nil)
	start := c.opts.Now()
	conn, err := c.opts.Provider.Link(ctx, c.opts.Token, c.opts.Services)
	if err != nil {
		c.log.WarnContext(ctx, "connector could not connect", "err", err)
		return cloudflared.Exit{Code: 1, Err: err.Error(), At: start}, false
	}

	c.set(cloudflared.StateRunning, nil)
	c.log.InfoContext(ctx, "connector running", "tunnel_id", conn.TunnelID())

	select {
	case <-ctx.Done():
		conn.Close()
		return cloudflared.Exit{}, true
	case <-conn.Done():
	}

	end := c.opts.Now()
	c.log.WarnContext(ctx, "connector lost its tunnel", "tunnel_id", conn.TunnelID())
	return cloudflared.Exit{Code: 1, Err: fmt.Sprintf("tunnel %s connection ended",
		conn.TunnelID()), At: end, Ran: end.Sub(start)}, true
}

func (c *Connector) set(st cloudflared.State, exit *cloudflared.Exit) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.State, c.status.Since = st, c.opts.Now()
	if exit != nil {
		c.status.LastExit = exit
	}
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
