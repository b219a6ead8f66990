package cp

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"sync"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/reap"
)

// Reaping (reference cf.md §5, with its weaknesses fixed by package
// reap). Every ReapEvery collector rounds the control plane lists the
// provider; its environment's agent tunnels that no registered agent
// holds are "unknown", and every round their agent API hostname is
// probed. reap.Decide then allows deleting an unknown tunnel only from a
// complete view, once it is older than ReapGrace and its probes failed
// ReapFailures times in a row over at least ReapGrace. Only a control
// plane that serves its hostname and is not fenced reaps (fence.go).

// reaperState is the collector's reaping state; only the collector
// goroutine uses it, but probes run concurrently.
type reaperState struct {
	round   int
	mu      sync.Mutex // guards probes
	probes  reap.Probes
	unknown []unknownTunnel // from the last complete view
}

// unknownTunnel is an agent tunnel of this env no registered agent holds.
type unknownTunnel struct {
	id, name string
	// probe is the hostname probed: its agent API hostname, or any of
	// its hostnames; empty when no record points at it.
	probe string
}

// reapRound is the reaping step of one collector round.
func (s *Server) reapRound(ctx context.Context) {
	if s.opts.Connect == nil || !s.Serving() || ctx.Err() != nil {
		return // only a control plane that serves its hostname reaps
	}

	r := &s.reaper
	listRound := r.round%s.opts.ReapEvery == 0
	r.round++
	if !listRound {
		s.probeUnknown(ctx)
		return
	}

	agents, err := s.store.List(ctx)
	if err != nil {
		s.log.ErrorContext(ctx, "listing agents to reap failed", "err", err)
		return
	}

	v := s.opts.Ingress.List(ctx, ingress.ListOptions{})
	if !v.Degraded() {
		r.unknown = unknownTunnels(v, s.opts.Env, agents)
		ids := make([]string, 0, len(r.unknown))
		for _, u := range r.unknown {
			ids = append(ids, u.id)
		}

		r.mu.Lock()
		r.probes.Retain(ids)
		r.mu.Unlock()
	}

	s.probeUnknown(ctx)
	s.reap(ctx, v, agents)
}

// unknownTunnels returns the env's agent tunnels in v that no agent
// holds, each with the hostname to probe.
func unknownTunnels(v ingress.View, env string, agents []fleet.Agent) []unknownTunnel {
	known := map[string]bool{}
	for _, a := range agents {
		known[a.TunnelID] = true
	}

	var out []unknownTunnel
	for _, t := range v.Tunnels {
		rn, ok := ingress.ParseResourceName(t.Name)
		if !ok || rn.Env != env || rn.Role != ingress.RoleAgent || known[t.ID] || t.Deleted() {
			continue
		}
		out = append(out, unknownTunnel{id: t.ID, name: t.Name, probe: probeHost(v, t.ID)})
	}

	return out
}

// probeHost picks the hostname to probe among the records pointing at a
// tunnel: the agent API hostname of one of them if there is one (the
// collector probes agents there), else the first.
func probeHost(v ingress.View, tunnelID string) string {
	var names []string
	for _, r := range v.Records {
		if r.TunnelID() == tunnelID {
			names = append(names, r.Name)
		}
	}

	for _, n := range names {
		if slices.Contains(names, ingress.AgentAPIHostname(n)) {
			return ingress.AgentAPIHostname(n)
		}
	}

	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// probeUnknown probes every unknown tunnel once, at most
// ScrapeConcurrency at a time.
func (s *Server) probeUnknown(ctx context.Context) {
	sem := make(chan struct{}, s.opts.ScrapeConcurrency)
	var wg sync.WaitGroup
	defer wg.Wait()

	for _, u := range s.reaper.unknown {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}

		wg.Go(func() {
			defer func() { <-sem }()

			ok := s.probe(ctx, u.probe)
			if ctx.Err() != nil {
				return
			}
			s.reaper.mu.Lock()
			s.reaper.probes.Observe(u.id, ok, s.opts.Now())
			s.reaper.mu.Unlock()
		})
	}
}

// probe reports whether host answers like a live origin: any answer but
// 404 (no route), a 5xx or the edge's 530. Redirects, 401 and 403 are
// auth gates in front of a live agent (cf.md §5.1).
func (s *Server) probe(ctx context.Context, host string) bool {
	if host == "" {
		return false // nothing routes to the tunnel
	}

	ctx, cancel := context.WithTimeout(ctx, s.opts.ScrapeTimeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.publicURL(host)+"/health", nil)
	if err != nil {
		return false
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return false
	}

	resp.Body.Close()
	return resp.StatusCode < 400 || resp.StatusCode == http.StatusUnauthorized ||
		resp.StatusCode == http.StatusForbidden
}

// reap decides from v and carries the decision out, if this control
// plane still serves its hostname right before deleting.
func (s *Server) reap(ctx context.Context, v ingress.View, agents []fleet.Agent) {
	in := reap.Input{View: v, Env: s.opts.Env, Domain: s.opts.Domain,
		KnownHostnames: knownHostnames(agents), Grace: s.opts.ReapGrace,
		MinFailures: s.opts.ReapFailures, Now: s.opts.Now()}
	for _, a := range agents {
		if a.TunnelID != "" {
			in.KnownTunnels = append(in.KnownTunnels, a.TunnelID)
		}
	}

	s.reaper.mu.Lock()
	in.Probes = maps.Clone(s.reaper.probes)
	s.reaper.mu.Unlock()

	d := reap.Decide(in)
	if d.Refused != "" {
		s.log.WarnContext(ctx, "reaping refused", "reason", d.Refused)
		return
	}

	for _, k := range d.Kept {
		s.log.DebugContext(ctx, "orphan kept", "name", k.Name, "reason", k.Reason)
	}

	if len(d.Tunnels)+len(d.Records) == 0 {
		return
	}
	if !s.confirmServing(ctx) {
		s.log.WarnContext(ctx, "reaping skipped: the hostname no longer reaches this "+
			"control plane")
		return
	}

	for _, a := range d.Tunnels {
		s.applyReap(ctx, reap.Decision{Tunnels: []reap.Action{a}}, a)
	}

	for _, a := range d.Records {
		s.applyReap(ctx, reap.Decision{Records: []reap.Action{a}}, a)
	}
}

func (s *Server) applyReap(ctx context.Context, d reap.Decision, a reap.Action) {
	if s.Fenced() {
		return
	}
	if err := reap.Apply(ctx, s.opts.Ingress, d, s.log); err != nil {
		s.log.ErrorContext(ctx, "reaping failed", "name", a.Name, "err", err)
		return
	}

	details := map[string]any{"id": a.ID, "reason": a.Reason}
	if len(a.Records) > 0 {
		details["records"] = a.Records
	}
	if a.TunnelID != "" {
		details["tunnel_id"] = a.TunnelID
	}

	s.record(ctx, audit.Event{Actor: s.actor(), Action: ActionIngressReaped, Target: a.Name,
		Outcome: audit.OutcomeOK, Details: details})
}
