package cp

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/dashboard"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

const (
	// maxRegisterBody bounds POST /register; a TDX quote is a few KiB.
	maxRegisterBody = 64 << 10
	// maxOriginLen bounds an agent's origin URL.
	maxOriginLen = 2048
	// attestationUnverified is the status of evidence nobody checked.
	attestationUnverified = "unverified"
	// cleanupTimeout bounds undoing an ingress change after a failure.
	cleanupTimeout = 10 * time.Second
)

func (s *Server) health(w http.ResponseWriter, r *http.Request) error {
	c, err := s.store.Counts(r.Context())
	if err != nil {
		return &httpapi.Error{Status: http.StatusServiceUnavailable,
			Code: httpapi.CodeUnavailable, Message: "fleet store unavailable", Err: err}
	}
	return httpapi.WriteJSON(w, http.StatusOK, cpapi.Health{
		OK:           true,
		Service:      cpapi.Service,
		Env:          s.opts.Env,
		Hostname:     s.opts.Hostname,
		Build:        s.opts.Build,
		UptimeSecs:   int64(s.opts.Now().Sub(s.started) / time.Second),
		AgentCount:   c.Agents,
		HealthyCount: c.Healthy,
		Ingress:      s.ingressHealth(),
	})
}

// register records an agent, publishes its hostname and hands it a token.
// The checks run cheapest first: body shape, keys, the request signature,
// the single-use nonce (consumed even if a later check fails, so a
// captured request cannot be replayed), then the evidence and the policy.
// Nothing is created unless every check passes.
func (s *Server) register(w http.ResponseWriter, r *http.Request) error {
	body, err := httpapi.ReadBody(w, r, maxRegisterBody)
	if err != nil {
		return err
	}
	var req cpapi.RegisterRequest
	if err := httpapi.Unmarshal(body, &req); err != nil {
		return err
	}
	if err := s.validateRegister(&req); err != nil {
		return err
	}

	keys, err := attestbind.DecodeKeys(req.SigningKey, req.NoiseKey)
	if err != nil {
		return httpapi.BadRequest("%s", err.Error())
	}
	ctx := r.Context()
	at, err := s.checkRegistration(ctx, body, r.Header.Get(attestbind.SignatureHeader), &req,
		keys)
	if err != nil {
		s.refuseRegistration(ctx, r, req.VMName, "", err)
		return err
	}

	holder, err := s.nameHolder(ctx, req.VMName, keys)
	if err != nil {
		s.refuseRegistration(ctx, r, req.VMName, holderID(holder), err)
		return err
	}

	a, token, err := s.newAgent(ctx, &req, keys, at)
	if err != nil {
		return err
	}
	reg, err := s.admit(ctx, r, &a, holder)
	if err != nil {
		return err
	}

	s.registered(ctx, &a, reg.replaced)
	return httpapi.WriteJSON(w, http.StatusOK, cpapi.RegisterResponse{
		AgentID: a.ID, Hostname: a.Hostname, URL: a.URL, AgentToken: token,
		TunnelToken: reg.tunnelToken})
}

// admission is what storing a registration produced.
type admission struct {
	tunnelToken string
	replaced    []fleet.Agent // the earlier records of the VM name
}

// admit stores the checked registration a, which replaces holder (nil:
// none), with its audit entry, once its VM name and hostnames are
// confirmed free for it; it creates a's tunnel and deletes those of the
// records a replaced. Its VM name and those of the agents that could hold
// its hostnames stay reserved meanwhile (reserve.go), so registrations of
// other names go on while the provider works.
func (s *Server) admit(ctx context.Context, r *http.Request, a *fleet.Agent,
	holder *fleet.Agent) (admission, error) {
	res, released, err := s.reserveRegistration(ctx, r, a, holder)
	if err != nil {
		return admission{}, err
	}
	defer s.unreserve(res)

	tunnelToken, err := s.createAgentTunnel(ctx, a)
	if errors.Is(err, ingress.ErrHostnameTaken) {
		s.refuseRegistration(ctx, r, a.VMName, "", err)
	}
	if err != nil {
		return admission{}, err
	}

	replaced, err := s.storeRegistration(ctx, a, released)
	if err != nil {
		s.deleteTunnel(ctx, a.TunnelID, a.ID)
		return admission{}, fmt.Errorf("storing registration of %s: %w", a.ID, err)
	}

	// The new tunnel took the hostnames over when it was created; the
	// replaced registration's tunnel keeps only what nobody else uses.
	// Deleting it reads which names point at it, then deletes those, so
	// its VM name stays reserved until it is done.
	for _, old := range replaced {
		s.deleteTunnel(ctx, old.TunnelID, old.ID)
	}
	return admission{tunnelToken: tunnelToken, replaced: replaced}, nil
}

// reserveRegistration reserves registration a's keys once holder is
// confirmed as the holder of its VM name and its hostnames are free for
// it, and returns the dead agents' claims that a takes over. A refusal is
// audited.
func (s *Server) reserveRegistration(ctx context.Context, r *http.Request, a *fleet.Agent,
	holder *fleet.Agent) (*reservation, []releasedClaims, error) {
	own := agentHostnames(a.Hostname, nil)
	var released []releasedClaims
	refusedBy := ""
	res, err := s.reserveChecked(ctx, reservationKeys(a.VMName, own), func() error {
		if _, err := s.confirmHolder(ctx, a.VMName, holder); err != nil {
			refusedBy = holderID(holder)
			return err
		}

		var err error
		released, err = s.checkHostnames(ctx, a.VMName, own)
		return err
	})

	var he *httpapi.Error
	if errors.As(err, &he) {
		s.refuseRegistration(ctx, r, a.VMName, refusedBy, err)
	}
	if err != nil {
		return nil, nil, err
	}
	return res, released, nil
}

// storeRegistration records a and its audit entry, and takes the claims
// released over from the dead agents that held them. It returns the
// records that a replaced.
func (s *Server) storeRegistration(ctx context.Context, a *fleet.Agent,
	released []releasedClaims) ([]fleet.Agent, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()

	replaced, err := s.store.Register(ctx, *a, func(replaced []fleet.Agent) audit.Event {
		return registrationEvent(a, replaced)
	})
	if err != nil {
		return nil, err
	}

	s.release(ctx, released)
	return replaced, nil
}

// registrationEvent is the audit entry of registration a, which replaced
// the records replaced.
func registrationEvent(a *fleet.Agent, replaced []fleet.Agent) audit.Event {
	details := map[string]any{
		"vm_name": a.VMName, "hostname": a.Hostname, "attestation_type": a.Attestation.Type,
		"attestation_status": a.Attestation.Status, "mrtd": a.Attestation.MRTD,
		"tunnel_id": a.TunnelID, "replaced": agentIDs(replaced)}
	if dropped := droppedTenant(a, replaced); dropped != nil {
		details["tenant_dropped"] = dropped.String()
	}

	return audit.Event{Time: a.RegisteredAt, Actor: audit.Agent(a.ID),
		Action: audit.ActionRegistration, Target: a.ID, Outcome: audit.OutcomeOK,
		Details: details}
}

// registered finishes the registration of a, which replaced the records
// replaced: it logs the registration and wakes the collector to scrape a.
func (s *Server) registered(ctx context.Context, a *fleet.Agent, replaced []fleet.Agent) {
	if dropped := droppedTenant(a, replaced); dropped != nil {
		s.log.WarnContext(ctx, "tenant dropped: vm name registered with other keys",
			"agent_id", a.ID, "vm_name", a.VMName, "tenant", dropped.String(),
			"replaced", agentIDs(replaced))
	}
	s.log.InfoContext(ctx, "agent registered", "agent_id", a.ID, "vm_name", a.VMName,
		"url", a.URL, "attestation_type", a.Attestation.Type,
		"attestation_status", a.Attestation.Status, "mrtd", a.Attestation.MRTD,
		"tunnel_id", a.TunnelID, "replaced", len(replaced))
	s.Wake()
}

// agentIDs returns the ids of agents, never nil.
func agentIDs(agents []fleet.Agent) []string {
	ids := []string{}
	for _, a := range agents {
		ids = append(ids, a.ID)
	}
	return ids
}

// refuseRegistration logs and audits a refused registration. holder is
// the agent that keeps vmName, if that is why.
func (s *Server) refuseRegistration(ctx context.Context, r *http.Request, vmName,
	holder string, err error) {
	s.log.WarnContext(ctx, "registration refused", "vm_name", vmName, "holder", holder,
		"err", err)
	details := map[string]any{"vm_name": vmName, "reason": publicMessage(err)}
	if holder != "" {
		details["holder"] = holder
	}

	s.record(ctx, audit.Event{Actor: audit.Anonymous(r.RemoteAddr),
		Action: audit.ActionRegistration, Outcome: audit.OutcomeDenied, Details: details})
}

// checkRegistration checks a well-formed registration: its signature, its
// nonce, then its evidence and the policy. Every refusal is audited.
func (s *Server) checkRegistration(ctx context.Context, body []byte, sig string,
	req *cpapi.RegisterRequest, keys attestbind.Keys) (fleet.Attestation, error) {
	if err := attestbind.VerifySignature(keys.Signing, body, sig); err != nil {
		return fleet.Attestation{}, httpapi.Unauthorized("request signature refused")
	}

	nonce, ok := s.nonces.consume(req.Nonce)
	if !ok {
		return fleet.Attestation{}, httpapi.Unauthorized("nonce unknown, used or expired")
	}
	return s.appraise(ctx, attestbind.PurposeRegister, nonce, keys, req.Evidence)
}

func (s *Server) validateRegister(req *cpapi.RegisterRequest) error {
	if !workload.ValidLabel(req.VMName) {
		return httpapi.BadRequest("vm_name must be a lowercase DNS label of at most 63 characters")
	}

	hostnames := agentHostnames(s.agentHostname(req.VMName), nil)
	for _, h := range hostnames {
		if ingress.ValidateHostname(h) != nil {
			return httpapi.BadRequest("vm_name %q is too long for this fleet's domain",
				req.VMName)
		}
	}

	if err := s.checkOwnHostnames(hostnames); err != nil {
		return err
	}
	if err := validateOrigin(req.Origin); err != nil {
		return err
	}

	switch req.Evidence.AttestationType {
	case "tdx", "simulated", "none":
	default:
		return httpapi.BadRequest("evidence.attestation_type must be tdx, simulated or none")
	}

	for field, v := range map[string]string{
		"evidence.quote_b64":       req.Evidence.QuoteB64,
		"evidence.report_data_b64": req.Evidence.ReportDataB64,
	} {
		if _, err := base64.StdEncoding.DecodeString(v); err != nil {
			return httpapi.BadRequest("%s is not standard base64", field)
		}
	}

	return nil
}

// validateOrigin accepts an absolute http(s) URL without credentials,
// query or fragment: the ingress forwards requests to it.
func validateOrigin(origin string) error {
	if len(origin) > maxOriginLen {
		return httpapi.BadRequest("origin is longer than %d bytes", maxOriginLen)
	}

	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return httpapi.BadRequest("origin must be an absolute http or https URL")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return httpapi.BadRequest("origin must not carry credentials, a query or a fragment")
	}

	return nil
}

// agentHostname returns the dashboard hostname of the agent vmName,
// "<vm_name>.<Domain>"; its other hostnames are flattened from it
// (agentHostnames).
func (s *Server) agentHostname(vmName string) string {
	return vmName + "." + s.opts.Domain
}

// newAgent builds the record of a registration and its fresh token.
func (s *Server) newAgent(ctx context.Context, req *cpapi.RegisterRequest,
	keys attestbind.Keys, at fleet.Attestation) (fleet.Agent, string, error) {
	id := s.newAgentID()
	token := newSecret("dd_agent_")
	return fleet.Agent{
		ID:           id,
		VMName:       req.VMName,
		Hostname:     s.agentHostname(req.VMName),
		Origin:       req.Origin,
		Status:       fleet.StatusRegistering,
		RegisteredAt: s.opts.Now(),
		Attestation:  at,
		TokenHash:    fleet.HashToken(token),
		SigningKey:   keys.Signing,
		NoiseKey:     keys.Noise,
	}, token, nil
}

// newAgentID returns a fresh id "dd-<env>-agent-<16 hex>". 64 random
// bits make a collision negligible; the store's primary key refuses one
// all the same.
func (s *Server) newAgentID() string {
	var b [8]byte
	rand.Read(b[:])
	return fmt.Sprintf("dd-%s-agent-%s", s.opts.Env, hex.EncodeToString(b[:]))
}

// newSecret returns a random 256-bit token with a recognisable prefix, so
// that secret scanners can spot a leaked one.
func newSecret(prefix string) string {
	var b [32]byte
	rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

func (s *Server) listAgents(w http.ResponseWriter, r *http.Request) error {
	agents, err := s.visibleAgents(r.Context())
	if err != nil {
		return err
	}
	out := make([]cpapi.Agent, 0, len(agents))
	for i := range agents {
		out = append(out, s.apiAgent(&agents[i]))
	}

	return httpapi.WriteJSON(w, http.StatusOK, out)
}

// visibleAgents lists the agents the caller may see: every agent for the
// fleet's admins and CI, a tenant's own agents for a tenant.
func (s *Server) visibleAgents(ctx context.Context) ([]fleet.Agent, error) {
	agents, err := s.store.List(ctx)
	if err != nil {
		return nil, err
	}
	c := callerOf(ctx)
	visible := agents[:0]
	for _, a := range agents {
		if c.sees(&a) {
			visible = append(visible, a)
		}
	}

	return visible, nil
}

// apiAgent converts a record for GET /api/agents. Times are RFC 3339 UTC
// in whole seconds, so that they also compare correctly as strings.
func (s *Server) apiAgent(a *fleet.Agent) cpapi.Agent {
	units := a.Units
	if units == nil {
		units = []agentapi.Unit{}
	}
	return cpapi.Agent{
		AgentID:      a.ID,
		VMName:       a.VMName,
		Hostname:     a.Hostname,
		URL:          a.URL,
		Status:       string(a.Status),
		RegisteredAt: apiTime(a.RegisteredAt),
		LastSeen:     apiTime(a.LastSeen),
		Attestation:  apiAttestation(&a.Attestation),
		Units:        units,
		UnitCount:    len(units),
		Tenant:       apiPrincipal(a.Tenant),
		TunnelID:     a.TunnelID,
		Exposed:      s.exposed(a),
	}
}

func apiTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func (s *Server) fleetPage(w http.ResponseWriter, r *http.Request) error {
	agents, err := s.visibleAgents(r.Context())
	if err != nil {
		return err
	}
	page := dashboard.FleetPage{Env: s.opts.Env, Hostname: s.opts.Hostname,
		Now: s.opts.Now(), RefreshSecs: s.refreshSecs(), Ingress: pageIngress(s.ingressHealth())}
	for i := range agents {
		page.Agents = append(page.Agents, pageAgent(&agents[i]))
	}

	return dashboard.Write(w, http.StatusOK, func(out io.Writer) error {
		return dashboard.RenderFleet(out, page)
	})
}

func (s *Server) agentPage(w http.ResponseWriter, r *http.Request) error {
	page, err := s.agentPageData(r)
	if err != nil {
		return err
	}
	return dashboard.Write(w, http.StatusOK, func(out io.Writer) error {
		return dashboard.RenderAgent(out, page)
	})
}

// agentPageWithError answers a refused tenant form with the agent page
// and the reason, with the status of the refusal.
func (s *Server) agentPageWithError(w http.ResponseWriter, r *http.Request, cause error) error {
	var he *httpapi.Error
	if !errors.As(cause, &he) {
		return cause
	}
	page, err := s.agentPageData(r)
	if err != nil {
		return err
	}

	// No refresh: it would reload the form's URL, not the page.
	page.RefreshSecs, page.Error = 0, he.Message
	return dashboard.Write(w, he.Status, func(out io.Writer) error {
		return dashboard.RenderAgent(out, page)
	})
}

// agentPageData reads the agent named by the {id} path value for its
// page, as the caller may see it.
func (s *Server) agentPageData(r *http.Request) (dashboard.AgentPage, error) {
	ctx := r.Context()
	c := callerOf(ctx)
	a, err := s.store.Get(ctx, r.PathValue("id"))
	if errors.Is(err, fleet.ErrNotFound) || (err == nil && !c.sees(&a)) {
		// The same answer for a hidden agent as for a missing one, so that
		// a tenant cannot probe for ids.
		return dashboard.AgentPage{}, httpapi.NotFound("no such agent")
	}
	if err != nil {
		return dashboard.AgentPage{}, err
	}

	page := dashboard.AgentPage{Env: s.opts.Env, Hostname: s.opts.Hostname,
		Now: s.opts.Now(), RefreshSecs: s.refreshSecs(), Agent: pageAgent(&a),
		CanAssign: c.role == roleAdmin}
	page.Agent.Exposed = s.exposed(&a)
	return page, nil
}

// refreshSecs reloads pages about as often as the collector refreshes the
// data, but not more than every 2 seconds.
func (s *Server) refreshSecs() int {
	return max(2, int(s.opts.ScrapeInterval/time.Second))
}

// pageIngress converts the control plane's tunnel state for the fleet
// page.
func pageIngress(h *cpapi.CPIngress) *dashboard.Ingress {
	if h == nil {
		return nil
	}

	in := &dashboard.Ingress{TunnelID: h.TunnelID, Serving: h.Serving, Fenced: h.Fenced,
		FencedReason: h.FencedReason, Connector: "none"}
	if c := h.Connector; c != nil {
		in.Connector, in.Restarts = string(c.State), c.Restarts
	}
	return in
}

func pageAgent(a *fleet.Agent) dashboard.Agent {
	return dashboard.Agent{
		ID:           a.ID,
		VMName:       a.VMName,
		Hostname:     a.Hostname,
		URL:          a.URL,
		Origin:       a.Origin,
		Status:       string(a.Status),
		RegisteredAt: a.RegisteredAt,
		LastSeen:     a.LastSeen,
		LastError:    a.LastError,
		Attestation: dashboard.Attestation{
			Type:       a.Attestation.Type,
			Verified:   a.Attestation.Verified,
			Status:     a.Attestation.Status,
			MRTD:       a.Attestation.MRTD,
			RTMR:       apiAttestation(&a.Attestation).RTMR,
			Debug:      a.Attestation.Measurements != nil && a.Attestation.Measurements.Debug,
			TCBStatus:  a.Attestation.TCBStatus,
			TCBDate:    a.Attestation.TCBDate,
			VerifiedAt: a.Attestation.VerifiedAt,
		},
		Units:  a.Units,
		Tenant: principalString(a.Tenant),
	}
}
