package cp

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/websession"
	"github.com/devopsdefender/devopsdefender/internal/websession/websessiontest"
)

// matrixEnv is a control plane served over HTTP with GitHub sign-in (the
// local provider) and CI tokens from a local issuer, holding two agents:
// A (no tenant) and B (tenant dev-tenant).
type matrixEnv struct {
	*testEnv
	appURL string
	issuer *ghoidc.Issuer
	a, b   string // agent ids
	aToken string // agent A's credential
}

var (
	testOwner  = ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "acme", ID: 4242}
	tenantUser = ghoidc.Principal{Kind: ghoidc.KindUser, Name: websession.DevTenantLogin,
		ID: websession.DevTenantID}
)

// loopbackClient dials every host at 127.0.0.1, so "app.localhost:PORT"
// and "github.localhost:PORT" reach the test servers, and keeps cookies.
func loopbackClient(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}

	d := &net.Dialer{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, _ := net.SplitHostPort(addr)
		return d.DialContext(ctx, network, "127.0.0.1:"+port)
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial}, Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func portOf(l net.Listener) string { return strconv.Itoa(l.Addr().(*net.TCPAddr).Port) }

func newMatrixEnv(t *testing.T) *matrixEnv {
	t.Helper()
	ctx := context.Background()
	iss := httptest.NewUnstartedServer(nil)
	issuer, err := ghoidc.NewIssuer(ghoidc.IssuerOptions{URL: "http://127.0.0.1:" +
		portOf(iss.Listener), Audience: "fleet", MintSecret: "mint-secret-0123456789"})
	if err != nil {
		t.Fatal(err)
	}

	iss.Config.Handler = issuer.Handler()
	iss.Start()
	t.Cleanup(iss.Close)
	verifier, err := ghoidc.NewVerifier(ctx, ghoidc.VerifierOptions{Issuer: issuer.URL(),
		Audience: "fleet"})
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { verifier.Close() })

	e, appURL := newSessionEnv(t, websession.DevUsers(testOwner), func(o *Options) {
		o.CIVerifier = verifier
	})
	m := &matrixEnv{testEnv: e, appURL: appURL, issuer: issuer}
	ra, rb := e.register(t, "alpha"), e.register(t, "beta")
	m.a, m.b, m.aToken = ra.AgentID, rb.AgentID, ra.AgentToken
	if _, err := e.store.SetTenant(ctx, m.b, &tenantUser); err != nil {
		t.Fatal(err)
	}

	return m
}

// newSessionEnv is a control plane of testOwner on app.localhost that
// signs people in through a local GitHub with users; it returns the
// control plane's public URL.
func newSessionEnv(t *testing.T, users []websession.LocalUser,
	mutate func(*Options)) (*testEnv, string) {
	t.Helper()
	provider, err := websession.NewLocalProvider(websession.LocalProviderOptions{
		Env: fleetenv.Dev, ClientID: "cid", ClientSecret: "csecret-0123456789", Users: users})
	if err != nil {
		t.Fatal(err)
	}

	gh := httptest.NewServer(provider)
	t.Cleanup(gh.Close)
	ghURL := "http://github.localhost:" + portOf(gh.Listener)

	app := httptest.NewUnstartedServer(nil)
	appURL := "http://app.localhost:" + portOf(app.Listener)
	e := newTestEnv(t, func(o *Options) {
		o.Owner = testOwner
		o.Sessions, err = websession.New(context.Background(), websession.Options{
			DB: o.Store.Shared(), Env: fleetenv.Dev, PublicURL: appURL, Owner: testOwner,
			TenantAgents: TenantsOf(o.Store), HTTPClient: loopbackClient(t),
			GitHub: websession.GitHub{ClientID: "cid", ClientSecret: "csecret-0123456789",
				WebURL: ghURL, APIURL: ghURL, Local: true}})
		if err != nil {
			t.Fatal(err)
		}
		if mutate != nil {
			mutate(o)
		}
	})
	app.Config.Handler = e.srv.Handler()
	app.Start()
	t.Cleanup(app.Close)
	return e, appURL
}

// login signs a browser in as login through the local provider.
func (m *matrixEnv) login(t *testing.T, login string) *http.Client {
	t.Helper()
	c := loopbackClient(t)
	if err := websessiontest.SignIn(c, m.appURL, login); err != nil {
		t.Fatal(err)
	}
	return c
}

func (m *matrixEnv) ciToken(t *testing.T, owner string, id int64) string {
	t.Helper()
	tok, err := m.issuer.Mint(context.Background(), ghoidc.MintRequest{
		RepositoryOwner: owner, RepositoryOwnerID: id})
	if err != nil {
		t.Fatal(err)
	}

	return tok
}

// TestAuthorizationMatrix walks every route of the route table against
// every kind of caller, allowed and refused. Refused requests get a JSON
// 401 or 403 (pages send anonymous browsers to sign in) and change
// nothing.
func TestAuthorizationMatrix(t *testing.T) {
	m := newMatrixEnv(t)
	type callerSpec struct {
		client *http.Client
		bearer string
	}
	anon := loopbackClient(t)
	callers := map[string]callerSpec{
		"anyone":        {anon, ""},
		"admin token":   {anon, testAdminToken},
		"admin session": {m.login(t, websession.DevAdminLogin), ""},
		"tenant":        {m.login(t, websession.DevTenantLogin), ""},
		"fleet CI":      {anon, m.ciToken(t, testOwner.Name, testOwner.ID)},
		"tenant CI":     {anon, m.ciToken(t, tenantUser.Name, tenantUser.ID)},
		"foreign CI":    {anon, m.ciToken(t, "mallory", 666)},
		"agent A":       {anon, m.aToken},
	}

	order := []string{"anyone", "admin token", "admin session", "tenant", "fleet CI",
		"tenant CI", "foreign CI", "agent A"}
	setB := `{"tenant":{"kind":"user","name":"dev-tenant","id":2002}}`

	tests := []struct {
		method, path, body string
		want               []int // one per caller, in order
	}{
		{"GET", "/health", "", []int{200, 200, 200, 200, 200, 200, 200, 200}},
		{"POST", "/register/nonce", "", []int{200, 200, 200, 200, 200, 200, 200, 200}},
		{"POST", "/register", "{}", []int{400, 400, 400, 400, 400, 400, 400, 400}},
		{"POST", "/agents/" + m.a + "/nonce", "", []int{401, 401, 401, 401, 401, 401, 401, 200}},
		{"POST", "/agents/" + m.b + "/nonce", "", []int{401, 401, 401, 401, 401, 401, 401, 401}},
		{"POST", "/agents/" + m.a + "/attest", "{}", []int{401, 401, 401, 401, 401, 401, 401, 401}},
		{"GET", "/agents/" + m.a + "/config", "", []int{401, 401, 401, 401, 401, 401, 401, 200}},
		{"GET", "/agents/" + m.b + "/config", "", []int{401, 401, 401, 401, 401, 401, 401, 401}},
		{"POST", "/agents/" + m.a + "/audit", `{"entries":[]}`,
			[]int{401, 401, 401, 401, 401, 401, 401, 200}},
		{"POST", "/agents/" + m.a + "/ingress", `{"claims":[]}`,
			[]int{401, 401, 401, 401, 401, 401, 401, 200}},
		{"GET", "/api/agents", "", []int{401, 200, 200, 200, 200, 200, 403, 401}},
		{"POST", "/api/agents/" + m.b + "/tenant", setB,
			[]int{401, 200, 200, 403, 200, 403, 403, 401}},
		{"GET", "/api/audit", "", []int{401, 200, 200, 403, 403, 403, 403, 401}},
		{"GET", "/admin/cf/snapshot", "", []int{401, 200, 200, 403, 403, 403, 403, 401}},
		{"GET", "/admin/cf/map", "", []int{401, 200, 200, 403, 403, 403, 403, 401}},
		{"GET", "/", "", []int{303, 200, 200, 200, 403, 403, 403, 401}},
		{"GET", "/agent/" + m.a, "", []int{303, 200, 200, 404, 403, 403, 403, 401}},
		{"GET", "/agent/" + m.b, "", []int{303, 200, 200, 200, 403, 403, 403, 401}},
		// The agent page's form; a change sends the browser back to the page.
		{"POST", "/agent/" + m.b + "/tenant", "action=set&kind=user&name=dev-tenant&id=2002",
			[]int{401, 303, 303, 403, 403, 403, 403, 401}},
	}

	covered := map[string]bool{}
	for _, tt := range tests {
		pattern := tt.method + " " + tt.path
		for i, name := range order {
			c := callers[name]
			headBefore, _ := m.store.Audit().Head(context.Background())
			req, _ := http.NewRequest(tt.method, m.appURL+tt.path, strings.NewReader(tt.body))
			req.Header.Set("Accept", "text/html, application/json")

			switch {
			case strings.HasPrefix(tt.body, "{"):
				req.Header.Set("Content-Type", "application/json")
			case tt.body != "":
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}

			if c.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+c.bearer)
			}
			resp, err := c.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}

			var body map[string]any
			isJSON := strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json")
			if isJSON && resp.StatusCode >= 400 {
				json.NewDecoder(resp.Body).Decode(&body)
			}

			resp.Body.Close()
			if resp.StatusCode != tt.want[i] {
				t.Errorf("%s as %s = %d, want %d", pattern, name, resp.StatusCode, tt.want[i])
				continue
			}
			if resp.StatusCode == 401 || resp.StatusCode == 403 {
				if body["code"] == nil || body["message"] == nil {
					t.Errorf("%s as %s: refusal without a JSON {code, message}", pattern, name)
				}
				headAfter, _ := m.store.Audit().Head(context.Background())
				if headAfter != headBefore {
					t.Errorf("%s as %s: a refused request changed the audit log", pattern, name)
				}
			}

			if name == "anyone" && resp.StatusCode == 303 &&
				!strings.HasPrefix(resp.Header.Get("Location"), websession.LoginPath) {
				t.Errorf("%s as %s: redirected to %q, want the sign-in page", pattern, name,
					resp.Header.Get("Location"))
			}
		}
		covered[tt.method+" "+routeOf(tt.path, m)] = true
	}

	for _, rt := range m.srv.Routes() {
		if !covered[rt.Pattern] {
			t.Errorf("route %s (%s) is not in the matrix", rt.Pattern, rt.Rule.Name)
		}
	}

	if b, _ := m.store.Get(context.Background(), m.b); b.Tenant == nil || *b.Tenant != tenantUser {
		t.Errorf("agent B's tenant = %v after the walk, want %v", b.Tenant, tenantUser)
	}
}

// routeOf maps a concrete path back to its route pattern.
func routeOf(path string, m *matrixEnv) string {
	for _, id := range []string{m.a, m.b} {
		path = strings.Replace(path, id, "{id}", 1)
	}

	if path == "/" {
		return "/{$}"
	}
	return path
}

func TestTenantSeesOnlyItsAgents(t *testing.T) {
	m := newMatrixEnv(t)
	c := m.login(t, websession.DevTenantLogin)
	req, _ := http.NewRequest("GET", m.appURL+"/api/agents", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}

	var agents []cpapi.Agent
	json.NewDecoder(resp.Body).Decode(&agents)
	resp.Body.Close()
	if len(agents) != 1 || agents[0].AgentID != m.b {
		t.Fatalf("tenant lists %+v, want only agent B", agents)
	}

	want := &cpapi.Principal{Kind: "user", Name: websession.DevTenantLogin,
		ID: websession.DevTenantID}
	if got := agents[0].Tenant; got == nil || *got != *want {
		t.Errorf("listed tenant = %+v, want %+v", got, want)
	}

	// After sign-out the old cookie is refused.
	cookies := c.Jar.Cookies(mustURL(m.appURL))
	out, _ := http.NewRequest("POST", m.appURL+websession.LogoutPath, nil)
	if resp, err := c.Do(out); err != nil || resp.StatusCode >= 400 {
		t.Fatalf("logout: %v %v", resp, err)
	}

	replay, _ := http.NewRequest("GET", m.appURL+"/api/agents", nil)
	for _, ck := range cookies {
		replay.AddCookie(ck)
	}

	resp, err = loopbackClient(t).Do(replay)
	if err != nil {
		t.Fatal(err)
	}

	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("old cookie after logout = %d, want 401", resp.StatusCode)
	}
}

func TestTenantChangesAreAudited(t *testing.T) {
	m := newMatrixEnv(t)
	client := loopbackClient(t)
	do := func(body string) int {
		req, _ := http.NewRequest("POST", m.appURL+"/api/agents/"+m.a+"/tenant",
			strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}

		resp.Body.Close()
		return resp.StatusCode
	}

	bad := []string{`{}`, `{"tenant":{"kind":"user","name":"x","id":0}}`,
		`{"tenant":{"kind":"team","name":"x","id":1}}`, `{"tenant":null,"x":1}`,
		`{"tenant":{"kind":"org","name":"acme","id":4242}}`}
	for _, b := range bad {
		if code := do(b); code != 400 {
			t.Errorf("tenant body %s = %d, want 400", b, code)
		}
	}

	if code := do(`{"tenant":{"kind":"org","name":"globex","id":9}}`); code != 200 {
		t.Fatalf("set = %d", code)
	}
	if code := do(`{"tenant":null}`); code != 200 {
		t.Fatalf("clear = %d", code)
	}

	rec := m.do("GET", "/api/audit?agent="+m.a, "", admin())
	for _, want := range []string{`"action":"tenant_set"`, `"action":"tenant_cleared"`,
		`"tenant":"org:globex(9)"`, `"previous":"org:globex(9)"`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("audit lacks %s:\n%s", want, rec.Body)
		}
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestTenantLosesAgentWhenReassigned(t *testing.T) {
	m := newMatrixEnv(t)
	c := m.login(t, websession.DevTenantLogin)
	other := ghoidc.Principal{Kind: ghoidc.KindUser, Name: "someone-else", ID: 31337}
	if _, err := m.store.SetTenant(context.Background(), m.b, &other); err != nil {
		t.Fatal(err)
	}

	req, _ := http.NewRequest("GET", m.appURL+"/agent/"+m.b, nil)
	req.Header.Set("Accept", "text/html")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}

	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("former tenant's agent page = %d, want 404", resp.StatusCode)
	}
}

// TestOrgTenantLosesReassignedAgent: a member of an org tenant signs in
// and sees the org's agent; once an admin gives it to another org, the
// same session no longer sees it, and giving it back restores it.
func TestOrgTenantLosesReassignedAgent(t *testing.T) {
	ctx := context.Background()
	users := append(websession.DevUsers(testOwner), websession.LocalUser{Login: "carol", ID: 777,
		Orgs: []websession.LocalMembership{{Org: "t1", OrgID: 501, Role: "member"}}})
	e, appURL := newSessionEnv(t, users, nil)

	id := e.register(t, "beta").AgentID
	t1 := ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "t1", ID: 501}
	t2 := ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "t2", ID: 502}
	if _, err := e.store.SetTenant(ctx, id, &t1); err != nil {
		t.Fatal(err)
	}

	carol := loopbackClient(t)
	if err := websessiontest.SignIn(carol, appURL, "carol"); err != nil {
		t.Fatal(err)
	}

	sees := func() bool {
		resp, err := carol.Get(appURL + "/api/agents")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()

		var list []cpapi.Agent
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
			t.Fatal(err)
		}
		return len(list) == 1 && list[0].AgentID == id
	}

	for _, step := range []struct {
		tenant ghoidc.Principal
		want   bool
	}{{t1, true}, {t2, false}, {t1, true}} {
		if _, err := e.store.SetTenant(ctx, id, &step.tenant); err != nil {
			t.Fatal(err)
		}
		if got := sees(); got != step.want {
			t.Errorf("held by %s: a t1 member sees it = %v, want %v", step.tenant, got,
				step.want)
		}
	}
}

// TestPagesRedirectAnonymous: a page sends anyone without a session to
// sign in, curl's "*/*" included; only a client asking for JSON alone gets
// the 401 an API answers.
func TestPagesRedirectAnonymous(t *testing.T) {
	_, appURL := newSessionEnv(t, websession.DevUsers(testOwner), nil)
	c := loopbackClient(t)
	for _, tt := range []struct {
		accept string
		want   int
	}{
		{"", http.StatusSeeOther},
		{"*/*", http.StatusSeeOther},
		{"text/html,application/xhtml+xml", http.StatusSeeOther},
		{"text/html, application/json", http.StatusSeeOther},
		{"application/json", http.StatusUnauthorized},
	} {
		req, _ := http.NewRequest("GET", appURL+"/", nil)
		if tt.accept != "" {
			req.Header.Set("Accept", tt.accept)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET / with Accept %q = %d, want %d", tt.accept, resp.StatusCode, tt.want)
		}
		if tt.want == http.StatusSeeOther &&
			!strings.HasPrefix(resp.Header.Get("Location"), websession.LoginPath) {
			t.Errorf("Accept %q: redirected to %q", tt.accept, resp.Header.Get("Location"))
		}
	}
}
