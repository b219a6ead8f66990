package ghoidc

import (
	"crypto/rand"
	"crypto/rsa"
	"log/slog"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/jwks/jwkstest"
)

const testAudience = "dd-fleet-test"

// t0 is the pinned start of every fake clock.
var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func newFakeClock() *jwkstest.Clock { return jwkstest.NewClock(t0) }

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

// newFakeProvider returns an OIDC provider on httptest publishing keys.
func newFakeProvider(t testing.TB, keys ...signingKey) *jwkstest.Server {
	jwks := make([]jose.JSONWebKey, len(keys))
	for i, k := range keys {
		jwks[i] = k.jwk()
	}
	return jwkstest.NewServer(t, jwks...)
}

// newTestVerifier returns a verifier of p's tokens on clock, closed at the
// end of the test.
func newTestVerifier(t testing.TB, issuer string, clock *jwkstest.Clock) *Verifier {
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
