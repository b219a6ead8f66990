package cp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// maxHealthBody bounds an agent's /health reply.
const maxHealthBody = 1 << 20

// maxErrorLen bounds the last error stored for an agent; part of it may
// come from the agent.
const maxErrorLen = 512

// Run runs the control plane's background work until ctx ends, then
// returns nil. With [Options.Connect] it first creates the control
// plane's tunnel and starts its connector and self-checks (see fence.go);
// a creation failure is returned. Then it runs the collector: a round
// starts at once, then every ScrapeInterval and whenever [Server.Wake] is
// called (after each registration); a round that overruns the interval
// delays the next tick instead of piling rounds up. When the control
// plane is fenced, the collector stops at once and Run returns
// [ErrFenced] after FenceGrace and PowerOff. Run may be called only once
// at a time.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("cp: collector already running")
	}
	defer s.running.Store(false)

	bgCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()

	if s.opts.Connect != nil {
		if s.tunnelID() != "" {
			return errors.New("cp: Run with Connect may be called once")
		}
		if err := s.startSelf(bgCtx, &wg); err != nil {
			return err
		}
	}

	s.collectLoop(ctx)
	if !s.Fenced() {
		return nil
	}
	// Fenced: stop the background work, then drain and power off.
	stop()
	wg.Wait()
	return s.afterFence(ctx)
}

// collectLoop runs collector rounds until ctx ends or the control plane
// is fenced.
func (s *Server) collectLoop(ctx context.Context) {
	ticker := time.NewTicker(s.opts.ScrapeInterval)
	defer ticker.Stop()

	s.log.InfoContext(ctx, "collector started", "interval", s.opts.ScrapeInterval,
		"stale_after", s.opts.StaleAfter, "dead_after", s.opts.DeadAfter)
	for {
		s.collect(ctx)
		s.reapRound(ctx)
		select {
		case <-ctx.Done():
			s.log.InfoContext(ctx, "collector stopped")
			return
		case <-s.self.fencedCh:
			s.log.WarnContext(ctx, "collector stopped: the control plane is fenced")
			return
		case <-ticker.C:
		case <-s.wake:
		}
	}
}

// collect scrapes every agent once, at most ScrapeConcurrency at a time,
// and returns when all are done. Dead agents are scraped too, so that one
// that comes back becomes healthy again.
func (s *Server) collect(ctx context.Context) {
	agents, err := s.store.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.ErrorContext(ctx, "listing agents to scrape failed", "err", err)
		}
		return
	}

	sem := make(chan struct{}, s.opts.ScrapeConcurrency)
	var wg sync.WaitGroup
	defer wg.Wait()

	for _, a := range agents {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}

		wg.Go(func() {
			defer func() { <-sem }()
			s.expireAttestation(ctx, &a)
			s.scrape(ctx, a)
		})
	}
}

// scrape fetches one agent's /health and records the outcome.
func (s *Server) scrape(ctx context.Context, a fleet.Agent) {
	h, err := s.fetchHealth(ctx, &a)
	if ctx.Err() != nil {
		return // shutting down: a cancelled request says nothing about the agent
	}
	if err == nil {
		s.recordHealthy(ctx, &a, h)
		return
	}
	s.recordFailure(ctx, &a, err)
}

func (s *Server) recordHealthy(ctx context.Context, a *fleet.Agent, h agentapi.Health) {
	if s.Fenced() {
		return // a newer control plane owns the registry now
	}

	err := s.store.UpdateHealth(ctx, a.ID, s.opts.Now(), h.Units)
	switch {
	case errors.Is(err, fleet.ErrNotFound):
		return // replaced by a new registration while we scraped
	case err != nil:
		s.log.ErrorContext(ctx, "recording scrape failed", "agent_id", a.ID, "err", err)
		return
	}

	if a.Status != fleet.StatusHealthy {
		s.log.InfoContext(ctx, "agent status changed", "agent_id", a.ID,
			"vm_name", a.VMName, "from", a.Status, "to", fleet.StatusHealthy)
	}
}

// recordFailure marks the agent stale or dead once it has gone long
// enough without a good scrape, measured from the last good one (or from
// its registration); before that it keeps its status.
func (s *Server) recordFailure(ctx context.Context, a *fleet.Agent, scrapeErr error) {
	if s.Fenced() {
		return
	}

	status := a.Status
	switch silent := s.opts.Now().Sub(a.LastHeard()); {
	case silent >= s.opts.DeadAfter:
		status = fleet.StatusDead
	case silent >= s.opts.StaleAfter:
		status = fleet.StatusStale
	}

	msg := truncate(scrapeErr.Error(), maxErrorLen)
	err := s.store.SetStatus(ctx, a.ID, status, msg)
	switch {
	case errors.Is(err, fleet.ErrNotFound):
		return
	case err != nil:
		s.log.ErrorContext(ctx, "recording scrape failed", "agent_id", a.ID, "err", err)
		return
	}

	if status != a.Status {
		s.log.WarnContext(ctx, "agent status changed", "agent_id", a.ID,
			"vm_name", a.VMName, "from", a.Status, "to", status, "err", msg)
	}
}

// fetchHealth gets and checks the agent's /health through its API
// hostname, the way the ingress publishes it (cf.md §5.1).
func (s *Server) fetchHealth(ctx context.Context, a *fleet.Agent) (agentapi.Health, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.ScrapeTimeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		s.publicURL(ingress.AgentAPIHostname(a.Hostname))+"/health", nil)
	if err != nil {
		return agentapi.Health{}, fmt.Errorf("building /health request: %w", err)
	}

	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return agentapi.Health{}, fmt.Errorf("GET /health: %w", err)
	}
	defer resp.Body.Close()

	if resp.StatusCode != http.StatusOK {
		return agentapi.Health{}, fmt.Errorf("GET /health: status %d", resp.StatusCode)
	}
	var h agentapi.Health
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxHealthBody)).Decode(&h); err != nil {
		return agentapi.Health{}, fmt.Errorf("decoding /health: %w", err)
	}

	return h, checkHealth(a, &h)
}

// checkHealth refuses a reply that is not a healthy report of this agent:
// a hostname that now routes elsewhere must not keep a record alive.
func checkHealth(a *fleet.Agent, h *agentapi.Health) error {
	if h.Service != agentapi.Service {
		return fmt.Errorf("/health is from service %q, not an agent", truncate(h.Service, 64))
	}
	// An agent that does not name this record, even one not registered
	// yet (a restarted process behind the old tunnel), keeps it alive no
	// more than another agent would.
	if h.AgentID != a.ID {
		return fmt.Errorf("/health is from agent %q", truncate(h.AgentID, 64))
	}
	if !h.OK {
		return errors.New("/health reports not ok")
	}

	return nil
}

// truncate cuts s to at most n bytes on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}

	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}

	return s[:n] + "…"
}
