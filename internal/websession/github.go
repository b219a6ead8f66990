package websession

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
)

// Standing is a person's place in a principal.
type Standing int

// The standings, weakest first.
const (
	StandingNone   Standing = iota // not part of it
	StandingMember                 // org member (any role), or repo access below admin
	StandingAdmin                  // the user itself, an org owner, or a repo admin
)

// Identity is a GitHub user proven by a sign-in or device approval.
type Identity struct {
	Login string
	ID    int64

	// Standing looks up the person's place in p with their own GitHub
	// token. It is set only while the sign-in is being classified.
	Standing func(ctx context.Context, p ghoidc.Principal) (Standing, error)
}

// Holds reports whether the person holds p as a tenant principal: is that
// user, is an active member of that org, or is an admin of that repo.
func (id Identity) Holds(ctx context.Context, p ghoidc.Principal) (bool, error) {
	if p.Kind == ghoidc.KindUser {
		return p.ID == id.ID, nil
	}

	if id.Standing == nil {
		return false, errors.New("websession: identity has no GitHub token")
	}
	st, err := id.Standing(ctx, p)
	if err != nil {
		return false, err
	}

	if p.Kind == ghoidc.KindRepo {
		return st >= StandingAdmin, nil
	}
	return st >= StandingMember, nil
}

// TenantsFunc answers which agents the person holds as tenant, typically
// by checking each agent's tenant principal with [Identity.Holds].
type TenantsFunc func(ctx context.Context, who Identity) (agents []string, err error)

// Rule classifies a signed-in person.
type Rule struct {
	// Owner is the fleet owner principal.
	Owner ghoidc.Principal
	// OrgAdminsOnly makes only org owners fleet admins of an org owner.
	OrgAdminsOnly bool
	// TenantAgents names the agents a person holds as tenant; nil means
	// nobody is a tenant.
	TenantAgents TenantsFunc
}

// Classification is the outcome of [Rule.Classify]. An empty Role means
// nobody: the person gets no session.
type Classification struct {
	Role   Role
	Agents []string
}

// Classify decides whether who is a fleet admin, a tenant, or nobody.
// Fleet admin: the person is the owner user, an active member of the owner
// org (an owner of it with OrgAdminsOnly), or an admin of the owner repo.
// Tenant: TenantAgents names at least one agent. Errors (GitHub
// unreachable, the callback failing) are returned, never read as a role.
func (r Rule) Classify(ctx context.Context, who Identity) (Classification, error) {
	admin, err := r.isAdmin(ctx, who)
	if err != nil {
		return Classification{}, fmt.Errorf("checking fleet owner: %w", err)
	}
	if admin {
		return Classification{Role: RoleAdmin}, nil
	}

	if r.TenantAgents == nil {
		return Classification{}, nil
	}
	agents, err := r.TenantAgents(ctx, who)
	if err != nil {
		return Classification{}, fmt.Errorf("looking up tenancy: %w", err)
	}
	if len(agents) == 0 {
		return Classification{}, nil
	}
	return Classification{Role: RoleTenant, Agents: agents}, nil
}

func (r Rule) isAdmin(ctx context.Context, who Identity) (bool, error) {
	if r.Owner.Kind == ghoidc.KindUser {
		return r.Owner.ID == who.ID, nil
	}

	if who.Standing == nil {
		return false, errors.New("identity has no GitHub token")
	}
	st, err := who.Standing(ctx, r.Owner)
	if err != nil {
		return false, err
	}

	if r.Owner.Kind == ghoidc.KindOrg && !r.OrgAdminsOnly {
		return st >= StandingMember, nil
	}
	return st >= StandingAdmin, nil
}

// maxAPIBody bounds a GitHub API response.
const maxAPIBody = 1 << 20

// githubAPI calls GitHub's REST API with one user's token. The token is
// never logged.
type githubAPI struct {
	base   string
	client *http.Client
	token  string
}

// apiUser is the part of GET /user we read.
type apiUser struct {
	Login string `json:"login"`
	ID    int64  `json:"id"`
}

// apiAccount is an org or user as nested in API answers.
type apiAccount struct {
	Login string `json:"login"`
	ID    int64  `json:"id"`
}

// apiMembership is GET /user/memberships/orgs/{org}.
type apiMembership struct {
	State        string     `json:"state"`
	Role         string     `json:"role"`
	Organization apiAccount `json:"organization"`
}

// apiRepo is the part of GET /repos/{owner}/{repo} we read.
type apiRepo struct {
	ID          int64  `json:"id"`
	FullName    string `json:"full_name"`
	Permissions struct {
		Admin bool `json:"admin"`
		Push  bool `json:"push"`
		Pull  bool `json:"pull"`
	} `json:"permissions"`
}

// user returns the token's user.
func (g *githubAPI) user(ctx context.Context) (apiUser, error) {
	var u apiUser
	found, err := g.get(ctx, "/user", &u)
	if err != nil {
		return apiUser{}, err
	}

	if !found || u.Login == "" || u.ID <= 0 {
		return apiUser{}, errors.New("GET /user: no user")
	}
	return u, nil
}

// standing looks up the user's place in p. Names are checked by ids too,
// so a renamed or re-registered org or repo does not count.
func (g *githubAPI) standing(ctx context.Context, p ghoidc.Principal) (Standing, error) {
	switch p.Kind {
	case ghoidc.KindOrg:
		return g.orgStanding(ctx, p)
	case ghoidc.KindRepo:
		return g.repoStanding(ctx, p)
	}
	return StandingNone, fmt.Errorf("no standing lookup for %s principals", p.Kind)
}

// orgStanding reads the user's own membership, which GitHub shows whether
// it is public or private (unlike /orgs/{org}/public_members, which the
// reference used, auth.md §7.7).
func (g *githubAPI) orgStanding(ctx context.Context, p ghoidc.Principal) (Standing, error) {
	var m apiMembership
	found, err := g.get(ctx, "/user/memberships/orgs/"+url.PathEscape(p.Name), &m)
	if err != nil || !found {
		return StandingNone, err
	}

	if m.State != "active" || m.Organization.ID != p.ID {
		return StandingNone, nil
	}
	if m.Role == "admin" {
		return StandingAdmin, nil
	}
	return StandingMember, nil
}

// repoStanding reads the repository as the user sees it: its permissions
// say what the user may do. Being able to read a public repo is not
// enough (auth.md §7.7).
func (g *githubAPI) repoStanding(ctx context.Context, p ghoidc.Principal) (Standing, error) {
	owner, name, _ := strings.Cut(p.Name, "/")
	var repo apiRepo
	found, err := g.get(ctx, "/repos/"+url.PathEscape(owner)+"/"+url.PathEscape(name), &repo)
	if err != nil || !found || repo.ID != p.ID {
		return StandingNone, err
	}

	switch {
	case repo.Permissions.Admin:
		return StandingAdmin, nil
	case repo.Permissions.Push:
		return StandingMember, nil
	}
	return StandingNone, nil
}

// get fetches path into v. A 404 or 403 (GitHub hides what a token may
// not see behind either) is found=false; any other failure is an error.
func (g *githubAPI) get(ctx context.Context, path string, v any) (found bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.base+path, nil)
	if err != nil {
		return false, fmt.Errorf("GET %s: %w", path, err)
	}

	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("Authorization", "Bearer "+g.token)
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	req.Header.Set("User-Agent", "devopsdefender")

	resp, err := g.client.Do(req)
	if err != nil {
		return false, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		return false, nil
	case resp.StatusCode != http.StatusOK:
		return false, fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}

	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIBody))
	if err != nil {
		return false, fmt.Errorf("GET %s: reading: %w", path, err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return false, fmt.Errorf("GET %s: decoding: %w", path, err)
	}
	return true, nil
}
