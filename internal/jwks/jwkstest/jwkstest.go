// Package jwkstest fakes a token issuer for tests of verifiers built on
// package jwks: an httptest server publishing a key set that a test can
// rotate, break or hold, behind an OpenID discovery document, counting
// fetches; a settable clock; and a signer of test tokens.
package jwkstest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Server is a fake issuer on httptest. Its discovery document is at
// URL()/.well-known/openid-configuration and names URL() as issuer and
// JWKSURL() as jwks_uri.
type Server struct {
	srv *httptest.Server

	mu        sync.Mutex
	keys      []jose.JSONWebKey
	discHits  int
	jwksHits  int
	fail      bool
	docIssuer string        // issuer the document claims; "" means URL()
	gate      chan struct{} // if set, key set replies wait for it to close
}

// NewServer starts a server publishing keys, closed at the end of the
// test.
func NewServer(t testing.TB, keys ...jose.JSONWebKey) *Server {
	s := &Server{keys: keys}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", s.serveDiscovery)
	mux.HandleFunc("GET /keys", s.serveJWKS)
	s.srv = httptest.NewServer(mux)

	t.Cleanup(s.srv.Close)
	return s
}

// URL is the issuer's base URL.
func (s *Server) URL() string { return s.srv.URL }

// JWKSURL is where the key set is published.
func (s *Server) JWKSURL() string { return s.srv.URL + "/keys" }

// SetKeys replaces the published keys.
func (s *Server) SetKeys(keys ...jose.JSONWebKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = keys
}

// SetFail makes key set requests fail with 503, or succeed again.
func (s *Server) SetFail(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fail
}

// SetDocIssuer makes the discovery document claim another issuer.
func (s *Server) SetDocIssuer(iss string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.docIssuer = iss
}

// Hold makes key set replies wait until release is called; requests are
// counted as they arrive. release may be called more than once.
func (s *Server) Hold() (release func()) {
	gate := make(chan struct{})
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
	return sync.OnceFunc(func() { close(gate) })
}

// Hits returns how many times the discovery document and the key set
// were requested.
func (s *Server) Hits() (discovery, jwks int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.discHits, s.jwksHits
}

func (s *Server) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.discHits++
	iss := s.docIssuer
	s.mu.Unlock()

	if iss == "" {
		iss = s.URL()
	}

	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"issuer":                                iss,
		"jwks_uri":                              s.JWKSURL(),
		"id_token_signing_alg_values_supported": []string{"RS256"},
	})
}

func (s *Server) serveJWKS(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.jwksHits++
	gate, fail := s.gate, s.fail
	set := jose.JSONWebKeySet{Keys: s.keys}
	s.mu.Unlock()

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

// Clock is a settable clock for the Now of options.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock stopped at start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// SignJWT signs claims with key under alg, with kid in the header unless
// it is empty, as any issuer would.
func SignJWT(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
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
