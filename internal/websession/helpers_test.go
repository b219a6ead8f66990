package websession

import (
	"context"
	"database/sql"
	"encoding/json"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/sqldb"

	_ "modernc.org/sqlite"
)

var testOwner = ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "devopsdefender-dev", ID: 1001}

const (
	testClientID     = "dev-client"
	testClientSecret = "dev-client-secret"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func openDB(t *testing.T) *sql.DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "web.db")
	db, err := sql.Open("sqlite", path+"?_txlock=immediate&_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// openShared wraps a fresh database as the registry shares it.
func openShared(t *testing.T) *sqldb.DB {
	t.Helper()
	d := sqldb.New(openDB(t))
	// Cleanups run last first: this closes before the database.
	t.Cleanup(func() { d.Close() })
	return d
}

// localhostClient dials every host at 127.0.0.1 on the URL's port, so
// that "app.localhost:PORT" and "github.localhost:PORT" reach the test
// servers. It does not follow redirects: tests check each hop.
func localhostClient(jar http.CookieJar) *http.Client {
	dialer := &net.Dialer{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
	}

	noFollow := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &http.Client{Transport: &http.Transport{DialContext: dial}, Jar: jar,
		Timeout: 10 * time.Second, CheckRedirect: noFollow}
}

// fleet is a control plane serving the broker, a local GitHub, and a
// protected route /private that echoes the session as JSON.
type fleet struct {
	t        *testing.T
	clock    *clock
	db       *sqldb.DB
	svc      *Service
	provider *LocalProvider
	appURL   string
	ghURL    string

	mu      sync.Mutex
	tenants map[string]ghoidc.Principal // agent id → tenant principal; guarded by mu
	events  []Event                     // guarded by mu
}

func newFleet(t *testing.T, users []LocalUser, tweak ...func(*Options)) *fleet {
	t.Helper()
	f := &fleet{t: t, clock: newClock(), db: openShared(t), tenants: map[string]ghoidc.Principal{}}
	provider, err := NewLocalProvider(LocalProviderOptions{Env: fleetenv.Dev,
		ClientID: testClientID, ClientSecret: testClientSecret, Users: users, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}

	f.provider = provider
	gh := httptest.NewServer(provider)
	t.Cleanup(gh.Close)
	f.ghURL = "http://github.localhost:" + port(t, gh.Listener)

	app := httptest.NewUnstartedServer(nil)
	f.appURL = "http://app.localhost:" + port(t, app.Listener)
	opts := Options{
		DB: f.db, Env: fleetenv.Dev, PublicURL: f.appURL, Owner: testOwner,
		TenantAgents: f.tenantAgents,
		GitHub: GitHub{ClientID: testClientID, ClientSecret: testClientSecret,
			WebURL: f.ghURL, APIURL: f.ghURL, Local: true},
		HTTPClient: localhostClient(nil), Now: f.clock.Now,
		OnEvent: func(_ context.Context, e Event) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.events = append(f.events, e)
		},
	}
	for _, fn := range tweak {
		fn(&opts)
	}

	f.svc, err = New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}

	mux := http.NewServeMux()
	f.svc.Mount(mux)
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(FromContext(r.Context()))
	})
	mux.Handle("/private", f.svc.RequireSession(echo))
	app.Config.Handler = mux
	app.Start()
	t.Cleanup(app.Close)
	return f
}

func port(t *testing.T, l net.Listener) string {
	_, p, err := net.SplitHostPort(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tenantAgents is the TenantsFunc of the test fleet: the agents whose
// tenant principal the person holds.
func (f *fleet) tenantAgents(ctx context.Context, who Identity) ([]string, error) {
	f.mu.Lock()
	tenants := make(map[string]ghoidc.Principal, len(f.tenants))
	for k, v := range f.tenants {
		tenants[k] = v
	}
	f.mu.Unlock()

	var agents []string
	for agent, p := range tenants {
		ok, err := who.Holds(ctx, p)
		if err != nil {
			return nil, err
		}
		if ok {
			agents = append(agents, agent)
		}
	}
	return agents, nil
}

func (f *fleet) setTenant(agent string, p ghoidc.Principal) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tenants[agent] = p
}

func (f *fleet) recorded() []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Event(nil), f.events...)
}

// browser is a cookie-keeping client.
type browser struct {
	f *fleet
	c *http.Client
}

func (f *fleet) browser() *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return &browser{f: f, c: localhostClient(jar)}
}

// do sends a request. A form body is posted form-encoded; hdr adds
// headers, e.g. Origin or Accept.
func (b *browser) do(method, target string, form url.Values, hdr ...string) *http.Response {
	b.f.t.Helper()
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}

	req, err := http.NewRequest(method, target, body)
	if err != nil {
		b.f.t.Fatal(err)
	}

	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}

	resp, err := b.c.Do(req)
	if err != nil {
		b.f.t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// getJSON fetches target with Accept: application/json into v (if not
// nil) and returns the status.
func (b *browser) getJSON(target string, v any, hdr ...string) int {
	b.f.t.Helper()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		b.f.t.Fatal(err)
	}

	req.Header.Set("Accept", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}

	resp, err := b.c.Do(req)
	if err != nil {
		b.f.t.Fatal(err)
	}

	defer resp.Body.Close()
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			b.f.t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// startLogin runs GET /auth/github/start and the provider's page, and
// returns the authorize URL's query for the pick-a-user form.
func (b *browser) startLogin(returnTo string) url.Values {
	t := b.f.t
	t.Helper()
	resp := b.do("GET", b.f.appURL+StartPath+"?"+url.Values{"return_to": {returnTo}}.Encode(), nil)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("start: status %d, want 302", resp.StatusCode)
	}

	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(loc.String(), b.f.ghURL+"/login/oauth/authorize?") {
		t.Fatalf("start redirected to %q, want the local provider", loc)
	}

	if page := b.do("GET", loc.String(), nil); page.StatusCode != http.StatusOK {
		t.Fatalf("authorize page: status %d", page.StatusCode)
	}
	return loc.Query()
}

// pick posts the provider's form as login and returns the callback URL
// the provider redirects to.
func (b *browser) pick(q url.Values, login string) string {
	t := b.f.t
	t.Helper()
	form := url.Values{"login": {login}}
	for _, k := range authorizeParams {
		if v := q.Get(k); v != "" {
			form.Set(k, v)
		}
	}

	resp := b.do("POST", b.f.ghURL+"/login/oauth/authorize", form, "Origin", b.f.ghURL)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("provider authorize: status %d, want 302", resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

// login signs in as login and returns the callback's response.
func (b *browser) login(login, returnTo string) *http.Response {
	b.f.t.Helper()
	callback := b.pick(b.startLogin(returnTo), login)
	return b.do("GET", callback, nil, "Accept", "text/html")
}

// session returns the session /private sees, or nil with the status.
func (b *browser) session(hdr ...string) (*Session, int) {
	var s Session
	code := b.getJSON(b.f.appURL+"/private", &s, hdr...)
	if code != http.StatusOK {
		return nil, code
	}
	return &s, code
}

func (b *browser) cookie(name string) *http.Cookie {
	u, _ := url.Parse(b.f.appURL)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func newJar(t *testing.T) http.CookieJar {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return jar
}
