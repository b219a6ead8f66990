package cp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/reap"
	"github.com/devopsdefender/devopsdefender/internal/websession"
)

// Fencing (STONITH, reference cf.md §7). Each control plane boot creates
// its own tunnel "dd-<env>-cp-<id>" for Hostname, which moves the
// hostname's record to it: that is the cutover. Once the new tunnel
// serves (the hostname answers with this control plane's tunnel id), the
// new control plane deletes every older control-plane tunnel of its env
// whose ingress routes Hostname (found by hostname, not by name) and
// records "stonith" in the audit log. The old control plane's connector
// then exits, its own tunnel reads as deleted, and it fences itself: it
// refuses writes at once, stops its collector (no scraping, no reaping),
// and after FenceGrace powers off. Only a control plane that is not
// fenced and whose last self-check reached itself through its hostname
// reaps, and it checks once more right before deleting anything; a
// hostname routes to one tunnel at a time, so two control planes never
// both pass that check for long.

// ErrFenced is returned by [Server.Run] when the control plane lost its
// hostname: a newer control plane took it over, or the tunnel carrying it
// is gone and the hostname no longer answers.
var ErrFenced = errors.New("cp: fenced: the control plane lost its hostname")

// ActionIngressReaped is the audit action of an orphan tunnel or record
// the collector deleted.
const ActionIngressReaped audit.Action = "ingress_reaped"

// Connector carries a tunnel: a [cloudflared.Supervisor] in production,
// the local edge's connector in dev.
type Connector interface {
	// Run runs the connector until ctx ends.
	Run(ctx context.Context) error
	// Status reports its state for /health.
	Status() cloudflared.Status
}

// ConnectFunc builds the connector of the tunnel whose token is token;
// onExit is called after each exit that the Run context did not cause.
type ConnectFunc func(token string, onExit func(cloudflared.Exit)) (Connector, error)

// selfState is the control plane's own tunnel and fencing state.
type selfState struct {
	// fenced is set once, when a newer control plane took over; reading
	// it needs no lock, so every write is refused at once.
	fenced   atomic.Bool
	fencedCh chan struct{} // closed when fenced

	// exited is signalled by the connector's exits.
	exited chan struct{}

	mu       sync.Mutex // guards the fields below
	tunnel   ingress.Tunnel
	conn     Connector
	serving  bool
	served   bool // serving was true at least once
	strikes  int
	reason   string
	stonithd bool // older control planes were fenced
}

// tunnelID returns the control plane's own tunnel id, or "".
func (s *Server) tunnelID() string {
	s.self.mu.Lock()
	defer s.self.mu.Unlock()
	return s.self.tunnel.ID
}

// Fenced reports whether a newer control plane took over.
func (s *Server) Fenced() bool { return s.self.fenced.Load() }

// Serving reports whether the last self-check found the control plane's
// tunnel serving its hostname, and the control plane not fenced.
func (s *Server) Serving() bool {
	s.self.mu.Lock()
	defer s.self.mu.Unlock()
	return s.self.serving && !s.self.fenced.Load()
}

// TunnelID returns the id of the control plane's own tunnel, or "" when
// it has none (yet).
func (s *Server) TunnelID() string { return s.tunnelID() }

// ingressHealth is the /health view of the control plane's tunnel.
func (s *Server) ingressHealth() *cpapi.CPIngress {
	s.self.mu.Lock()
	defer s.self.mu.Unlock()

	if s.self.tunnel.ID == "" {
		return nil
	}
	h := &cpapi.CPIngress{TunnelID: s.self.tunnel.ID, Serving: s.self.serving,
		Fenced: s.self.fenced.Load(), FencedReason: s.self.reason}
	if s.self.conn != nil {
		st := s.self.conn.Status()
		h.Connector = &st
	}

	return h
}

// startSelf creates the control plane's tunnel, which moves its hostname
// to this control plane (cf.md §2.4), and runs its connector and the
// self-check loop on wg until ctx ends.
func (s *Server) startSelf(ctx context.Context, wg *sync.WaitGroup) error {
	conn, err := s.openSelf(ctx)
	if err != nil {
		return err
	}
	wg.Go(func() { conn.Run(ctx) })
	wg.Go(func() { s.watchSelf(ctx) })
	return nil
}

// openSelf creates the control plane's tunnel and its connector, which
// the caller runs.
func (s *Server) openSelf(ctx context.Context) (Connector, error) {
	var id [8]byte
	rand.Read(id[:])
	name := ingress.TunnelName(s.opts.Env, ingress.RoleCP, hex.EncodeToString(id[:]))
	t, err := s.opts.Ingress.CreateTunnel(ctx, name, ingress.ControlPlaneIngress(s.opts.Hostname))
	if err != nil {
		return nil, fmt.Errorf("cp: creating the control plane's tunnel: %w", err)
	}

	conn, err := s.opts.Connect(t.Token, func(cloudflared.Exit) {
		select {
		case s.self.exited <- struct{}{}:
		default:
		}
	})
	if err != nil {
		s.deleteTunnel(ctx, t.ID, name)
		return nil, fmt.Errorf("cp: starting the control plane's connector: %w", err)
	}

	t.Token = "" // the connector holds it; nothing else may
	s.self.mu.Lock()
	s.self.tunnel, s.self.conn = t, conn
	s.self.mu.Unlock()
	s.log.InfoContext(ctx, "control plane tunnel created", "tunnel_id", t.ID, "name", name,
		"hostname", s.opts.Hostname)
	return conn, nil
}

// watchSelf checks the control plane's tunnel every SelfCheckInterval,
// and at once after its connector exits, until ctx ends or it is fenced.
// Until the hostname first reaches this control plane it checks ten times
// as often, so that a new control plane starts serving, and fences its
// predecessor, soon after its connector is up.
func (s *Server) watchSelf(ctx context.Context) {
	exited := false
	for {
		s.checkSelf(ctx, exited)
		if s.Fenced() {
			return
		}
		wait := s.opts.SelfCheckInterval
		if !s.servedOnce() {
			wait /= 10
		}

		t := time.NewTimer(wait)
		exited = false
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-s.self.exited:
			t.Stop()
			exited = true
		}
	}
}

// probeResult is what a self-probe of the public hostname found.
type probeResult int

const (
	probeFailed probeResult = iota // no answer, or not a control plane's
	probeSelf                      // this control plane answered
	probeOther                     // another control plane answered
)

// checkSelf is one self-check. Cheapest evidence first: the provider
// says whether the tunnel still exists; the public hostname says who
// serves it. A deleted tunnel whose connector just exited fences at once;
// a deleted tunnel, or a hostname answered by another control plane, or
// a stopped connector behind an unreachable hostname count as strikes,
// FenceAfter of which in a row fence. Anything else (a provider error
// while the hostname cannot be reached) is ambiguous and changes nothing.
func (s *Server) checkSelf(ctx context.Context, connectorExited bool) {
	own := s.tunnelID()
	info, err := s.opts.Ingress.Tunnel(ctx, own)
	if ctx.Err() != nil {
		return
	}

	gone := errors.Is(err, ingress.ErrNotFound) || (err == nil && info.Deleted())
	probe, other := s.probeSelf(ctx, own)
	if ctx.Err() != nil {
		return
	}

	var strike string
	switch served := s.servedOnce(); {
	case gone && connectorExited:
		s.fence(ctx, "the control plane's tunnel was deleted and its connector exited")
		return
	case gone:
		strike = "the control plane's tunnel was deleted"
	case probe == probeSelf && err == nil:
		s.serve(ctx)
		return
	// Until the hostname first reached this control plane, the cutover
	// may still be propagating: the predecessor answering, or nothing
	// answering, is expected then.
	case probe == probeOther && served:
		strike = "the hostname is served by another control plane's tunnel " + other
	case probe == probeFailed && served && !s.connectorRunning():
		strike = "the connector is down and the hostname does not answer"
	default:
		s.setServing(false)
		level := slog.LevelWarn
		if !served {
			level = slog.LevelDebug // waiting for the cutover is normal
		}
		s.log.Log(ctx, level, "self-check inconclusive", "tunnel_id", own, "err", err)
		return
	}
	s.strike(ctx, strike)
}

// serve records a good self-check and, the first time, fences the older
// control planes.
func (s *Server) serve(ctx context.Context) {
	s.self.mu.Lock()
	wasServing, done := s.self.serving, s.self.stonithd
	s.self.serving, s.self.served, s.self.strikes = true, true, 0
	s.self.mu.Unlock()
	if !wasServing {
		s.log.InfoContext(ctx, "control plane serving its hostname", "hostname", s.opts.Hostname,
			"tunnel_id", s.tunnelID())
	}
	if !done {
		s.fencePredecessors(ctx)
	}
}

func (s *Server) servedOnce() bool {
	s.self.mu.Lock()
	defer s.self.mu.Unlock()
	return s.self.served
}

func (s *Server) setServing(v bool) {
	s.self.mu.Lock()
	defer s.self.mu.Unlock()
	s.self.serving = v
}

// strike counts one failed self-check and fences after FenceAfter.
func (s *Server) strike(ctx context.Context, why string) {
	s.self.mu.Lock()
	s.self.serving = false
	s.self.strikes++
	n := s.self.strikes
	s.self.mu.Unlock()
	s.log.WarnContext(ctx, "self-check failed", "reason", why, "strikes", n,
		"fence_after", s.opts.FenceAfter)
	if n >= s.opts.FenceAfter {
		s.fence(ctx, why)
	}
}

func (s *Server) connectorRunning() bool {
	s.self.mu.Lock()
	conn := s.self.conn
	s.self.mu.Unlock()
	return conn != nil && conn.Status().State == cloudflared.StateRunning
}

// probeSelf asks the public hostname's /health which control plane
// serves it, returning the other's tunnel id when it is another.
func (s *Server) probeSelf(ctx context.Context, own string) (probeResult, string) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.ScrapeTimeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		strings.TrimSuffix(s.opts.PublicURL(s.opts.Hostname), "/")+"/health", nil)
	if err != nil {
		return probeFailed, ""
	}

	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return probeFailed, ""
	}
	defer resp.Body.Close()

	var h cpapi.Health
	if resp.StatusCode != http.StatusOK ||
		json.NewDecoder(io.LimitReader(resp.Body, maxHealthBody)).Decode(&h) != nil ||
		h.Service != cpapi.Service || h.Ingress == nil || h.Ingress.TunnelID == "" {
		return probeFailed, ""
	}
	if h.Ingress.TunnelID == own {
		return probeSelf, ""
	}

	return probeOther, truncate(h.Ingress.TunnelID, 64)
}

// confirmServing re-checks, right before a deletion, that this control
// plane is not fenced and its hostname reaches it.
func (s *Server) confirmServing(ctx context.Context) bool {
	if s.Fenced() || !s.Serving() {
		return false
	}
	probe, _ := s.probeSelf(ctx, s.tunnelID())
	return probe == probeSelf && !s.Fenced()
}

// fencePredecessors deletes the tunnels of older control planes of this
// env that serve Hostname, recording each in the audit log. A degraded
// listing or a failed deletion is retried at the next self-check.
func (s *Server) fencePredecessors(ctx context.Context) {
	own := s.tunnelID()
	v := s.opts.Ingress.List(ctx, ingress.ListOptions{
		IngressPrefix: ingress.TunnelPrefix(s.opts.Env, ingress.RoleCP)})
	preds, err := reap.Predecessors(v, s.opts.Env, own, s.opts.Hostname)
	if err != nil {
		s.log.WarnContext(ctx, "finding older control planes failed; retrying", "err", err)
		return
	}

	failed := false
	for _, p := range preds {
		if !s.confirmServing(ctx) {
			return
		}
		if err := s.opts.Ingress.DeleteTunnel(ctx, p.ID); err != nil {
			s.log.ErrorContext(ctx, "fencing an older control plane failed", "tunnel_id", p.ID,
				"name", p.Name, "err", err)
			failed = true
			continue
		}

		s.record(ctx, audit.Event{Actor: s.actor(), Action: audit.ActionStonith, Target: p.Name,
			Outcome: audit.OutcomeOK, Details: map[string]any{"tunnel_id": p.ID,
				"created_at": p.CreatedAt.UTC().Format(time.RFC3339Nano),
				"hostname":   s.opts.Hostname, "by_tunnel_id": own}})
		s.log.InfoContext(ctx, "older control plane fenced", "tunnel_id", p.ID, "name", p.Name)
	}

	if !failed {
		s.self.mu.Lock()
		s.self.stonithd = true
		s.self.mu.Unlock()
	}
}

// actor is the audit actor of this control plane's own actions.
func (s *Server) actor() audit.Actor { return audit.System("cp:" + s.tunnelID()) }

// fence stops this control plane accepting writes, at once and for good.
func (s *Server) fence(ctx context.Context, reason string) {
	if !s.self.fenced.CompareAndSwap(false, true) {
		return
	}

	s.self.mu.Lock()
	s.self.reason, s.self.serving = reason, false
	s.self.mu.Unlock()
	close(s.self.fencedCh)
	s.log.ErrorContext(ctx, "control plane fenced: refusing writes and shutting down",
		"reason", reason, "tunnel_id", s.tunnelID(), "grace", s.opts.FenceGrace)
}

// afterFence lets reads drain for FenceGrace, powers off, and returns
// [ErrFenced].
func (s *Server) afterFence(ctx context.Context) error {
	t := time.NewTimer(s.opts.FenceGrace)
	select {
	case <-t.C:
	case <-ctx.Done():
	}

	t.Stop()
	s.self.mu.Lock()
	reason := s.self.reason
	s.self.mu.Unlock()
	if s.opts.PowerOff != nil {
		s.log.ErrorContext(ctx, "powering off after being fenced")
		if err := s.opts.PowerOff(context.WithoutCancel(ctx)); err != nil {
			s.log.ErrorContext(ctx, "power-off failed", "err", err)
		}
	}

	return fmt.Errorf("%w: %s", ErrFenced, reason)
}

// refuseWhenFenced answers every state-changing request of a fenced
// control plane with 503; reads go on until it powers off. Starting a
// sign-in or finishing one writes sessions, so they count as writes.
func (s *Server) refuseWhenFenced(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Fenced() && isWrite(r) {
			w.Header().Set("Retry-After", "5")
			httpapi.WriteError(s.log, w, r, &httpapi.Error{Status: http.StatusServiceUnavailable,
				Code:    httpapi.CodeUnavailable,
				Message: "this control plane was replaced by a newer one; retry"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func isWrite(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return r.URL.Path == websession.StartPath || r.URL.Path == websession.CallbackPath
	}
	return true
}
