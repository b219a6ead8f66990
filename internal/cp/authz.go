package cp

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/websession"
)

// Authorization. Every route of the control plane names exactly one rule
// in the route table (routes.go), and only [Server.authorize] applies
// them, so the README's matrix and the code cannot drift apart. Being on
// loopback earns nothing: a tunnel daemon connects from loopback on behalf
// of anyone (cp.md §10.1).

// role is what a caller proved to be.
type role int

const (
	roleAnyone   role = iota // no credential
	roleAdmin                // the admin token, or a fleet admin's session
	roleTenant               // a person holding some agents as tenant
	roleFleetCI              // a CI job of the fleet owner principal
	roleTenantCI             // a CI job of some agent's tenant principal
)

// caller is the resolved identity of a request.
type caller struct {
	role  role
	actor audit.Actor
	// agents are the agents a tenant or tenant CI holds.
	agents map[string]bool
	// userID is a signed-in person's GitHub id; zero otherwise.
	userID int64
}

// sees reports whether the caller may see agent a.
func (c *caller) sees(a *fleet.Agent) bool {
	switch c.role {
	case roleAdmin, roleFleetCI:
		return true
	case roleTenant, roleTenantCI:
		// A session lists what its person held at sign-in, each agent with
		// the principal it was held under; the agent's tenant may have
		// changed since, and a holding under another principal is no
		// holding. A user tenant is also checked again by id.
		// TODO(#4): org and repo membership is read at sign-in only: a
		// person who leaves the org keeps its agents until the session ends.
		if a.Tenant == nil || !c.agents[holding(a.ID, *a.Tenant)] {
			return false
		}
		return c.role == roleTenantCI || a.Tenant.Kind != ghoidc.KindUser ||
			a.Tenant.ID == c.userID
	}

	return false
}

// holding names agent id held under tenant: what a caller's agents set
// and a session's agent list record.
func holding(id string, tenant ghoidc.Principal) string {
	return id + " " + tenant.String()
}

// rule admits some roles to a route.
type rule struct {
	// Name is how the README's authorization matrix names the rule.
	Name  string
	roles []role
	// page: an anonymous browser is sent to sign in instead of a 401.
	page bool
	// agent: the caller is the agent named by the {id} path value,
	// proven by its agent credential.
	agent bool
}

var (
	ruleAnyone = rule{Name: "anyone"}
	// ruleAttested: anyone may ask; the request itself must carry
	// evidence that the control plane appraises.
	ruleAttested = rule{Name: "attested agent (evidence in the request)"}
	ruleAgent    = rule{Name: "the agent itself (agent credential)", agent: true}
	ruleAdmin    = rule{Name: "fleet admin", roles: []role{roleAdmin}}
	ruleAdminCI  = rule{Name: "fleet admin, fleet CI", roles: []role{roleAdmin, roleFleetCI}}
	ruleViewer   = rule{Name: "fleet admin, fleet CI, tenant, tenant CI (own agents only)",
		roles: []role{roleAdmin, roleFleetCI, roleTenant, roleTenantCI}}
	rulePage = rule{Name: "fleet admin, tenant (own agents only); others sign in",
		roles: []role{roleAdmin, roleTenant}, page: true}
)

func (r rule) public() bool { return r.roles == nil && !r.agent }

type callerKey struct{}
type agentKey struct{}

func callerOf(ctx context.Context) *caller {
	c, _ := ctx.Value(callerKey{}).(*caller)
	if c == nil {
		return &caller{}
	}
	return c
}

func agentOf(ctx context.Context) *fleet.Agent {
	a, _ := ctx.Value(agentKey{}).(*fleet.Agent)
	return a
}

// authorize wraps h with rule: the request reaches h only if its caller
// is admitted, and h finds the caller (or the agent) in the context.
func (s *Server) authorize(ru rule, h httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if ru.public() {
			return h(w, r)
		}
		if ru.agent {
			a, err := s.authenticateAgent(r)
			if err != nil {
				return err
			}
			return h(w, r.WithContext(context.WithValue(r.Context(), agentKey{}, a)))
		}

		c, err := s.identify(r)
		if err != nil {
			return err
		}
		if c.role == roleAnyone {
			return s.refuseAnonymous(w, r, ru)
		}

		for _, allowed := range ru.roles {
			if c.role == allowed {
				return h(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
			}
		}

		return httpapi.Forbidden("this route is for: " + ru.Name)
	}
}

// refuseAnonymous sends a browser asking for a page to sign in, and
// answers anything else with a 401.
func (s *Server) refuseAnonymous(w http.ResponseWriter, r *http.Request, ru rule) error {
	if ru.page && s.opts.Sessions != nil && r.Method == http.MethodGet && !wantsJSON(r) {
		http.Redirect(w, r, s.opts.Sessions.LoginURL(r.URL.RequestURI()), http.StatusSeeOther)
		return nil
	}

	w.Header().Set("WWW-Authenticate", `Bearer realm="devopsdefender"`)
	return httpapi.Unauthorized("sign in, or send a bearer token")
}

// wantsJSON reports whether the client asked for JSON and not for HTML,
// as scripts do; a browser, or curl with its "*/*", gets the page's
// answer instead.
func wantsJSON(r *http.Request) bool {
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "application/json") && !strings.Contains(accept, "text/html")
}

// authenticateAgent checks the agent credential against the {id} path
// value: an agent's token reaches only its own record.
func (s *Server) authenticateAgent(r *http.Request) (*fleet.Agent, error) {
	a, err := s.store.AuthenticateAgent(r.Context(), r.PathValue("id"), httpapi.BearerToken(r))
	if errors.Is(err, fleet.ErrBadToken) {
		return nil, httpapi.Unauthorized("agent credential refused")
	}
	if err != nil {
		return nil, err
	}

	return &a, nil
}

// identify resolves the request's credential: the admin token, a session
// (bearer or cookie), or a GitHub Actions OIDC token.
func (s *Server) identify(r *http.Request) (*caller, error) {
	tok := httpapi.BearerToken(r)
	switch {
	case tok != "" && s.isAdminToken(tok):
		return &caller{role: roleAdmin, actor: audit.System("admin-token")}, nil
	case tok != "" && !websession.IsSessionToken(tok):
		return s.identifyCI(r.Context(), tok)
	}

	if s.opts.Sessions == nil {
		if tok != "" {
			return nil, httpapi.Unauthorized("invalid token")
		}
		return &caller{}, nil
	}

	sess, err := s.opts.Sessions.Authenticate(r)
	switch {
	case err == nil:
		return s.sessionCaller(r.Context(), sess)
	case errors.Is(err, websession.ErrCrossOrigin):
		return nil, httpapi.Forbidden("cross-origin request refused")
	case errors.Is(err, websession.ErrNoSession), errors.Is(err, websession.ErrInvalidSession):
		if tok != "" {
			return nil, httpapi.Unauthorized("invalid or revoked token")
		}
		return &caller{}, nil
	}

	return nil, err
}

func (s *Server) sessionCaller(ctx context.Context, sess *websession.Session) (*caller, error) {
	actor := audit.User(sess.Login, sess.UserID)
	if sess.IsAdmin() {
		return &caller{role: roleAdmin, actor: actor}, nil
	}
	held := map[string]bool{}
	for _, id := range sess.Agents {
		held[id] = true
	}

	return &caller{role: roleTenant, actor: actor, agents: held, userID: sess.UserID}, nil
}

// identifyCI verifies a GitHub Actions OIDC token and classifies its
// principal as the fleet owner's CI or some tenant's CI. A valid token of
// anyone else is a 403.
func (s *Server) identifyCI(ctx context.Context, tok string) (*caller, error) {
	if s.opts.CIVerifier == nil {
		return nil, httpapi.Unauthorized("invalid token")
	}

	claims, err := s.opts.CIVerifier.Verify(ctx, tok)
	if err != nil {
		return nil, ghoidc.HTTPError(err)
	}
	actor := audit.CI(s.opts.Owner.String(), claims.Repository, claims.SHA)
	if s.opts.Owner.Matches(claims) {
		return &caller{role: roleFleetCI, actor: actor}, nil
	}

	agents, err := s.store.List(ctx)
	if err != nil {
		return nil, err
	}
	held := map[string]bool{}
	for _, a := range agents {
		if a.Tenant != nil && a.Tenant.Matches(claims) {
			held[holding(a.ID, *a.Tenant)] = true
			actor = audit.CI(a.Tenant.String(), claims.Repository, claims.SHA)
		}
	}

	if len(held) == 0 {
		return nil, httpapi.Forbidden("the token's repository is neither the fleet owner's " +
			"nor a tenant's")
	}
	return &caller{role: roleTenantCI, actor: actor, agents: held}, nil
}

// isAdminToken compares tok with the admin token in constant time.
func (s *Server) isAdminToken(tok string) bool {
	if tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], s.adminHash[:]) == 1
}

// TenantsOf answers websession's question at sign-in from the registry:
// which agents does this person hold as tenant, and under which principal
// (a user, or an org or repo the person belongs to), so that a later
// reassignment to another principal ends the holding at once.
func TenantsOf(store *fleet.Store) websession.TenantsFunc {
	return func(ctx context.Context, who websession.Identity) ([]string, error) {
		return tenantAgents(ctx, store, who)
	}
}

func tenantAgents(ctx context.Context, store *fleet.Store, who websession.Identity) ([]string, error) {
	agents, err := store.List(ctx)
	if err != nil {
		return nil, err
	}
	var held []string
	for _, a := range agents {
		if a.Tenant == nil {
			continue
		}

		ok, err := who.Holds(ctx, *a.Tenant)
		if err != nil {
			return nil, err
		}
		if ok {
			held = append(held, holding(a.ID, *a.Tenant))
		}
	}

	return held, nil
}
