package cp

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// Agents' ingress. Each registration gets its own tunnel, named by the
// agent id ("dd-<env>-agent-<id>", cf.md §2.1), with the agent's
// dashboard on its hostname and its API on the API hostname, both as
// services "http://localhost:PORT" inside the VM that the agent's
// connector reaches (ingress.AgentIngress). The tunnel token goes to the
// agent in the registration answer and nowhere else. Later, the agent
// posts its workloads' hostname claims with its own credential, which
// can change only its own tunnel.

// ActionIngressReplaced is the audit action of an agent's new claims.
const ActionIngressReplaced audit.Action = "ingress_replaced"

// maxIngressBody bounds POST /agents/{id}/ingress.
const maxIngressBody = 64 << 10

// maxClaims bounds the hostnames one agent may publish.
const maxClaims = 64

// publicURL returns the URL at which a published hostname is reached.
func (s *Server) publicURL(hostname string) string {
	return strings.TrimSuffix(s.opts.PublicURL(hostname), "/")
}

// createAgentTunnel creates the tunnel of a new registration, records
// its id and URL on a, and returns its token.
func (s *Server) createAgentTunnel(ctx context.Context, a *fleet.Agent) (string, error) {
	t, err := s.opts.Ingress.CreateTunnel(ctx, a.ID, ingress.AgentIngress(a.Hostname, nil))
	if err != nil {
		return "", httpapi.Upstream("creating the agent's tunnel failed",
			fmt.Errorf("creating tunnel for %s: %w", a.Hostname, err))
	}
	a.TunnelID, a.URL = t.ID, s.publicURL(a.Hostname)
	return t.Token, nil
}

// deleteTunnel removes a tunnel, logging a failure: it runs while undoing
// or after finishing a change whose result stands, and reaping removes
// what it leaves behind.
func (s *Server) deleteTunnel(ctx context.Context, tunnelID, name string) {
	if tunnelID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := s.opts.Ingress.DeleteTunnel(ctx, tunnelID); err != nil {
		s.log.ErrorContext(ctx, "deleting tunnel failed; reaping will retry",
			"tunnel_id", tunnelID, "name", name, "err", err)
		return
	}
	s.log.InfoContext(ctx, "tunnel deleted", "tunnel_id", tunnelID, "name", name)
}

// setIngress serves POST /agents/{id}/ingress: the agent's full list of
// hostname claims replaces its tunnel's ingress. Invalid claims (a bad or
// reserved label, a bad port, a label claimed twice) are refused with 400
// and change nothing.
func (s *Server) setIngress(w http.ResponseWriter, r *http.Request) error {
	var req cpapi.IngressRequest
	if err := httpapi.DecodeBody(w, r, maxIngressBody, &req); err != nil {
		return err
	}
	a := agentOf(r.Context())
	if len(req.Claims) > maxClaims {
		return httpapi.BadRequest("at most %d claims", maxClaims)
	}
	if err := ingress.ValidateClaims(a.Hostname, req.Claims); err != nil {
		return httpapi.BadRequest("%s", err.Error())
	}
	if a.TunnelID == "" {
		return &httpapi.Error{Status: http.StatusConflict, Code: httpapi.CodeConflict,
			Message: "the agent has no tunnel; register again"}
	}

	ctx := r.Context()
	in := ingress.AgentIngress(a.Hostname, req.Claims)
	if err := s.opts.Ingress.ReplaceIngress(ctx, a.TunnelID, in); err != nil {
		return httpapi.Upstream("publishing the claims failed",
			fmt.Errorf("replacing ingress of %s: %w", a.ID, err))
	}
	if err := s.store.SetClaims(ctx, a.ID, req.Claims); err != nil {
		return fmt.Errorf("storing claims of %s: %w", a.ID, err)
	}
	a.Claims = req.Claims
	exposed := s.exposed(a)
	s.record(ctx, audit.Event{Actor: audit.Agent(a.ID), Action: ActionIngressReplaced,
		Target: a.ID, Outcome: audit.OutcomeOK, Details: map[string]any{
			"tunnel_id": a.TunnelID, "hostnames": in.Hostnames()}})
	s.log.InfoContext(ctx, "agent ingress replaced", "agent_id", a.ID,
		"hostnames", in.Hostnames())
	return httpapi.WriteJSON(w, http.StatusOK, cpapi.IngressResponse{AgentID: a.ID,
		Hostnames: in.Hostnames(), Exposed: exposed})
}

// exposed lists an agent's claims with their hostnames and URLs.
func (s *Server) exposed(a *fleet.Agent) []agentapi.Exposed {
	out := make([]agentapi.Exposed, 0, len(a.Claims))
	for _, c := range a.Claims {
		h := ingress.ExtraHostname(a.Hostname, c.Label)
		out = append(out, agentapi.Exposed{App: c.App, Label: c.Label, Port: c.Port,
			Hostname: h, URL: s.publicURL(h), Published: a.TunnelID != ""})
	}
	return out
}

// knownHostnames lists every hostname registered agents use, which
// reaping never deletes.
func knownHostnames(agents []fleet.Agent) []string {
	var hs []string
	for _, a := range agents {
		if a.Hostname == "" {
			continue
		}
		hs = append(hs, a.Hostname, ingress.AgentAPIHostname(a.Hostname))
		for _, c := range a.Claims {
			hs = append(hs, ingress.ExtraHostname(a.Hostname, c.Label))
		}
	}
	return hs
}
