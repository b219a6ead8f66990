package cp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
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
//
// Every hostname has one owner. A registration or a set of claims is
// refused with 409 when one of the hostnames it would publish is the
// control plane's own or is held by an agent with another vm_name
// (checkHostnames), and when the provider finds the name's record held by
// another environment's tunnel or by a record that is no tunnel's
// (ingress.ErrHostnameTaken). Flattened names make such collisions easy
// to construct: agent "web" claiming "shop" and agent "web-shop" would
// both publish "web-shop.<domain>".

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
	if errors.Is(err, ingress.ErrHostnameTaken) {
		return "", takenElsewhere(err)
	}
	if err != nil {
		return "", httpapi.Upstream("creating the agent's tunnel failed",
			fmt.Errorf("creating tunnel for %s: %w", a.Hostname, err))
	}

	a.TunnelID, a.URL = t.ID, s.publicURL(a.Hostname)
	return t.Token, nil
}

// agentHostnames returns every hostname an agent at host publishes: its
// dashboard, each claim's, and its API.
func agentHostnames(host string, claims []ingress.Claim) []string {
	return ingress.AgentIngress(host, claims).Hostnames()
}

// hostnameConflict is the refusal of a hostname somebody else holds.
func hostnameConflict(err error, format string, args ...any) *httpapi.Error {
	return &httpapi.Error{Status: http.StatusConflict, Code: httpapi.CodeConflict,
		Message: fmt.Sprintf(format, args...), Err: err}
}

// takenElsewhere converts a provider's [ingress.ErrHostnameTaken]: the
// record belongs to another environment sharing the zone, or to no
// tunnel at all.
func takenElsewhere(err error) *httpapi.Error {
	return hostnameConflict(err, "a hostname is held outside this fleet (another "+
		"environment's tunnel or a record that is not a tunnel's)")
}

// checkOwnHostnames refuses hostnames the control plane publishes for
// itself: its dashboard and its shell.
func (s *Server) checkOwnHostnames(hostnames []string) error {
	own := ingress.ControlPlaneIngress(s.opts.Hostname).Hostnames()
	for _, h := range hostnames {
		if slices.Contains(own, h) {
			return hostnameConflict(nil, "hostname %s is the control plane's own", h)
		}
	}

	return nil
}

// checkHostnames refuses hostnames that the control plane publishes for
// itself or that another agent (a vm_name other than vmName) holds: its
// dashboard or API hostname, or a live agent's claim. A dead agent's
// record stays for the operator's view, but its claims cannot be served:
// the hostnames they give up are returned as released, for the caller to
// remove from the dead records once its change is made ([Server.release]),
// so that an agent coming back does not hold them too. An agent's earlier
// registration keeps nothing from its successor. Call it with regMu held,
// from [Server.reserveChecked], so that nothing else is published between
// the check and the change (reserve.go).
func (s *Server) checkHostnames(ctx context.Context, vmName string,
	hostnames []string) (released []releasedClaims, err error) {
	if err := s.checkOwnHostnames(hostnames); err != nil {
		return nil, err
	}

	var names []string
	for _, h := range hostnames {
		names = append(names, possibleHolders(h)...)
	}
	slices.Sort(names)
	holders, err := s.store.ByVMNames(ctx, slices.Compact(names))
	if err != nil {
		return nil, err
	}

	for i := range holders {
		a := &holders[i]
		if a.VMName == vmName || a.Hostname == "" {
			continue
		}
		keep, conflict := s.holds(a, hostnames)
		if conflict != "" {
			return nil, hostnameConflict(fmt.Errorf("held by agent %s (%s)", a.ID, a.VMName),
				"hostname %s is held by another agent", conflict)
		}
		if len(keep) != len(a.Claims) {
			released = append(released, releasedClaims{agentID: a.ID, hostnames: hostnames})
		}
	}
	return released, nil
}

// releasedClaims names a dead agent that gives up its claims of any of
// hostnames, which another agent takes over.
type releasedClaims struct {
	agentID   string
	hostnames []string
}

// holds checks agent a against hostnames: conflict is the first of them a
// holds for good (its dashboard or API hostname, or a claim while it
// lives), and keep are a's claims without those whose hostname a dead a
// gives up.
func (s *Server) holds(a *fleet.Agent, hostnames []string) (keep []ingress.Claim,
	conflict string) {
	own := agentHostnames(a.Hostname, nil)
	for _, h := range hostnames {
		if slices.Contains(own, h) {
			return nil, h
		}
	}

	dead := a.Status == fleet.StatusDead
	for _, c := range a.Claims {
		h := ingress.ExtraHostname(a.Hostname, c.Label)
		switch {
		case !slices.Contains(hostnames, h):
			keep = append(keep, c)
		case !dead:
			return nil, h
		}
	}
	return keep, ""
}

// release removes from dead agents' records the claims whose hostnames a
// change took over. It reads each record again, since the claims may have
// changed while the change was published; call it with regMu held. A
// failure is logged: the hostnames already serve the new holder, and a
// later check releases them again.
func (s *Server) release(ctx context.Context, released []releasedClaims) {
	for _, r := range released {
		keep, err := s.keptClaims(ctx, r)
		if err == nil {
			err = s.store.SetClaims(ctx, r.agentID, keep)
		}
		if err != nil {
			s.log.ErrorContext(ctx, "releasing a dead agent's claims failed",
				"agent_id", r.agentID, "err", err)
			continue
		}
		s.log.InfoContext(ctx, "dead agent's claims released", "agent_id", r.agentID,
			"kept", len(keep))
	}
}

// keptClaims returns the current claims of r's agent without those of
// r's hostnames.
func (s *Server) keptClaims(ctx context.Context, r releasedClaims) ([]ingress.Claim, error) {
	a, err := s.store.Get(ctx, r.agentID)
	if err != nil {
		return nil, err
	}

	keep := []ingress.Claim{}
	for _, c := range a.Claims {
		if !slices.Contains(r.hostnames, ingress.ExtraHostname(a.Hostname, c.Label)) {
			keep = append(keep, c)
		}
	}
	return keep, nil
}

// possibleHolders lists the VM names whose agent could hold hostname h,
// so that checking them by name costs one indexed read rather than a scan
// of the registry. An agent VM holds VM.parent, its API hostname and
// its claims' flattened names VM-LABEL.parent ([ingress.LabelHostname]),
// so h's first label is VM itself, VM followed by "-LABEL", or the API
// hostname of a VM whose "-agent-" marker became "-api-"
// ([ingress.AgentAPIHostname]).
func possibleHolders(h string) []string {
	first, _, _ := strings.Cut(h, ".")
	vms := []string{first}
	for i := range len(first) {
		if first[i] == '-' {
			vms = append(vms, first[:i])
		}
	}

	for i := 0; ; {
		j := strings.Index(first[i:], "-api-")
		if j < 0 {
			break
		}
		vms = append(vms, first[:i+j]+"-agent-"+first[i+j+len("-api-"):])
		i += j + 1
	}

	slices.Sort(vms)
	return slices.Compact(vms)
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
// reserved label, a bad port, a label claimed twice) are refused with 400,
// claims of a hostname somebody else holds with 409; neither changes
// anything.
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
	err := s.changeIngress(ctx, a, req.Claims, in)

	var he *httpapi.Error
	if errors.As(err, &he) && he.Status == http.StatusConflict {
		s.log.WarnContext(ctx, "agent ingress refused", "agent_id", a.ID, "err", err)
		s.record(ctx, audit.Event{Actor: audit.Agent(a.ID), Action: ActionIngressReplaced,
			Target: a.ID, Outcome: audit.OutcomeDenied, Details: map[string]any{
				"hostnames": in.Hostnames(), "reason": he.Message}})
	}
	if err != nil {
		return err
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

// changeIngress publishes in, with claims, as agent a's ingress, once its
// hostnames are free for a, and records the claims. a's VM name and those
// of the agents that could hold in's hostnames stay reserved meanwhile
// (reserve.go).
func (s *Server) changeIngress(ctx context.Context, a *fleet.Agent, claims []ingress.Claim,
	in ingress.Ingress) error {
	var released []releasedClaims
	res, err := s.reserveChecked(ctx, reservationKeys(a.VMName, in.Hostnames()), func() error {
		var err error
		released, err = s.checkHostnames(ctx, a.VMName, in.Hostnames())
		return err
	})
	if err != nil {
		return err
	}
	defer s.unreserve(res)

	if err := s.replaceIngress(ctx, a.ID, a.TunnelID, in); err != nil {
		return err
	}

	s.regMu.Lock()
	defer s.regMu.Unlock()

	err = s.store.SetClaims(ctx, a.ID, claims)
	if errors.Is(err, fleet.ErrNotFound) {
		// A registration of the same VM name replaced the record since
		// the credential was checked, and deletes its tunnel.
		return conflict("the agent was registered again; use the new credential")
	}
	if err != nil {
		return fmt.Errorf("storing claims of %s: %w", a.ID, err)
	}
	s.release(ctx, released)
	return nil
}

// replaceIngress publishes an agent's new ingress on its tunnel.
func (s *Server) replaceIngress(ctx context.Context, agentID, tunnelID string,
	in ingress.Ingress) error {
	err := s.opts.Ingress.ReplaceIngress(ctx, tunnelID, in)
	if errors.Is(err, ingress.ErrHostnameTaken) {
		return takenElsewhere(err)
	}
	if err != nil {
		return httpapi.Upstream("publishing the claims failed",
			fmt.Errorf("replacing ingress of %s: %w", agentID, err))
	}

	return nil
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
		hs = append(hs, agentHostnames(a.Hostname, a.Claims)...)
	}

	return hs
}
