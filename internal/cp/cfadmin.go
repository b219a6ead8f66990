package cp

import (
	"net/http"

	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/reap"
)

// The operator views of the provider (reference cf.md §6): read-only,
// fleet admin only, always 200 with "degraded" set when a list could not
// be read in full, in which case no drift is reported.

// accountInfo is implemented by providers that name their account and
// zone (Cloudflare).
type accountInfo interface {
	AccountID() string
	ZoneID() string
}

func (s *Server) account() (accountID, zoneID string) {
	if a, ok := s.opts.Ingress.(accountInfo); ok {
		return a.AccountID(), a.ZoneID()
	}
	return "", ""
}

// cfSnapshot serves GET /admin/cf/snapshot: this environment's tunnels,
// records and legacy Access applications against the registry.
func (s *Server) cfSnapshot(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	agents, err := s.store.List(ctx)
	if err != nil {
		return err
	}

	v := s.opts.Ingress.List(ctx, ingress.ListOptions{Apps: true})
	account, zone := s.account()
	states := make([]reap.AgentState, 0, len(agents))
	for _, a := range agents {
		states = append(states, agentState(&a))
	}

	return httpapi.WriteJSON(w, http.StatusOK, reap.BuildSnapshot(reap.SnapshotInput{
		View: v, Env: s.opts.Env, Hostname: s.opts.Hostname, CPTunnelID: s.tunnelID(),
		AccountID: account, ZoneID: zone, Agents: states}))
}

func agentState(a *fleet.Agent) reap.AgentState {
	st := reap.AgentState{AgentID: a.ID, VMName: a.VMName, Hostname: a.Hostname,
		Status: string(a.Status), LastSeen: a.LastSeen.UTC(), TunnelID: a.TunnelID,
		Extras: []reap.Extra{}}
	for _, c := range a.Claims {
		st.Extras = append(st.Extras, reap.Extra{Label: c.Label, Port: c.Port})
	}

	return st
}

// cfMap serves GET /admin/cf/map: every environment's resources in the
// account.
func (s *Server) cfMap(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	agents, err := s.store.List(ctx)
	if err != nil {
		return err
	}

	known := 0
	for _, a := range agents {
		if a.TunnelID != "" {
			known++
		}
	}

	v := s.opts.Ingress.List(ctx, ingress.ListOptions{Apps: true})
	account, zone := s.account()
	return httpapi.WriteJSON(w, http.StatusOK, reap.BuildMap(reap.MapInput{View: v,
		ServingEnv: s.opts.Env, AccountID: account, ZoneID: zone, KnownAgents: known}))
}
