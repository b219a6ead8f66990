package ghoidc

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

const testAudience = "dd-fleet-test"

// t0 is the pinned start of every fake clock.
var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// signingKey is an RSA key with the kid it is published under.
type signingKey struct {
	kid string
	key *rsa.PrivateKey
}

func newSigningKey(t testing.TB, kid string) signingKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid: kid, key: key}
}

func (k signingKey) jwk() jose.JSONWebKey {
	return jose.JSONWebKey{Key: &k.key.PublicKey, KeyID: k.kid, Algorithm: "RS256", Use: "sig"}
}

// signJWT signs claims with key under alg and kid, as any issuer would.
func signJWT(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// githubClaims returns the claims of a GitHub token for a push to
// acme/app, issued at now by issuer.
func githubClaims(issuer string, now time.Time) map[string]any {
	return map[string]any{
		"iss":                 issuer,
		"aud":                 testAudience,
		"sub":                 "repo:acme/app:ref:refs/heads/main",
		"jti":                 "2f4a1e0c-8f57-4b5e-9d0a-0c1d2e3f4a5b",
		"exp":                 now.Add(5 * time.Minute).Unix(),
		"iat":                 now.Unix(),
		"nbf":                 now.Unix(),
		"repository":          "acme/app",
		"repository_id":       "884121234",
		"repository_owner":    "acme",
		"repository_owner_id": "67890123",
		"ref":                 "refs/heads/main",
		"ref_type":            "branch",
		"sha":                 "0123456789abcdef0123456789abcdef01234567",
		"workflow":            "deploy",
		"workflow_ref":        "acme/app/.github/workflows/deploy.yml@refs/heads/main",
		"job_workflow_ref":    "acme/app/.github/workflows/deploy.yml@refs/heads/main",
		"run_id":              "5298213421",
		"run_number":          "7",
		"run_attempt":         "1",
		"actor":               "alice",
		"actor_id":            "12345678",
		"event_name":          "push",
		"environment":         "prod",
		"runner_environment":  "github-hosted",
	}
}

// fakeProvider is an OIDC provider on httptest: a discovery document and
// a JWKS whose keys a test can rotate, counting fetches.
type fakeProvider struct {
	srv *httptest.Server

	mu        sync.Mutex
	keys      []jose.JSONWebKey
	jwksHits  int
	discHits  int
	failJWKS  bool
	docIssuer string        // issuer the document claims; "" means the real one
	gate      chan struct{} // if set, JWKS replies wait for it to close
}

func newFakeProvider(t testing.TB, keys ...signingKey) *fakeProvider {
	p := &fakeProvider{}
	p.setKeys(keys...)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", p.serveDiscovery)
	mux.HandleFunc("GET /keys", p.serveJWKS)
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *fakeProvider) URL() string { return p.srv.URL }

func (p *fakeProvider) setKeys(keys ...signingKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = nil
	for _, k := range keys {
		p.keys = append(p.keys, k.jwk())
	}
}

func (p *fakeProvider) setFail(fail bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failJWKS = fail
}

func (p *fakeProvider) hits() (discovery, jwks int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.discHits, p.jwksHits
}

func (p *fakeProvider) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.discHits++
	iss := p.docIssuer
	p.mu.Unlock()
	if iss == "" {
		iss = p.srv.URL
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"issuer":                                iss,
		"jwks_uri":                              p.srv.URL + "/keys",
		"id_token_signing_alg_values_supported": []string{"RS256"},
	})
}

func (p *fakeProvider) serveJWKS(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.jwksHits++
	gate, fail := p.gate, p.failJWKS
	set := jose.JSONWebKeySet{Keys: p.keys}
	p.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if fail {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(set)
}

// newTestVerifier returns a verifier of p's tokens on clock, closed at the
// end of the test.
func newTestVerifier(t testing.TB, issuer string, clock *fakeClock) *Verifier {
	t.Helper()
	v, err := NewVerifier(t.Context(), VerifierOptions{
		Issuer: issuer, Audience: testAudience, Now: clock.Now, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}
