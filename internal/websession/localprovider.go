package websession

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// Lifetimes of what the local provider hands out.
const (
	localCodeTTL  = 10 * time.Minute
	localTokenTTL = 8 * time.Hour
	maxLocalForm  = 16 << 10
)

// LocalProviderOptions configures [NewLocalProvider].
type LocalProviderOptions struct {
	// Env is the installation; production and staging are refused.
	// Required.
	Env fleetenv.Env

	// ClientID and ClientSecret are the OAuth app the broker must present.
	// Required.
	ClientID     string
	ClientSecret string

	// Users are the people one can sign in as. Required; see [DevUsers].
	Users []LocalUser

	// RedirectURLs, if set, are the callback URLs the provider redirects
	// to (a redirect_uri must start with one, as GitHub allows subpaths).
	// Empty allows any callback on a localhost name.
	RedirectURLs []string

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Logger receives one record per sign-in. Nil discards.
	Logger *slog.Logger
}

// LocalUser is a person of the local provider.
type LocalUser struct {
	Login string
	ID    int64
	// Note says on the sign-in page what the user is for.
	Note  string
	Orgs  []LocalMembership
	Repos []LocalRepo
}

// LocalMembership is an active org membership; Role is "admin" or
// "member", as GitHub names them.
type LocalMembership struct {
	Org   string
	OrgID int64
	Role  string
}

// LocalRepo is access to a repository ("owner/repo"): admin, or push.
type LocalRepo struct {
	Repo   string
	RepoID int64
	Admin  bool
}

// Logins and ids of the users [DevUsers] predefines. The ids are far from
// the dev fleet owner's, so they never collide with it.
const (
	DevAdminLogin    = "dev-admin"
	DevAdminID       = 2001
	DevTenantLogin   = "dev-tenant"
	DevTenantID      = 2002
	DevStrangerLogin = "dev-stranger"
	DevStrangerID    = 2003
)

// DevUsers returns the dev fleet's people for a fleet owned by owner: an
// admin who holds owner (that user itself for a user owner, an owner of
// the org, an admin of the repo), a tenant with no standing in owner (it
// becomes a tenant once an agent is assigned to user:dev-tenant(2002)),
// and a stranger, who is always refused.
func DevUsers(owner ghoidc.Principal) []LocalUser {
	admin := LocalUser{Login: DevAdminLogin, ID: DevAdminID, Note: "fleet administrator"}
	switch owner.Kind {
	case ghoidc.KindUser:
		admin.Login, admin.ID = owner.Name, owner.ID
	case ghoidc.KindOrg:
		admin.Orgs = []LocalMembership{{Org: owner.Name, OrgID: owner.ID, Role: "admin"}}
	case ghoidc.KindRepo:
		admin.Repos = []LocalRepo{{Repo: owner.Name, RepoID: owner.ID, Admin: true}}
	}

	return []LocalUser{
		admin,
		{Login: DevTenantLogin, ID: DevTenantID, Note: "tenant of the agents assigned to it"},
		{Login: DevStrangerLogin, ID: DevStrangerID, Note: "no access: refused"},
	}
}

// LocalProvider is a stand-in for github.com in dev mode: the OAuth web
// flow (/login/oauth/authorize, /login/oauth/access_token, with PKCE) and
// the API routes the broker calls (/user, /user/orgs,
// /user/memberships/orgs/{org}, /repos/{owner}/{repo}), all on one base
// URL. It keeps codes and tokens in memory and starts no goroutines.
type LocalProvider struct {
	opts  LocalProviderOptions
	users map[string]*LocalUser // by lowercase login
	log   *slog.Logger
	mux   *http.ServeMux
	cop   *http.CrossOriginProtection

	mu     sync.Mutex
	codes  map[string]localCode  // guarded by mu
	tokens map[string]localToken // guarded by mu
}

type localCode struct {
	login, redirectURI, challenge, method string
	expires                               time.Time
}

type localToken struct {
	login   string
	expires time.Time
}

// NewLocalProvider validates opts and returns a provider to serve.
func NewLocalProvider(opts LocalProviderOptions) (*LocalProvider, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("websession: local provider: %w", err)
	}

	if opts.Now == nil {
		opts.Now = time.Now
	}

	p := &LocalProvider{
		opts: opts, users: map[string]*LocalUser{}, log: opts.Logger,
		cop:   http.NewCrossOriginProtection(),
		codes: map[string]localCode{}, tokens: map[string]localToken{},
	}

	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}

	for i := range opts.Users {
		p.users[strings.ToLower(opts.Users[i].Login)] = &opts.Users[i]
	}
	p.routes()
	return p, nil
}

func (o *LocalProviderOptions) validate() error {
	if _, err := fleetenv.Parse(string(o.Env)); err != nil {
		return err
	}
	if err := o.Env.RequireReal("the local GitHub OAuth provider", true); err != nil {
		return err
	}

	var errs []error
	if o.ClientID == "" || o.ClientSecret == "" {
		errs = append(errs, errors.New("client id and secret are required"))
	}
	if len(o.Users) == 0 {
		errs = append(errs, errors.New("at least one user is required"))
	}

	seen := map[string]bool{}
	for _, u := range o.Users {
		_, err := ghoidc.ParsePrincipal("user", u.Login, fmt.Sprint(u.ID))
		if err != nil || seen[strings.ToLower(u.Login)] {
			errs = append(errs, fmt.Errorf("user %q (%d) is invalid or repeated", u.Login, u.ID))
		}
		seen[strings.ToLower(u.Login)] = true
	}
	return errors.Join(errs...)
}

func (p *LocalProvider) routes() {
	p.mux = http.NewServeMux()
	handle := func(pattern string, h httpapi.HandlerFunc) {
		p.mux.Handle(pattern, httpapi.Handle(p.log, h))
	}

	handle("GET /login/oauth/authorize", p.authorizePage)
	handle("POST /login/oauth/authorize", p.authorize)
	handle("POST /login/oauth/access_token", p.accessToken)
	handle("GET /user", p.api(p.user))
	handle("GET /user/orgs", p.api(p.userOrgs))
	handle("GET /user/memberships/orgs/{org}", p.api(p.membership))
	handle("GET /repos/{owner}/{repo}", p.api(p.repo))
}

// ServeHTTP serves the provider.
func (p *LocalProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mux.ServeHTTP(w, r)
}

// authorizeParams are the query (or form) parameters of the authorize
// step that travel from the page to its form.
var authorizeParams = []string{"client_id", "redirect_uri", "state", "scope",
	"code_challenge", "code_challenge_method"}

// checkAuthorize validates the client and the callback before anything is
// shown or redirected, like GitHub does: an unknown redirect_uri is an
// error page, never a redirect.
func (p *LocalProvider) checkAuthorize(v url.Values) error {
	if subtle.ConstantTimeCompare([]byte(v.Get("client_id")), []byte(p.opts.ClientID)) != 1 {
		return httpapi.BadRequest("unknown client_id")
	}
	if !p.redirectAllowed(v.Get("redirect_uri")) {
		return httpapi.BadRequest("redirect_uri is not registered for this app")
	}
	if m := v.Get("code_challenge_method"); m != "" && m != "S256" && m != "plain" {
		return httpapi.BadRequest("unsupported code_challenge_method")
	}
	return nil
}

func (p *LocalProvider) redirectAllowed(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.User != nil ||
		u.Host == "" {
		return false
	}

	if len(p.opts.RedirectURLs) == 0 {
		return isLocalhost(u.Hostname())
	}

	for _, prefix := range p.opts.RedirectURLs {
		if raw == prefix || strings.HasPrefix(raw, strings.TrimSuffix(prefix, "/")+"/") {
			return true
		}
	}
	return false
}

type providerData struct {
	Params map[string]string
	Users  []LocalUser
}

func (p *LocalProvider) authorizePage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if err := p.checkAuthorize(q); err != nil {
		return err
	}

	params := map[string]string{}
	for _, k := range authorizeParams {
		if v := q.Get(k); v != "" {
			params[k] = v
		}
	}

	// form-action is left open: the form's answer redirects to the
	// broker's callback on another origin.
	csp := "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
	return renderCSP(w, http.StatusOK, "provider.html",
		providerData{Params: params, Users: p.opts.Users}, csp)
}

// authorize signs the picked user in and redirects to the callback with a
// one-time code.
func (p *LocalProvider) authorize(w http.ResponseWriter, r *http.Request) error {
	if err := p.cop.Check(r); err != nil {
		return httpapi.Forbidden("cross-origin request refused")
	}

	r.Body = http.MaxBytesReader(w, r.Body, maxLocalForm)
	if err := r.ParseForm(); err != nil {
		return httpapi.BadRequest("invalid form")
	}

	f := r.PostForm
	if err := p.checkAuthorize(f); err != nil {
		return err
	}
	u, ok := p.users[strings.ToLower(f.Get("login"))]
	if !ok {
		return httpapi.BadRequest("unknown user")
	}

	code := randomToken()
	p.mu.Lock()
	p.pruneLocked()
	p.codes[code] = localCode{login: u.Login, redirectURI: f.Get("redirect_uri"),
		challenge: f.Get("code_challenge"), method: f.Get("code_challenge_method"),
		expires: p.opts.Now().Add(localCodeTTL)}
	p.mu.Unlock()
	p.log.InfoContext(r.Context(), "local provider sign-in", "login", u.Login)

	target, _ := url.Parse(f.Get("redirect_uri"))
	q := target.Query()
	q.Set("code", code)
	if st := f.Get("state"); st != "" {
		q.Set("state", st)
	}
	target.RawQuery = q.Encode()
	http.Redirect(w, r, target.String(), http.StatusFound)
	return nil
}

// accessToken redeems a code, as GitHub does: errors come back with
// status 200 and an "error" field, as JSON when asked, else form-encoded.
func (p *LocalProvider) accessToken(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxLocalForm)
	if err := r.ParseForm(); err != nil {
		return httpapi.BadRequest("invalid form")
	}

	f := r.PostForm
	id, secret, basic := r.BasicAuth()
	if !basic {
		id, secret = f.Get("client_id"), f.Get("client_secret")
	}
	if subtle.ConstantTimeCompare([]byte(id), []byte(p.opts.ClientID)) != 1 ||
		subtle.ConstantTimeCompare([]byte(secret), []byte(p.opts.ClientSecret)) != 1 {
		return tokenReply(w, r, url.Values{"error": {"incorrect_client_credentials"}})
	}

	login, ok := p.redeem(f)
	if !ok {
		return tokenReply(w, r, url.Values{"error": {"bad_verification_code"},
			"error_description": {"The code passed is incorrect or expired."}})
	}

	tok := "gho_" + randomToken()
	p.mu.Lock()
	p.tokens[tok] = localToken{login: login, expires: p.opts.Now().Add(localTokenTTL)}
	p.mu.Unlock()
	return tokenReply(w, r, url.Values{"access_token": {tok}, "token_type": {"bearer"},
		"scope": {"read:org"}})
}

// redeem takes the code out (codes are single-use, even when the rest of
// the request is wrong) and checks redirect_uri and the PKCE verifier.
func (p *LocalProvider) redeem(f url.Values) (login string, ok bool) {
	p.mu.Lock()
	c, found := p.codes[f.Get("code")]
	delete(p.codes, f.Get("code"))
	p.mu.Unlock()

	switch {
	case !found || !p.opts.Now().Before(c.expires):
		return "", false
	case f.Get("redirect_uri") != "" && f.Get("redirect_uri") != c.redirectURI:
		return "", false
	case c.challenge != "" && !pkceMatches(c.challenge, c.method, f.Get("code_verifier")):
		return "", false
	}
	return c.login, true
}

func pkceMatches(challenge, method, verifier string) bool {
	if verifier == "" {
		return false
	}

	want := verifier
	if method != "plain" {
		sum := sha256.Sum256([]byte(verifier))
		want = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(challenge)) == 1
}

func tokenReply(w http.ResponseWriter, r *http.Request, v url.Values) error {
	w.Header().Set("Cache-Control", "no-store")
	if strings.Contains(r.Header.Get("Accept"), "json") {
		m := map[string]string{}
		for k := range v {
			m[k] = v.Get(k)
		}
		return httpapi.WriteJSON(w, http.StatusOK, m)
	}

	w.Header().Set("Content-Type", "application/x-www-form-urlencoded")
	_, err := w.Write([]byte(v.Encode()))
	return err
}

// api authenticates an API call by its token, as GitHub accepts it
// ("Bearer" or "token").
func (p *LocalProvider) api(h func(w http.ResponseWriter, r *http.Request,
	u *LocalUser) error) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		auth := r.Header.Get("Authorization")
		tok := httpapi.BearerToken(r)
		if rest, ok := strings.CutPrefix(auth, "token "); ok {
			tok = strings.TrimSpace(rest)
		}

		p.mu.Lock()
		t, ok := p.tokens[tok]
		p.mu.Unlock()
		if !ok || tok == "" || !p.opts.Now().Before(t.expires) {
			return apiReply(w, http.StatusUnauthorized,
				map[string]string{"message": "Bad credentials"})
		}

		return h(w, r, p.users[strings.ToLower(t.login)])
	}
}

func apiReply(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

func notFound(w http.ResponseWriter) error {
	return apiReply(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
}

func (p *LocalProvider) user(w http.ResponseWriter, r *http.Request, u *LocalUser) error {
	return apiReply(w, http.StatusOK, map[string]any{
		"login": u.Login, "id": u.ID, "type": "User", "name": u.Login})
}

func (p *LocalProvider) userOrgs(w http.ResponseWriter, r *http.Request, u *LocalUser) error {
	orgs := []apiAccount{}
	for _, m := range u.Orgs {
		orgs = append(orgs, apiAccount{Login: m.Org, ID: m.OrgID})
	}
	return apiReply(w, http.StatusOK, orgs)
}

func (p *LocalProvider) membership(w http.ResponseWriter, r *http.Request, u *LocalUser) error {
	for _, m := range u.Orgs {
		if strings.EqualFold(m.Org, r.PathValue("org")) {
			return apiReply(w, http.StatusOK, map[string]any{
				"state": "active", "role": m.Role,
				"organization": apiAccount{Login: m.Org, ID: m.OrgID},
				"user":         apiAccount{Login: u.Login, ID: u.ID},
			})
		}
	}
	return notFound(w)
}

func (p *LocalProvider) repo(w http.ResponseWriter, r *http.Request, u *LocalUser) error {
	name := r.PathValue("owner") + "/" + r.PathValue("repo")
	for _, rp := range u.Repos {
		if strings.EqualFold(rp.Repo, name) {
			return apiReply(w, http.StatusOK, map[string]any{
				"id": rp.RepoID, "full_name": rp.Repo,
				"permissions": map[string]bool{"admin": rp.Admin, "push": true, "pull": true},
			})
		}
	}
	return notFound(w)
}

// pruneLocked drops expired codes and tokens, so memory stays bounded by
// what was handed out in the last few hours.
func (p *LocalProvider) pruneLocked() {
	now := p.opts.Now()
	for k, c := range p.codes {
		if !now.Before(c.expires) {
			delete(p.codes, k)
		}
	}

	for k, t := range p.tokens {
		if !now.Before(t.expires) {
			delete(p.tokens, k)
		}
	}
}

func randomToken() string {
	var b [24]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
