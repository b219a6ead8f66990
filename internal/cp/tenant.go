package cp

import (
	"context"
	"errors"
	"net/http"
	"net/url"

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
		parsed, err := s.parseTenant(req.Tenant.Kind, req.Tenant.Name, req.Tenant.ID.String())
		if err != nil {
			return err
		}
		p = &parsed
	}

	id := r.PathValue("id")
	prev, err := s.changeTenant(r.Context(), id, p)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, cpapi.TenantResponse{AgentID: id,
		Tenant: apiPrincipal(p), Previous: apiPrincipal(prev)})
}

// maxTenantForm bounds the agent page's tenant form.
const maxTenantForm = 4 << 10

// tenantForm serves POST /agent/{id}/tenant, the agent page's form: a
// fleet admin assigns the agent to a tenant (action=set with kind, name
// and id) or clears it (action=clear). It answers with the agent page
// again, the way a browser expects a form to: a redirect after a change,
// the page with the error after a refusal.
func (s *Server) tenantForm(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxTenantForm)
	if err := r.ParseForm(); err != nil {
		return httpapi.BadRequest("the form could not be read")
	}
	var p *ghoidc.Principal
	switch f := r.PostForm; f.Get("action") {
	case "set":
		parsed, err := s.parseTenant(f.Get("kind"), f.Get("name"), f.Get("id"))
		if err != nil {
			return s.agentPageWithError(w, r, err)
		}
		p = &parsed
	case "clear":
	default:
		return httpapi.BadRequest(`action must be "set" or "clear"`)
	}

	id := r.PathValue("id")
	if _, err := s.changeTenant(r.Context(), id, p); err != nil {
		return err
	}
	http.Redirect(w, r, "/agent/"+url.PathEscape(id), http.StatusSeeOther)
	return nil
}

// parseTenant reads a tenant principal; the fleet owner is refused, since
// it controls every agent already.
func (s *Server) parseTenant(kind, name, id string) (ghoidc.Principal, error) {
	p, err := ghoidc.ParsePrincipal(kind, name, id)
	if err != nil {
		return p, httpapi.BadRequest("%s", err.Error())
	}
	if p == s.opts.Owner {
		return p, httpapi.BadRequest("the fleet owner controls every agent already")
	}

	return p, nil
}

// changeTenant assigns agent id to p, or clears its tenant when p is nil,
// and audits the change. It returns the previous tenant.
func (s *Server) changeTenant(ctx context.Context, id string,
	p *ghoidc.Principal) (*ghoidc.Principal, error) {
	prev, err := s.store.SetTenant(ctx, id, p)
	if errors.Is(err, fleet.ErrNotFound) {
		return nil, httpapi.NotFound("no such agent")
	}
	if err != nil {
		return nil, err
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
	return prev, nil
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
