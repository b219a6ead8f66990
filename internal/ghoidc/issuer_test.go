package ghoidc

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/jwks/jwkstest"
)

const testMintSecret = "dev-mint-secret-0123456789"

// serveIssuer starts an Issuer on httptest with opts (URL, Now and the
// secret filled in) and returns it with its server.
func serveIssuer(t *testing.T, opts IssuerOptions) (*Issuer, *httptest.Server) {
	t.Helper()
	var h http.Handler = http.NotFoundHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	opts.URL = srv.URL
	opts.Audience = cmpOr(opts.Audience, testAudience)
	opts.MintSecret = cmpOr(opts.MintSecret, testMintSecret)
	opts.Logger = testLogger(t)

	iss, err := NewIssuer(opts)
	if err != nil {
		t.Fatal(err)
	}
	h = iss.Handler()
	return iss, srv
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func TestIssuerRoundTrip(t *testing.T) {
	clock := newFakeClock()
	iss, _ := serveIssuer(t, IssuerOptions{Now: clock.Now})
	v := newTestVerifier(t, iss.URL(), clock)

	tok, err := iss.Mint(t.Context(), MintRequest{
		Repository: "acme/app", RepositoryID: 884121234, RepositoryOwnerID: 67890123,
		SHA: strings.Repeat("ab", 20), Actor: "alice", ActorID: 5,
	})
	if err != nil {
		t.Fatal(err)
	}

	got, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatalf("Verify of a minted token: %v", err)
	}

	ref := "acme/app/.github/workflows/deploy.yml@refs/heads/main"
	want := &Claims{
		Issuer: iss.URL(), Subject: "repo:acme/app:ref:refs/heads/main",
		Audience: []string{testAudience}, Expiry: t0.Add(5 * time.Minute), IssuedAt: t0,
		NotBefore: t0, Repository: "acme/app", RepositoryID: 884121234,
		RepositoryOwner: "acme", RepositoryOwnerID: 67890123, RepositoryVisibility: "private",
		Ref: "refs/heads/main", RefType: "branch", SHA: strings.Repeat("ab", 20),
		Workflow: "deploy", WorkflowRef: ref, WorkflowSHA: strings.Repeat("ab", 20),
		JobWorkflowRef: ref, JobWorkflowSHA: strings.Repeat("ab", 20),
		RunNumber: 1, RunAttempt: 1, Actor: "alice", ActorID: 5, EventName: "push",
		RunnerEnvironment: "github-hosted",
	}

	ignore := cmp.FilterPath(func(p cmp.Path) bool {
		f := p.Last().String()
		return f == ".ID" || f == ".RunID"
	}, cmp.Ignore())
	if diff := cmp.Diff(want, got, ignore); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}

	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).
		MatchString(got.ID) {
		t.Errorf("jti = %q, want a v4 UUID", got.ID)
	}
	if got.RunID < 1e9 || got.RunID >= 1e10 {
		t.Errorf("run_id = %d, want ten digits", got.RunID)
	}
	org, _ := ParsePrincipal("org", "ACME", "67890123")
	if !org.Matches(got) {
		t.Errorf("%v does not match the minted token", org)
	}
}

func TestMintDefaults(t *testing.T) {
	clock := newFakeClock()
	iss, _ := serveIssuer(t, IssuerOptions{Now: clock.Now})
	v := newTestVerifier(t, iss.URL(), clock)
	expired := int64(-120)

	tests := []struct {
		name   string
		req    MintRequest
		check  func(*Claims) string // returns a complaint or ""
		reason string               // expected TokenError reason, if any
	}{
		{"defaults", MintRequest{}, func(c *Claims) string {
			if c.Repository != "dd-dev/app" || c.RepositoryOwner != "dd-dev" || c.Actor != "dd-dev" ||
				c.RepositoryID <= 0 || c.RepositoryOwnerID <= 0 || c.RepositoryID == c.RepositoryOwnerID ||
				!regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(c.SHA) {
				return "unexpected defaults"
			}
			return ""
		}, ""},
		{"owner only", MintRequest{RepositoryOwner: "Acme", RepositoryOwnerID: 7},
			func(c *Claims) string {
				if c.Repository != "Acme/app" || c.RepositoryOwnerID != 7 {
					return "repository not derived from owner"
				}
				return ""
			}, ""},
		{"stable derived ids", MintRequest{Repository: "acme/app"}, func(c *Claims) string {
			if c.RepositoryID != idOr(0, "ACME/APP") || c.RepositoryOwnerID != idOr(0, "acme") {
				return "derived ids not stable"
			}
			return ""
		}, ""},
		{"environment sub", MintRequest{Repository: "a/b", Environment: "prod"},
			func(c *Claims) string {
				if c.Subject != "repo:a/b:environment:prod" {
					return "sub = " + c.Subject
				}
				return ""
			}, ""},
		{"tag", MintRequest{Ref: "refs/tags/v1"}, func(c *Claims) string {
			if c.RefType != "tag" {
				return "ref_type = " + c.RefType
			}
			return ""
		}, ""},
		{"other audience", MintRequest{Audience: "elsewhere"}, nil, ReasonAudience},
		{"already expired", MintRequest{ExpiresInSecs: &expired}, nil, ReasonExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := iss.Mint(t.Context(), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify(t.Context(), tok)
			if tt.reason != "" {
				var te *TokenError
				if !errors.As(err, &te) || te.Reason != tt.reason {
					t.Fatalf("Verify: %v, want %q", err, tt.reason)
				}
				return
			}

			if err != nil {
				t.Fatal(err)
			}
			if msg := tt.check(c); msg != "" {
				t.Errorf("%s: %+v", msg, c)
			}
		})
	}
}

func TestMintRejects(t *testing.T) {
	iss, _ := serveIssuer(t, IssuerOptions{})
	tooLong := int64(2 * 24 * 3600)
	tests := map[string]MintRequest{
		"repo without slash":    {Repository: "acme"},
		"owner disagrees":       {Repository: "acme/app", RepositoryOwner: "other"},
		"bad owner":             {RepositoryOwner: "ac/me"},
		"bad actor":             {Actor: "a b"},
		"negative id":           {RepositoryID: -1},
		"short sha":             {SHA: "abc"},
		"non-hex sha":           {SHA: strings.Repeat("zz", 20)},
		"short ref":             {Ref: "main"},
		"control in workflow":   {Workflow: "de\nploy"},
		"long environment":      {Environment: strings.Repeat("e", 300)},
		"lifetime out of range": {ExpiresInSecs: &tooLong},
	}

	for name, req := range tests {
		t.Run(name, func(t *testing.T) {
			if tok, err := iss.Mint(t.Context(), req); err == nil {
				t.Errorf("Mint = %.20s…, want an error", tok)
			}
		})
	}
}

func TestMintEndpoint(t *testing.T) {
	iss, srv := serveIssuer(t, IssuerOptions{})
	v := newTestVerifier(t, iss.URL(), jwkstest.NewClock(time.Now()))

	tests := []struct {
		name   string
		auth   string
		ctype  string
		body   string
		status int
		code   string
	}{
		{"ok", "Bearer " + testMintSecret, "application/json",
			`{"repository":"acme/app","expires_in_secs":60}`, 200, ""},
		{"lower-case bearer", "bearer " + testMintSecret, "", `{}`, 200, ""},
		{"no secret", "", "application/json", `{}`, 401, "UNAUTHORIZED"},
		{"wrong secret", "Bearer " + testMintSecret + "x", "", `{}`, 401, "UNAUTHORIZED"},
		{"basic auth", "Basic " + testMintSecret, "", `{}`, 401, "UNAUTHORIZED"},
		{"not json", "Bearer " + testMintSecret, "", `repository=acme`, 400, "BAD_REQUEST"},
		{"unknown field", "Bearer " + testMintSecret, "", `{"repo":"a/b"}`, 400, "BAD_REQUEST"},
		{"wrong type", "Bearer " + testMintSecret, "", `{"repository_id":"x"}`, 400, "BAD_REQUEST"},
		{"invalid repository", "Bearer " + testMintSecret, "", `{"repository":"a"}`, 400,
			"BAD_REQUEST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/mint",
				strings.NewReader(tt.body))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}

			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d (%s), want %d", resp.StatusCode, data, tt.status)
			}

			if tt.status != 200 {
				var body struct{ Code string }
				if json.Unmarshal(data, &body); body.Code != tt.code {
					t.Errorf("code = %q (%s), want %q", body.Code, data, tt.code)
				}
				return
			}

			var ok mintResponse
			if err := json.Unmarshal(data, &ok); err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(t.Context(), ok.Token); err != nil {
				t.Errorf("Verify of minted token: %v", err)
			}
		})
	}
}

func TestMintFromIssuer(t *testing.T) {
	iss, srv := serveIssuer(t, IssuerOptions{})
	v := newTestVerifier(t, iss.URL(), jwkstest.NewClock(time.Now()))

	tok, err := MintFromIssuer(t.Context(), srv.Client(), srv.URL+"/", testMintSecret,
		MintRequest{Repository: "acme/app", RepositoryID: 9})
	if err != nil {
		t.Fatal(err)
	}

	c, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Repository != "acme/app" || c.RepositoryID != 9 {
		t.Errorf("claims = %s(%d)", c.Repository, c.RepositoryID)
	}

	_, err = MintFromIssuer(t.Context(), nil, srv.URL, "wrong-secret-0123456789", MintRequest{})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("MintFromIssuer with a wrong secret: %v, want a 401 error", err)
	}
	_, err = MintFromIssuer(t.Context(), nil, srv.URL, testMintSecret, MintRequest{SHA: "x"})
	if err == nil || !strings.Contains(err.Error(), "sha") {
		t.Errorf("MintFromIssuer with a bad sha: %v, want the 400 message", err)
	}
}

func TestIssuerDiscovery(t *testing.T) {
	iss, srv := serveIssuer(t, IssuerOptions{})
	var doc discoveryResponse
	getJSONT(t, srv.URL+"/.well-known/openid-configuration", &doc)
	if doc.Issuer != iss.URL() || doc.JWKSURI != iss.URL()+"/.well-known/jwks" {
		t.Errorf("issuer, jwks_uri = %q, %q", doc.Issuer, doc.JWKSURI)
	}
	if diff := cmp.Diff([]string{"RS256"}, doc.SigningAlgs); diff != "" {
		t.Errorf("algs (-want +got):\n%s", diff)
	}
	if len(doc.ClaimsSupported) < 20 {
		t.Errorf("claims_supported = %v", doc.ClaimsSupported)
	}

	var set struct{ Keys []map[string]string }
	getJSONT(t, srv.URL+"/.well-known/jwks", &set)
	if len(set.Keys) != 1 {
		t.Fatalf("keys = %v", set.Keys)
	}
	k := set.Keys[0]
	if k["kty"] != "RSA" || k["alg"] != "RS256" || k["use"] != "sig" || k["kid"] != iss.kid ||
		k["d"] != "" {
		t.Errorf("jwk = %v", k)
	}

	resp, err := srv.Client().Post(srv.URL+"/.well-known/jwks", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST jwks status = %d, want 405", resp.StatusCode)
	}
}

func TestIssuerKeyPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "oidc-key.pem")
	first, err := NewIssuer(issuerOpts(path))
	if err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", fi.Mode().Perm())
	}

	second, err := NewIssuer(issuerOpts(path))
	if err != nil {
		t.Fatal(err)
	}
	if first.kid != second.kid || !first.key.Equal(second.key) {
		t.Errorf("key changed across NewIssuer calls: kid %s then %s", first.kid, second.kid)
	}

	mem, err := NewIssuer(issuerOpts(""))
	if err != nil {
		t.Fatal(err)
	}
	if mem.kid == first.kid {
		t.Error("in-memory issuer reused the persisted key")
	}

	// A corrupt key file is an error and is left alone.
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewIssuer(issuerOpts(path)); err == nil {
		t.Error("NewIssuer accepted a corrupt key file")
	}
	if data, _ := os.ReadFile(path); string(data) != "garbage" {
		t.Error("corrupt key file was replaced")
	}
}

func TestNewIssuerOptions(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*IssuerOptions)
	}{
		{"no URL", func(o *IssuerOptions) { o.URL = "" }},
		{"remote http", func(o *IssuerOptions) { o.URL = "http://example.com" }},
		{"query", func(o *IssuerOptions) { o.URL = "http://127.0.0.1:1/?x=1" }},
		{"no audience", func(o *IssuerOptions) { o.Audience = "" }},
		{"no secret", func(o *IssuerOptions) { o.MintSecret = "" }},
		{"short secret", func(o *IssuerOptions) { o.MintSecret = "short" }},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := issuerOpts("")
			tt.modify(&opts)
			if _, err := NewIssuer(opts); err == nil {
				t.Error("NewIssuer accepted invalid options")
			}
		})
	}

	iss, err := NewIssuer(IssuerOptions{URL: "http://localhost:8700/", Audience: "a",
		MintSecret: testMintSecret})
	if err != nil {
		t.Fatal(err)
	}
	if iss.URL() != "http://localhost:8700" {
		t.Errorf("URL = %q, want the trailing slash trimmed", iss.URL())
	}
}

func issuerOpts(keyPath string) IssuerOptions {
	return IssuerOptions{URL: "http://127.0.0.1:8700", Audience: testAudience,
		KeyPath: keyPath, MintSecret: testMintSecret}
}

func getJSONT(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}
