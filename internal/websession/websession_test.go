package websession

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
)

func validOptions(t *testing.T) Options {
	return Options{DB: openShared(t), Env: fleetenv.Dev, PublicURL: "https://app.example.com",
		Owner: testOwner, GitHub: GitHub{ClientID: "id", ClientSecret: "secret"}}
}

func TestNewValidatesOptions(t *testing.T) {
	tests := []struct {
		name  string
		tweak func(*Options)
		ok    bool
	}{
		{"valid", func(*Options) {}, true},
		{"dev over http on localhost", func(o *Options) {
			o.PublicURL = "http://app.localhost:8080"
			o.GitHub.WebURL, o.GitHub.APIURL, o.GitHub.Local =
				"http://github.localhost:8080", "http://github.localhost:8080", true
		}, true},
		{"enterprise API path", func(o *Options) {
			o.GitHub.WebURL, o.GitHub.APIURL = "https://ghe.example", "https://ghe.example/api/v3/"
		}, true},
		{"no DB", func(o *Options) { o.DB = nil }, false},
		{"no env", func(o *Options) { o.Env = "" }, false},
		{"owner without id", func(o *Options) { o.Owner.ID = 0 }, false},
		{"no client secret", func(o *Options) { o.GitHub.ClientSecret = "" }, false},
		{"http outside localhost", func(o *Options) {
			o.PublicURL = "http://app.example.com"
		}, false},
		{"http on localhost in staging", func(o *Options) {
			o.Env, o.PublicURL = fleetenv.Staging, "http://app.localhost"
		}, false},
		{"public URL with a path", func(o *Options) { o.PublicURL = "https://a.example/x" }, false},
		{"local provider in production", func(o *Options) {
			o.Env, o.GitHub.Local = fleetenv.Production, true
		}, false},
		{"loopback GitHub in staging", func(o *Options) {
			o.Env, o.GitHub.WebURL = fleetenv.Staging, "https://127.0.0.1:9000"
		}, false},
		{"plain http GitHub", func(o *Options) { o.GitHub.APIURL = "http://api.example" }, false},
		{"short secret", func(o *Options) { o.Secret = make([]byte, 31) }, false},
		{"bad return host", func(o *Options) { o.ReturnHosts = []string{"*.*.example"} }, false},
		{"bad trusted origin", func(o *Options) { o.TrustedOrigins = []string{"nope"} }, false},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validOptions(t)
			tt.tweak(&o)
			_, err := New(context.Background(), o)
			if (err == nil) != tt.ok {
				t.Errorf("New: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestLocalProviderRefusedInProtectedEnvs(t *testing.T) {
	for _, env := range []fleetenv.Env{fleetenv.Production, fleetenv.Staging} {
		_, err := NewLocalProvider(LocalProviderOptions{Env: env, ClientID: "a",
			ClientSecret: "b", Users: DevUsers(testOwner)})
		if err == nil {
			t.Errorf("local provider accepted in %s", env)
		}
	}
}

func TestSecureCookieAttributes(t *testing.T) {
	svc, err := New(context.Background(), validOptions(t))
	if err != nil {
		t.Fatal(err)
	}

	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "https://app.example.com"+StartPath+"?return_to=/x", nil)
	svc.handle(svc.start).ServeHTTP(w, r)
	if w.Code != http.StatusFound {
		t.Fatalf("start: %d", w.Code)
	}

	got := redactValue(w.Header().Get("Set-Cookie"))
	want := "__Host-dd_oauth=; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"
	if got != want {
		t.Errorf("nonce cookie %q, want %q", got, want)
	}

	loc, _ := url.Parse(w.Header().Get("Location"))
	q := loc.Query()
	callback := "https://app.example.com" + CallbackPath
	if loc.Host != "github.com" || q.Get("redirect_uri") != callback ||
		q.Get("code_challenge_method") != "S256" || q.Get("scope") != "read:org" {
		t.Errorf("authorize URL %s", loc)
	}

	w = httptest.NewRecorder()
	svc.setSessionCookie(w, "v")
	want = "__Host-dd_session=v; Path=/; Max-Age=43200; HttpOnly; Secure; SameSite=Lax"
	if got := w.Header().Get("Set-Cookie"); got != want {
		t.Errorf("session cookie %q, want %q", got, want)
	}
}

// A session outlives a restart: the secret is kept in the database.
func TestSessionSurvivesRestart(t *testing.T) {
	opts := validOptions(t)
	ctx := context.Background()
	first, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}

	value, sess, err := first.createSession(ctx, opts.DB,
		grant{Login: "alice", UserID: 42, Role: RoleAdmin}, ClientBrowser, nil)
	if err != nil {
		t.Fatal(err)
	}

	second, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}

	r := httptest.NewRequest("GET", "https://app.example.com/", nil)
	r.AddCookie(&http.Cookie{Name: "__Host-dd_session", Value: value})
	got, err := second.Authenticate(r)
	if err != nil {
		t.Fatalf("Authenticate after restart: %v", err)
	}
	if diff := cmp.Diff(sess, got); diff != "" {
		t.Errorf("session (-want +got):\n%s", diff)
	}

	// Another fleet owner does not inherit the sessions.
	opts.Owner = ghoidc.Principal{Kind: ghoidc.KindUser, Name: "bob", ID: 9}
	third, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := third.Authenticate(r); !errors.Is(err, ErrInvalidSession) {
		t.Errorf("session under another owner: %v, want ErrInvalidSession", err)
	}
}

func TestCookieIsNotABearerToken(t *testing.T) {
	opts := validOptions(t)
	ctx := context.Background()
	svc, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}

	value, _, err := svc.createSession(ctx, opts.DB,
		grant{Login: "alice", UserID: 42, Role: RoleAdmin}, ClientBrowser, nil)
	if err != nil {
		t.Fatal(err)
	}

	r := httptest.NewRequest("GET", "https://app.example.com/", nil)
	r.Header.Set("Authorization", "Bearer "+BearerPrefix+value)
	if _, err := svc.Authenticate(r); !errors.Is(err, ErrInvalidSession) {
		t.Errorf("cookie value as bearer: %v, want ErrInvalidSession", err)
	}

	var st oauthState
	if err := svc.state.Decode(codecState, value, &st); err == nil {
		t.Error("a cookie value decoded as OAuth state")
	}
}

func TestMigrateIsIdempotent(t *testing.T) {
	db := openDB(t)
	for range 2 {
		if err := Migrate(context.Background(), db); err != nil {
			t.Fatal(err)
		}
	}

	var v int
	err := db.QueryRow(`SELECT version FROM websession_schema`).Scan(&v)
	if err != nil || v != len(migrations) {
		t.Errorf("version %d, %v; want %d", v, err, len(migrations))
	}
}

func TestPrune(t *testing.T) {
	opts := validOptions(t)
	c := newClock()
	opts.Now = c.Now
	ctx := context.Background()
	svc, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}

	g := grant{Login: "alice", UserID: 42, Role: RoleAdmin}
	_, old, _ := svc.createSession(ctx, opts.DB, g, ClientBrowser, nil)
	c.Add(DefaultSessionTTL + 25*time.Hour)
	_, live, _ := svc.createSession(ctx, opts.DB, g, ClientBrowser, nil)

	n, err := svc.Prune(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1", n, err)
	}
	if _, err := getSession(ctx, opts.DB, old.ID); err == nil {
		t.Error("expired session kept")
	}
	if _, err := getSession(ctx, opts.DB, live.ID); err != nil {
		t.Errorf("live session dropped: %v", err)
	}
}

// fakeStanding answers standings from a table.
type fakeStanding map[string]Standing

func (f fakeStanding) lookup(_ context.Context, p ghoidc.Principal) (Standing, error) {
	if p.Name == "broken" {
		return StandingNone, errors.New("github down")
	}
	return f[p.String()], nil
}

func TestClassify(t *testing.T) {
	org := ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "acme", ID: 7}
	repo := ghoidc.Principal{Kind: ghoidc.KindRepo, Name: "acme/app", ID: 8}
	user := ghoidc.Principal{Kind: ghoidc.KindUser, Name: "alice", ID: 42}
	broken := ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "broken", ID: 9}
	tenantOf := func(agents ...string) TenantsFunc {
		return func(context.Context, Identity) ([]string, error) { return agents, nil }
	}

	tests := []struct {
		name     string
		rule     Rule
		standing fakeStanding
		want     Classification
		wantErr  bool
	}{
		{name: "owner user by id", rule: Rule{Owner: user},
			want: Classification{Role: RoleAdmin}},
		{name: "other user", rule: Rule{Owner: ghoidc.Principal{Kind: ghoidc.KindUser,
			Name: "alice", ID: 43}}},
		{name: "org member", rule: Rule{Owner: org},
			standing: fakeStanding{org.String(): StandingMember},
			want:     Classification{Role: RoleAdmin}},
		{name: "org member, admins only", rule: Rule{Owner: org, OrgAdminsOnly: true},
			standing: fakeStanding{org.String(): StandingMember}},
		{name: "org owner, admins only", rule: Rule{Owner: org, OrgAdminsOnly: true},
			standing: fakeStanding{org.String(): StandingAdmin},
			want:     Classification{Role: RoleAdmin}},
		{name: "repo writer", rule: Rule{Owner: repo},
			standing: fakeStanding{repo.String(): StandingMember}},
		{name: "repo admin", rule: Rule{Owner: repo},
			standing: fakeStanding{repo.String(): StandingAdmin},
			want:     Classification{Role: RoleAdmin}},
		{name: "tenant", rule: Rule{Owner: org, TenantAgents: tenantOf("a1", "a2")},
			want: Classification{Role: RoleTenant, Agents: []string{"a1", "a2"}}},
		{name: "no tenancy", rule: Rule{Owner: org, TenantAgents: tenantOf()}},
		{name: "GitHub failing is an error, not a role", rule: Rule{Owner: broken},
			wantErr: true},
		{name: "callback failing", rule: Rule{Owner: org,
			TenantAgents: func(context.Context, Identity) ([]string, error) {
				return nil, errors.New("db down")
			}}, wantErr: true},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			who := Identity{Login: "alice", ID: 42, Standing: tt.standing.lookup}
			got, err := tt.rule.Classify(context.Background(), who)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Classify error %v, want error=%v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Classify (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIdentityHolds(t *testing.T) {
	org := ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "acme", ID: 7}
	repo := ghoidc.Principal{Kind: ghoidc.KindRepo, Name: "acme/app", ID: 8}
	who := Identity{Login: "alice", ID: 42, Standing: fakeStanding{
		org.String(): StandingMember, repo.String(): StandingMember}.lookup}

	tests := []struct {
		p    ghoidc.Principal
		want bool
	}{
		{ghoidc.Principal{Kind: ghoidc.KindUser, Name: "alice", ID: 42}, true},
		{ghoidc.Principal{Kind: ghoidc.KindUser, Name: "alice", ID: 41}, false},
		{org, true},
		{repo, false},
	}

	for _, tt := range tests {
		got, err := who.Holds(context.Background(), tt.p)
		if err != nil || got != tt.want {
			t.Errorf("Holds(%s) = %v, %v; want %v", tt.p, got, err, tt.want)
		}
	}
}

func TestLocalProviderTokenEndpoint(t *testing.T) {
	p, err := NewLocalProvider(LocalProviderOptions{Env: fleetenv.Dev, ClientID: "id",
		ClientSecret: "secret", Users: DevUsers(testOwner)})
	if err != nil {
		t.Fatal(err)
	}

	code := func(challenge string) string {
		form := url.Values{"client_id": {"id"}, "redirect_uri": {"http://app.localhost/cb"},
			"login": {DevAdminLogin}, "code_challenge": {challenge},
			"code_challenge_method": {"S256"}}

		r := httptest.NewRequest("POST", "/login/oauth/authorize", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		p.ServeHTTP(w, r)
		loc, _ := url.Parse(w.Header().Get("Location"))
		return loc.Query().Get("code")
	}

	redeem := func(form url.Values, accept string) string {
		r := httptest.NewRequest("POST", "/login/oauth/access_token",
			strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Accept", accept)
		w := httptest.NewRecorder()
		p.ServeHTTP(w, r)
		return w.Body.String()
	}

	verifier := strings.Repeat("v", 43)
	sum := sha256.Sum256([]byte(verifier))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])
	form := func(code, verifier, secret string) url.Values {
		return url.Values{"client_id": {"id"}, "client_secret": {secret},
			"code": {code}, "code_verifier": {verifier}}
	}

	good := code(challenge)
	tests := []struct {
		name   string
		form   url.Values
		accept string
		want   string
	}{
		{"wrong verifier", form(code(challenge), "wrong", "secret"), "",
			"error=bad_verification_code"},
		{"wrong secret", form(good, verifier, "x"), "application/json",
			`"error":"incorrect_client_credentials"`},
		{"good", form(good, verifier, "secret"), "application/json", `"access_token":"gho_`},
		{"code used twice", form(good, verifier, "secret"), "", "error=bad_verification_code"},
	}

	for _, tt := range tests {
		if got := redeem(tt.form, tt.accept); !strings.Contains(got, tt.want) {
			t.Errorf("%s: answer %q, want it to contain %q", tt.name, got, tt.want)
		}
	}
}
