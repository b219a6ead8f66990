package jwks

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/jwks/jwkstest"
)

// t0 is the pinned start of every fake clock.
var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

var (
	rs256  = []jose.SignatureAlgorithm{jose.RS256}
	itaish = []jose.SignatureAlgorithm{jose.PS384, jose.RS256, jose.ES256, jose.ES384}
)

// rsaKey is generated once: RSA key generation is slow, and lookups only
// look at kids.
var rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func rsaJWK(kid string) jose.JSONWebKey {
	return jose.JSONWebKey{Key: &rsaKey().PublicKey, KeyID: kid, Algorithm: "RS256", Use: "sig"}
}

func ecJWK(t testing.TB, kid string) jose.JSONWebKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return jose.JSONWebKey{Key: &k.PublicKey, KeyID: kid, Algorithm: "ES256", Use: "sig"}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newTestSet returns a set for opts with a test logger, closed at the end
// of the test.
func newTestSet(t testing.TB, opts Options) *Set {
	t.Helper()
	opts.Logger = testLogger(t)
	s, err := New(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// discovered returns a set of srv's keys found by discovery, on clock.
func discovered(t testing.TB, srv *jwkstest.Server, clock *jwkstest.Clock) *Set {
	return newTestSet(t, Options{Issuer: srv.URL(), Algorithms: rs256, Now: clock.Now})
}

// direct returns a set of srv's keys at its fixed URL, on clock.
func direct(t testing.TB, srv *jwkstest.Server, clock *jwkstest.Clock) *Set {
	return newTestSet(t, Options{URL: srv.JWKSURL(), Algorithms: itaish, Now: clock.Now})
}

func TestKey(t *testing.T) {
	ec, rs := ecJWK(t, "ec"), rsaJWK("rs")
	srv := jwkstest.NewServer(t, ec, rs)
	s := direct(t, srv, jwkstest.NewClock(t0))

	for _, want := range []jose.JSONWebKey{ec, rs} {
		got, err := s.Key(t.Context(), want.KeyID)
		if err != nil {
			t.Fatalf("Key(%s): %v", want.KeyID, err)
		}
		if got.KeyID != want.KeyID || got.Algorithm != want.Algorithm || !got.IsPublic() {
			t.Errorf("Key(%s) = %+v", want.KeyID, got)
		}
	}

	if _, err := s.Key(t.Context(), "nope"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Key(nope): %v, want ErrUnknownKey", err)
	}
	if _, j := srv.Hits(); j != 1 {
		t.Errorf("jwks fetches = %d, want 1", j)
	}
}

// TestRotation: a new kid is picked up by one refresh once the rate limit
// allows it, the keys still published stay, and a withdrawn key goes at
// the refresh after MaxAge.
func TestRotation(t *testing.T) {
	k1, k2, k3 := rsaJWK("k1"), rsaJWK("k2"), rsaJWK("k3")
	srv := jwkstest.NewServer(t, k1)
	clock := jwkstest.NewClock(t0)
	s := discovered(t, srv, clock)

	lookup := func(k jose.JSONWebKey) error {
		_, err := s.Key(t.Context(), k.KeyID)
		return err
	}
	wantFetches := func(want int) {
		t.Helper()
		if d, j := srv.Hits(); d != 1 || j != want {
			t.Fatalf("fetches = %d discovery, %d jwks; want 1, %d", d, j, want)
		}
	}

	if err := lookup(k1); err != nil {
		t.Fatalf("k1: %v", err)
	}
	srv.SetKeys(k1, k2) // The issuer publishes the next key ahead of use.

	// Within the refresh interval the new kid is unknown, and no fetch
	// happens.
	clock.Advance(10 * time.Second)
	if err := lookup(k2); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("k2 within interval: %v, want ErrUnknownKey", err)
	}
	wantFetches(1)

	// After it, one refresh picks the new key up.
	clock.Advance(30 * time.Second)
	if err := lookup(k2); err != nil {
		t.Fatalf("k2 after interval: %v", err)
	}
	if err := lookup(k1); err != nil {
		t.Fatalf("k1 still published: %v", err)
	}
	wantFetches(2)

	// Another unknown kid right after that refresh: no fetch, unknown; it
	// is looked up again after the interval.
	srv.SetKeys(k1, k2, k3)
	if err := lookup(k3); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("k3 within interval: %v, want ErrUnknownKey", err)
	}
	wantFetches(2)
	clock.Advance(31 * time.Second)
	if err := lookup(k3); err != nil {
		t.Fatalf("k3 after interval: %v", err)
	}
	wantFetches(3)

	// A withdrawn key stops working once the keys are refreshed.
	srv.SetKeys(k2, k3)
	clock.Advance(time.Hour)
	if err := lookup(k1); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("withdrawn k1: %v, want ErrUnknownKey", err)
	}
	wantFetches(4)
}

// TestRefreshRateBound: 100 concurrent lookups of unknown kids cause one
// fetch, which they all share or are refused by; more within the interval
// cause none, and the next interval allows exactly one more.
func TestRefreshRateBound(t *testing.T) {
	srv := jwkstest.NewServer(t, ecJWK(t, "k1"))
	release := srv.Hold()
	clock := jwkstest.NewClock(t0)
	s := direct(t, srv, clock)

	lookupAll := func(n int) []error {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() { _, errs[i] = s.Key(t.Context(), fmt.Sprintf("unknown-%d", i)) })
		}

		// Hold the first fetch open once it has started, so that lookups
		// arrive both while it is in flight and after; none may start
		// another.
		waitFor(t, func() bool { _, j := srv.Hits(); return j >= 1 })
		release()
		wg.Wait()
		return errs
	}
	fetches := func() int { _, j := srv.Hits(); return j }

	for i, err := range lookupAll(100) {
		if !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("lookup %d: %v, want ErrUnknownKey", i, err)
		}
	}
	if n := fetches(); n != 1 {
		t.Errorf("jwks fetches = %d for 100 unknown kids, want 1", n)
	}

	clock.Advance(29 * time.Second)
	lookupAll(10)
	if n := fetches(); n != 1 {
		t.Errorf("jwks fetches = %d within the interval, want 1", n)
	}

	clock.Advance(time.Second)
	lookupAll(10)
	if n := fetches(); n != 2 {
		t.Errorf("jwks fetches = %d after the interval, want 2", n)
	}
}

// A caller that gives up while a refresh is in flight does not cancel it
// for the others.
func TestCancelWhileFetching(t *testing.T) {
	srv := jwkstest.NewServer(t, rsaJWK("k1"))
	release := srv.Hold()
	s := discovered(t, srv, jwkstest.NewClock(t0))

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() {
		_, err := s.Key(ctx, "k1")
		done <- err
	}()

	waitFor(t, func() bool { _, j := srv.Hits(); return j == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Key: %v, want context.Canceled", err)
	}

	release()
	waitFor(t, func() bool {
		_, err := s.Key(t.Context(), "k1")
		return err == nil
	})
	if _, j := srv.Hits(); j != 1 {
		t.Errorf("jwks fetches = %d, want the one shared fetch", j)
	}
}

func TestContextCanceled(t *testing.T) {
	srv := jwkstest.NewServer(t, ecJWK(t, "k1"))
	defer srv.Hold()()
	s := direct(t, srv, jwkstest.NewClock(t0))

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Key(ctx, "k1"); !errors.Is(err, context.Canceled) {
		t.Errorf("Key: %v, want context.Canceled", err)
	}
}

// TestMaxAge: keys are refreshed after MaxAge; if that fails they still
// serve, since an outage of the issuer must not stop the fleet, and a
// withdrawn key goes at the next refresh that works.
func TestMaxAge(t *testing.T) {
	k1 := ecJWK(t, "k1")
	srv := jwkstest.NewServer(t, k1)
	clock := jwkstest.NewClock(t0)
	s := direct(t, srv, clock)
	lookup := func() error {
		_, err := s.Key(t.Context(), "k1")
		return err
	}

	if err := lookup(); err != nil {
		t.Fatal(err)
	}

	clock.Advance(61 * time.Minute)
	srv.SetFail(true)
	if err := lookup(); err != nil {
		t.Fatalf("stale key after a failed refresh: %v", err)
	}

	clock.Advance(61 * time.Minute)
	srv.SetFail(false)
	srv.SetKeys(ecJWK(t, "k2"))
	if err := lookup(); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("withdrawn key: %v, want ErrUnknownKey", err)
	}
	if _, j := srv.Hits(); j != 3 {
		t.Errorf("fetches = %d, want 3", j)
	}
}

// TestFetchFailures: an unreachable key set gives a FetchError, not a
// verdict on the kid, and is not retried within the interval.
func TestFetchFailures(t *testing.T) {
	srv := jwkstest.NewServer(t, rsaJWK("k1"))
	clock := jwkstest.NewClock(t0)
	s := discovered(t, srv, clock)

	srv.SetFail(true)
	for range 3 {
		var fe *FetchError
		if _, err := s.Key(t.Context(), "k1"); !errors.As(err, &fe) || fe.Op != "jwks" {
			t.Fatalf("Key with the key set down: %v, want a jwks FetchError", err)
		}
	}
	if _, j := srv.Hits(); j != 1 {
		t.Errorf("jwks fetches = %d, want 1", j)
	}

	srv.SetFail(false)
	clock.Advance(30 * time.Second)
	if _, err := s.Key(t.Context(), "k1"); err != nil {
		t.Fatalf("Key after recovery: %v", err)
	}
}

func TestDiscoveryFailures(t *testing.T) {
	tests := map[string]struct {
		doc  map[string]any // served at /.well-known/openid-configuration; issuer "" = self
		want string         // in the error
	}{
		"issuer mismatch": {map[string]any{"issuer": "https://other.example"}, "issuer mismatch"},
		"http jwks_uri": {map[string]any{"jwks_uri": "http://keys.example/keys"},
			"must be https"},
		"no jwks_uri":   {map[string]any{"jwks_uri": ""}, "jwks_uri"},
		"other algs":    {map[string]any{"algs": []string{"ES256"}}, "signs with none of [RS256]"},
		"not json":      {nil, "decoding"},
		"missing":       {map[string]any{"status": http.StatusNotFound}, "HTTP 404"},
		"huge document": {map[string]any{"pad": strings.Repeat("x", maxDocSize)}, "exceeds"},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			var srv *httptest.Server
			srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.doc == nil {
					w.Write([]byte("<html>"))
					return
				}
				if code, ok := tt.doc["status"].(int); ok {
					w.WriteHeader(code)
					return
				}

				doc := map[string]any{"issuer": srv.URL, "jwks_uri": srv.URL + "/keys",
					"id_token_signing_alg_values_supported": []string{"RS256"}}
				for k, v := range tt.doc {
					if k == "algs" {
						k = "id_token_signing_alg_values_supported"
					}
					doc[k] = v
				}
				json.NewEncoder(w).Encode(doc)
			}))
			t.Cleanup(srv.Close)

			s := newTestSet(t, Options{Issuer: srv.URL, Algorithms: rs256, Now: t0Clock})
			_, err := s.Key(t.Context(), "k1")
			var fe *FetchError
			if !errors.As(err, &fe) || fe.Op != "discovery" || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Key: %v, want a discovery FetchError with %q", err, tt.want)
			}
		})
	}
}

func t0Clock() time.Time { return t0 }

// TestKeyFilter: only public signing keys with a kid that suit one of the
// allowed algorithms are kept.
func TestKeyFilter(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	rs, ec := rsaJWK("k"), ecJWK(t, "k")
	with := func(k jose.JSONWebKey, change func(*jose.JSONWebKey)) jose.JSONWebKey {
		change(&k)
		return k
	}

	tests := []struct {
		name     string
		key      jose.JSONWebKey
		algs     []jose.SignatureAlgorithm
		wantKept bool
	}{
		{"RSA for RS256", rs, rs256, true},
		{"RSA without alg", with(rs, func(k *jose.JSONWebKey) { k.Algorithm = "" }), rs256, true},
		{"RSA without use", with(rs, func(k *jose.JSONWebKey) { k.Use = "" }), rs256, true},
		{"RSA for PS384", with(rs, func(k *jose.JSONWebKey) { k.Algorithm = "PS384" }), itaish, true},
		{"EC for ES256", ec, itaish, true},
		{"EC for RS256 only", with(ec, func(k *jose.JSONWebKey) { k.Algorithm = "" }), rs256, false},
		{"alg not allowed", with(rs, func(k *jose.JSONWebKey) { k.Algorithm = "RS512" }), rs256, false},
		{"encryption key", with(rs, func(k *jose.JSONWebKey) { k.Use = "enc" }), rs256, false},
		{"no kid", with(rs, func(k *jose.JSONWebKey) { k.KeyID = "" }), rs256, false},
		{"1024-bit RSA", with(rs, func(k *jose.JSONWebKey) { k.Key = &small.PublicKey }), rs256, false},
		{"private key", with(rs, func(k *jose.JSONWebKey) { k.Key = rsaKey() }), rs256, false},
		{"Ed25519", jose.JSONWebKey{Key: edPub, KeyID: "k", Use: "sig"},
			[]jose.SignatureAlgorithm{jose.EdDSA, jose.ES256}, false},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := jwkstest.NewServer(t, tt.key, rsaJWK("other"))
			s := newTestSet(t, Options{URL: srv.JWKSURL(), Algorithms: tt.algs, Now: t0Clock})
			_, err := s.Key(t.Context(), "k")

			if tt.wantKept && err != nil {
				t.Errorf("Key: %v, want the key", err)
			}
			if !tt.wantKept && !errors.Is(err, ErrUnknownKey) && !isFetchError(err) {
				t.Errorf("Key: %v, want it skipped", err)
			}
		})
	}

	// A set without a usable key is an error, not an empty set.
	srv := jwkstest.NewServer(t, ecJWK(t, "ec"))
	s := newTestSet(t, Options{URL: srv.JWKSURL(), Algorithms: rs256, Now: t0Clock})
	if _, err := s.Key(t.Context(), "ec"); !isFetchError(err) ||
		!strings.Contains(err.Error(), "no usable key") {
		t.Errorf("Key in a set of no usable key: %v, want a FetchError", err)
	}
}

func isFetchError(err error) bool {
	var fe *FetchError
	return errors.As(err, &fe)
}

func TestClose(t *testing.T) {
	srv := jwkstest.NewServer(t, ecJWK(t, "k1"))
	s := direct(t, srv, jwkstest.NewClock(t0))
	s.Close()
	s.Close()

	_, err := s.Key(t.Context(), "k1")
	if !isFetchError(err) || !errors.Is(err, net.ErrClosed) {
		t.Errorf("Key after Close: %v, want a FetchError wrapping net.ErrClosed", err)
	}
	if _, j := srv.Hits(); j != 0 {
		t.Errorf("fetches after Close = %d, want 0", j)
	}
}

func TestNewOptions(t *testing.T) {
	ok := Options{URL: "https://keys.example/certs", Algorithms: rs256}
	tests := map[string]func(*Options){
		"no URL or issuer": func(o *Options) { o.URL = "" },
		"URL and issuer":   func(o *Options) { o.Issuer = "https://issuer.example" },
		"remote http":      func(o *Options) { o.URL = "http://keys.example/certs" },
		"relative":         func(o *Options) { o.URL = "/certs" },
		"bad issuer": func(o *Options) {
			o.URL, o.Issuer = "", "http://issuer.example"
		},
		"no algorithms":     func(o *Options) { o.Algorithms = nil },
		"HS256":             func(o *Options) { o.Algorithms = []jose.SignatureAlgorithm{jose.HS256} },
		"none":              func(o *Options) { o.Algorithms = []jose.SignatureAlgorithm{"none"} },
		"negative interval": func(o *Options) { o.MinRefreshInterval = -1 },
		"negative age":      func(o *Options) { o.MaxAge = -1 },
		"age < interval": func(o *Options) {
			o.MinRefreshInterval, o.MaxAge = time.Hour, time.Minute
		},
	}

	for name, change := range tests {
		t.Run(name, func(t *testing.T) {
			opts := ok
			change(&opts)
			if s, err := New(t.Context(), opts); err == nil {
				s.Close()
				t.Error("New accepted invalid options")
			}
		})
	}

	s, err := New(t.Context(), ok)
	if err != nil {
		t.Fatalf("New(%+v): %v", ok, err)
	}
	s.Close()
}

// waitFor polls cond until it holds or five seconds pass.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
