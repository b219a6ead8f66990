package ghoidc

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/jwks/jwkstest"
)

func TestVerify(t *testing.T) {
	key := newSigningKey(t, "k1")
	other := newSigningKey(t, "k1") // same kid, key not published
	p := newFakeProvider(t, key)
	clock := newFakeClock()
	v := newTestVerifier(t, p.URL(), clock)

	// with returns GitHub claims changed by kv pairs; a nil value deletes.
	with := func(kv ...any) map[string]any {
		c := githubClaims(p.URL(), t0)
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(c, kv[i].(string))
			} else {
				c[kv[i].(string)] = kv[i+1]
			}
		}
		return c
	}

	rs := func(claims map[string]any) string {
		return jwkstest.SignJWT(t, jose.RS256, key.key, key.kid, claims)
	}

	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY",
		Bytes: must(x509.MarshalPKIXPublicKey(&key.key.PublicKey))})

	tests := []struct {
		name   string
		token  string
		reason string // "" means valid
	}{
		{"valid", rs(with()), ""},
		{"aud array", rs(with("aud", []string{"other", testAudience})), ""},
		{"ids as numbers", rs(with("repository_id", 884121234, "repository_owner_id", 67890123)), ""},
		{"no nbf", rs(with("nbf", nil)), ""},
		{"expired within leeway", rs(with("exp", t0.Add(-59*time.Second).Unix())), ""},
		{"expired", rs(with("exp", t0.Add(-61*time.Second).Unix())), ReasonExpired},
		{"nbf within leeway", rs(with("nbf", t0.Add(59*time.Second).Unix())), ""},
		{"nbf in future", rs(with("nbf", t0.Add(2*time.Minute).Unix())), ReasonNotYetValid},
		{"iat in future", rs(with("iat", t0.Add(2*time.Minute).Unix())), ReasonIssuedFuture},
		{"wrong audience", rs(with("aud", "dd-agent")), ReasonAudience},
		{"no audience", rs(with("aud", nil)), ReasonAudience},
		{"wrong issuer", rs(with("iss", GitHubIssuer)), ReasonIssuer},
		{"no iat", rs(with("iat", nil)), ReasonMissingClaim},
		{"no exp", rs(with("exp", nil)), ReasonMissingClaim},
		{"no sub", rs(with("sub", nil)), ReasonMissingClaim},
		{"no owner id", rs(with("repository_owner_id", nil)), ReasonMissingClaim},
		{"no repository id", rs(with("repository_id", nil)), ReasonMissingClaim},
		{"invalid id", rs(with("repository_id", "12ab")), ReasonClaims},
		{"fractional id", rs(with("repository_owner_id", 1.5)), ReasonClaims},
		{"exp as string", rs(with("exp", "1748779500")), ReasonClaims},
		{"hs256 with public key", jwkstest.SignJWT(t, jose.HS256, pubPEM, key.kid, with()), ReasonAlgorithm},
		{"rs512", jwkstest.SignJWT(t, jose.RS512, key.key, key.kid, with()), ReasonAlgorithm},
		{"ps256", jwkstest.SignJWT(t, jose.PS256, key.key, key.kid, with()), ReasonAlgorithm},
		{"alg none", noneToken(t, key.kid, with()), ReasonAlgorithm},
		{"no kid", jwkstest.SignJWT(t, jose.RS256, key.key, "", with()), ReasonMissingKeyID},
		{"unknown kid", jwkstest.SignJWT(t, jose.RS256, key.key, "k9", with()), ReasonUnknownKey},
		{"other key same kid", jwkstest.SignJWT(t, jose.RS256, other.key, "k1", with()), ReasonSignature},
		{"tampered payload", tamper(t, rs(with())), ReasonSignature},
		{"garbage", "not.a.jwt", ReasonMalformed},
		{"empty", "", ReasonMalformed},
		{"huge", strings.Repeat("a", maxTokenSize+1), ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claims, err := v.Verify(t.Context(), tt.token)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if claims.RepositoryOwnerID != 67890123 || claims.RepositoryID != 884121234 {
					t.Errorf("ids = %d, %d", claims.RepositoryOwnerID, claims.RepositoryID)
				}
				return
			}

			var te *TokenError
			if !errors.As(err, &te) {
				t.Fatalf("Verify error = %v, want a TokenError", err)
			}
			if te.Reason != tt.reason {
				t.Errorf("reason = %q (%v), want %q", te.Reason, err, tt.reason)
			}
		})
	}
}

func TestVerifyClaims(t *testing.T) {
	key := newSigningKey(t, "k1")
	p := newFakeProvider(t, key)
	v := newTestVerifier(t, p.URL(), newFakeClock())

	got, err := v.Verify(t.Context(), jwkstest.SignJWT(t, jose.RS256, key.key, key.kid,
		githubClaims(p.URL(), t0)))
	if err != nil {
		t.Fatal(err)
	}

	want := &Claims{
		Issuer: p.URL(), Subject: "repo:acme/app:ref:refs/heads/main",
		Audience: []string{testAudience}, Expiry: t0.Add(5 * time.Minute), IssuedAt: t0,
		NotBefore: t0, ID: "2f4a1e0c-8f57-4b5e-9d0a-0c1d2e3f4a5b",
		Repository: "acme/app", RepositoryID: 884121234,
		RepositoryOwner: "acme", RepositoryOwnerID: 67890123,
		Ref: "refs/heads/main", RefType: "branch", SHA: "0123456789abcdef0123456789abcdef01234567",
		Workflow:       "deploy",
		WorkflowRef:    "acme/app/.github/workflows/deploy.yml@refs/heads/main",
		JobWorkflowRef: "acme/app/.github/workflows/deploy.yml@refs/heads/main",
		RunID:          5298213421, RunNumber: 7, RunAttempt: 1,
		Actor: "alice", ActorID: 12345678, EventName: "push", Environment: "prod",
		RunnerEnvironment: "github-hosted",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
}

// A foreign or expired token is refused before any key fetch.
func TestVerifyClaimsBeforeKeys(t *testing.T) {
	key := newSigningKey(t, "k1")
	p := newFakeProvider(t, key)
	v := newTestVerifier(t, p.URL(), newFakeClock())

	c := githubClaims(p.URL(), t0)
	c["aud"] = "another-fleet"
	if _, err := v.Verify(t.Context(), jwkstest.SignJWT(t, jose.RS256, key.key, "random", c)); err == nil {
		t.Fatal("foreign token accepted")
	}

	if d, j := p.Hits(); d+j != 0 {
		t.Errorf("fetches = %d discovery, %d jwks; want none", d, j)
	}
}

func TestFetchFailures(t *testing.T) {
	key := newSigningKey(t, "k1")
	p := newFakeProvider(t, key)
	clock := newFakeClock()
	v := newTestVerifier(t, p.URL(), clock)

	token := func() string {
		return jwkstest.SignJWT(t, jose.RS256, key.key, key.kid, githubClaims(p.URL(), clock.Now()))
	}
	var fe *FetchError

	// An unreachable key set gives a FetchError, not a token verdict, and
	// is not retried within the interval.
	p.SetFail(true)
	for range 3 {
		if _, err := v.Verify(t.Context(), token()); !errors.As(err, &fe) || fe.Op != "jwks" {
			t.Fatalf("Verify with JWKS down: %v, want a jwks FetchError", err)
		}
	}

	if _, j := p.Hits(); j != 1 {
		t.Errorf("jwks fetches = %d, want 1", j)
	}
	if he := asHTTP(HTTPError(fe)); he == nil || he.Status != http.StatusBadGateway {
		t.Errorf("HTTPError(FetchError) = %v, want 502", HTTPError(fe))
	}

	// Recovery after the interval.
	p.SetFail(false)
	clock.Advance(30 * time.Second)
	if _, err := v.Verify(t.Context(), token()); err != nil {
		t.Fatalf("Verify after recovery: %v", err)
	}

	// Stale keys stay in use when their refresh fails.
	p.SetFail(true)
	clock.Advance(2 * time.Hour)
	if _, err := v.Verify(t.Context(), token()); err != nil {
		t.Fatalf("Verify with stale keys and JWKS down: %v", err)
	}
	if _, j := p.Hits(); j != 3 {
		t.Errorf("jwks fetches = %d, want 3", j)
	}
}

func TestDiscoveryIssuerMismatch(t *testing.T) {
	key := newSigningKey(t, "k1")
	p := newFakeProvider(t, key)
	p.SetDocIssuer(GitHubIssuer)
	v := newTestVerifier(t, p.URL(), newFakeClock())

	_, err := v.Verify(t.Context(), jwkstest.SignJWT(t, jose.RS256, key.key, key.kid,
		githubClaims(p.URL(), t0)))
	var fe *FetchError
	if !errors.As(err, &fe) || fe.Op != "discovery" {
		t.Fatalf("Verify: %v, want a discovery FetchError", err)
	}
}

func TestClose(t *testing.T) {
	key := newSigningKey(t, "k1")
	p := newFakeProvider(t, key)
	v := newTestVerifier(t, p.URL(), newFakeClock())
	v.Close()
	v.Close()

	_, err := v.Verify(t.Context(), jwkstest.SignJWT(t, jose.RS256, key.key, key.kid,
		githubClaims(p.URL(), t0)))
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Verify after Close: %v, want net.ErrClosed", err)
	}
}

func TestNewVerifierOptions(t *testing.T) {
	tests := []struct {
		name string
		opts VerifierOptions
		ok   bool
	}{
		{"github default", VerifierOptions{Audience: "fleet"}, true},
		{"loopback http", VerifierOptions{Issuer: "http://127.0.0.1:9", Audience: "a"}, true},
		{"no audience", VerifierOptions{}, false},
		{"spaced audience", VerifierOptions{Audience: " a"}, false},
		{"remote http", VerifierOptions{Issuer: "http://example.com", Audience: "a"}, false},
		{"relative", VerifierOptions{Issuer: "example.com", Audience: "a"}, false},
		{"negative leeway", VerifierOptions{Audience: "a", Leeway: -time.Second}, false},
		{"max age below interval", VerifierOptions{Audience: "a", KeyMaxAge: time.Second}, false},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NewVerifier(t.Context(), tt.opts)
			if (err == nil) != tt.ok {
				t.Fatalf("NewVerifier: %v, want ok=%v", err, tt.ok)
			}
			if v != nil {
				v.Close()
			}
		})
	}
}

func TestHTTPError(t *testing.T) {
	he := asHTTP(HTTPError(fmt.Errorf("deploy: %w", &TokenError{Reason: ReasonExpired})))
	want := "invalid token: token expired"
	if he == nil || he.Status != http.StatusUnauthorized || he.Message != want {
		t.Errorf("HTTPError(TokenError) = %+v", he)
	}

	if err := HTTPError(context.Canceled); err != context.Canceled {
		t.Errorf("HTTPError(other) = %v, want it unchanged", err)
	}
}

func BenchmarkVerify(b *testing.B) {
	key := newSigningKey(b, "k1")
	p := newFakeProvider(b, key)
	v := newTestVerifier(b, p.URL(), newFakeClock())
	tok := jwkstest.SignJWT(b, jose.RS256, key.key, key.kid, githubClaims(p.URL(), t0))
	if _, err := v.Verify(b.Context(), tok); err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(b.Context(), tok); err != nil {
			b.Fatal(err)
		}
	}
}

// noneToken builds an unsigned token with alg "none"; go-jose refuses to
// make one.
func noneToken(t *testing.T, kid string, claims any) string {
	head, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT", "kid": kid})
	body, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc(head) + "." + enc(body) + "."
}

// tamper changes the token's payload and keeps its signature.
func tamper(t *testing.T, tok string) string {
	parts := strings.Split(tok, ".")
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}

	body = []byte(strings.Replace(string(body), `"acme/app"`, `"acme/evil"`, 1))
	parts[1] = base64.RawURLEncoding.EncodeToString(body)
	return strings.Join(parts, ".")
}

func asHTTP(err error) *httpapi.Error {
	var he *httpapi.Error
	if errors.As(err, &he) {
		return he
	}
	return nil
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
