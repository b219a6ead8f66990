package cp

import (
	"errors"
	"net/http"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// setTenant serves POST /api/agents/{id}/tenant: a fleet admin assigns
// the agent to a tenant principal, or clears its tenant with
// {"tenant": null}. Clearing is explicit: an empty body is refused.
func (s *Server) setTenant(w http.ResponseWriter, r *http.Request) error {
	var req cpapi.TenantRequest
	if err := httpapi.DecodeBody(w, r, 4<<10, &req); err != nil {
		return err
	}
	if !req.Set {
		return httpapi.BadRequest(`give "tenant": a principal, or null to clear it`)
	}
	var p *ghoidc.Principal
	if req.Tenant != nil {
		parsed, err := ghoidc.ParsePrincipal(req.Tenant.Kind, req.Tenant.Name,
			req.Tenant.ID.String())
		if err != nil {
			return httpapi.BadRequest("%s", err.Error())
		}
		if parsed == s.opts.Owner {
			return httpapi.BadRequest("the fleet owner controls every agent already")
		}
		p = &parsed
	}

	ctx := r.Context()
	id := r.PathValue("id")
	prev, err := s.store.SetTenant(ctx, id, p)
	if errors.Is(err, fleet.ErrNotFound) {
		return httpapi.NotFound("no such agent")
	}
	if err != nil {
		return err
	}
	action := audit.ActionTenantSet
	if p == nil {
		action = audit.ActionTenantCleared
	}
	s.record(ctx, audit.Event{Actor: callerOf(ctx).actor, Action: action, Target: id,
		Outcome: audit.OutcomeOK, Details: map[string]any{
			"tenant": principalString(p), "previous": principalString(prev)}})
	s.log.InfoContext(ctx, "agent tenant changed", "agent_id", id,
		"tenant", principalString(p), "previous", principalString(prev))
	return httpapi.WriteJSON(w, http.StatusOK, cpapi.TenantResponse{AgentID: id,
		Tenant: apiPrincipal(p), Previous: apiPrincipal(prev)})
}

// agentConfig serves GET /agents/{id}/config: what the control plane
// decided for the agent, which the agent fetches with its credential.
func (s *Server) agentConfig(w http.ResponseWriter, r *http.Request) error {
	a := agentOf(r.Context())
	return httpapi.WriteJSON(w, http.StatusOK, cpapi.AgentConfig{AgentID: a.ID,
		Tenant: apiPrincipal(a.Tenant)})
}

func principalString(p *ghoidc.Principal) string {
	if p == nil {
		return ""
	}
	return p.String()
}

func apiPrincipal(p *ghoidc.Principal) *cpapi.Principal {
	if p == nil {
		return nil
	}
	return &cpapi.Principal{Kind: string(p.Kind), Name: p.Name, ID: cpapi.ID(p.ID)}
}
