package ita

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/jwks/jwkstest"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

func TestVerifyValid(t *testing.T) {
	ec := newECKey(t, "ec")
	ps := newRSAKey("ps", jose.PS384)
	rs := newRSAKey("rs", jose.RS256)
	jwks := newFakeJWKS(t, ec, ps, rs)
	clock := newFakeClock()
	v := newTestVerifier(t, jwks, clock)

	for name, tok := range map[string]string{
		"PS384 flat":   ps.sign(t, flatClaims(IntelIssuer, t0)),
		"RS256 flat":   rs.sign(t, flatClaims(IntelIssuer, t0)),
		"ES256 nested": ec.sign(t, nestedClaims(IntelIssuer, t0)),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := v.Verify(context.Background(), tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if diff := cmp.Diff(wantAppraisal(IntelIssuer, t0), got); diff != "" {
				t.Errorf("appraisal (-want +got):\n%s", diff)
			}
		})
	}

	if n := fetches(jwks); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1", n)
	}
}

func TestVerifyRejects(t *testing.T) {
	key := newECKey(t, "k1")
	rs := newRSAKey("rs", jose.RS256)
	stranger := newECKey(t, "k1") // same kid, key the issuer never published
	jwks := newFakeJWKS(t, key, rs)
	claims := func(mutate func(c map[string]any)) map[string]any {
		c := flatClaims(IntelIssuer, t0)
		mutate(c)
		return c
	}

	valid := flatClaims(IntelIssuer, t0)
	skew := 2 * time.Minute // beyond the 60 s leeway

	tests := map[string]struct {
		token  string
		reason string
	}{
		"expired":           {key.sign(t, claims(set("exp", t0.Add(-skew).Unix()))), ReasonExpired},
		"nbf in the future": {key.sign(t, claims(set("nbf", t0.Add(skew).Unix()))), ReasonNotYetValid},
		"iat in the future": {key.sign(t, claims(set("iat", t0.Add(skew).Unix()))), ReasonIssuedFuture},
		"wrong issuer":      {key.sign(t, claims(set("iss", "https://evil.example"))), ReasonIssuer},
		"local issuer":      {key.sign(t, claims(set("iss", "http://127.0.0.1:8702"))), ReasonIssuer},
		"no exp":            {key.sign(t, claims(del("exp"))), ReasonClaims},
		"no iat":            {key.sign(t, claims(del("iat"))), ReasonClaims},
		"no mrtd":           {key.sign(t, claims(del("tdx_mrtd"))), ReasonClaims},
		"sgx":               {key.sign(t, claims(set("attester_type", "SGX"))), ReasonAttesterType},
		"alg none": {unsignedJWT(t, map[string]any{"alg": "none", "kid": "k1"}, valid),
			ReasonAlgorithm},
		"HS256": {jwkstest.SignJWT(t, jose.HS256, []byte("shared secret of 32 bytes ......"), "k1",
			valid), ReasonAlgorithm},
		"HS256 pubkey": {jwkstest.SignJWT(t, jose.HS256, pkix(t, key.public()), "k1", valid),
			ReasonAlgorithm},
		"ES512":  {jwkstest.SignJWT(t, jose.ES512, mustP521(t), "k1", valid), ReasonAlgorithm},
		"no kid": {jwkstest.SignJWT(t, jose.ES256, key.key, "", valid), ReasonMissingKeyID},
		"unknown kid": {jwkstest.SignJWT(t, jose.ES256, key.key, "k9", valid),
			ReasonUnknownKey},
		"forged":     {stranger.sign(t, valid), ReasonSignature},
		"alg of key": {jwkstest.SignJWT(t, jose.PS384, rs.key, "rs", valid), ReasonSignature},
		"garbage":    {"not.a.token", ReasonMalformed},
		"two parts":  {"abc.def", ReasonMalformed},
		"too large":  {strings.Repeat("a", maxTokenSize+1), ReasonMalformed},
		"payload tampered": {tamper(t, key.sign(t, valid),
			key.sign(t, claims(set("tdx_mrtd", strings.Repeat("ee", 48))))), ReasonSignature},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			v := newTestVerifier(t, jwks, newFakeClock())
			_, err := v.Verify(context.Background(), tt.token)
			var ee *EvidenceError
			if !errors.As(err, &ee) || ee.Reason != tt.reason {
				t.Fatalf("Verify error = %v, want reason %q", err, tt.reason)
			}

			var he *httpapi.Error
			if !errors.As(HTTPError(err), &he) || he.Status != http.StatusUnauthorized {
				t.Errorf("HTTPError = %v, want 401", HTTPError(err))
			}
		})
	}
}

// tamper returns a's header and signature around b's payload.
func tamper(t *testing.T, a, b string) string {
	t.Helper()
	ap, bp := strings.Split(a, "."), strings.Split(b, ".")
	return ap[0] + "." + bp[1] + "." + ap[2]
}

// TestVerifyRejectsBeforeFetching: tokens that fail the claim checks never
// make the verifier fetch the issuer's keys.
func TestVerifyRejectsBeforeFetching(t *testing.T) {
	key := newECKey(t, "k1")
	jwks := newFakeJWKS(t, key)
	v := newTestVerifier(t, jwks, newFakeClock())
	c := flatClaims("https://evil.example", t0)
	c["exp"] = t0.Add(-time.Hour).Unix()

	for range 3 {
		if _, err := v.Verify(context.Background(), newECKey(t, "k9").sign(t, c)); err == nil {
			t.Fatal("Verify accepted a foreign token")
		}
	}
	if n := fetches(jwks); n != 0 {
		t.Errorf("JWKS fetched %d times for foreign tokens, want 0", n)
	}
}

func TestVerifyLeeway(t *testing.T) {
	key := newECKey(t, "k1")
	jwks := newFakeJWKS(t, key)
	c := flatClaims(IntelIssuer, t0)
	c["exp"] = t0.Add(-30 * time.Second).Unix()
	c["nbf"] = t0.Add(30 * time.Second).Unix()
	v := newTestVerifier(t, jwks, newFakeClock())
	if _, err := v.Verify(context.Background(), key.sign(t, c)); err != nil {
		t.Errorf("Verify within the leeway: %v", err)
	}
}

func TestVerifyJWKSUnavailable(t *testing.T) {
	k1 := newECKey(t, "k1")
	jwks := newFakeJWKS(t, k1)
	jwks.SetFail(true)
	v := newTestVerifier(t, jwks, newFakeClock())
	_, err := v.Verify(context.Background(), k1.sign(t, flatClaims(IntelIssuer, t0)))
	var fe *FetchError
	if !errors.As(err, &fe) {
		t.Fatalf("error = %v, want a FetchError", err)
	}

	var he *httpapi.Error
	if !errors.As(HTTPError(err), &he) || he.Status != http.StatusBadGateway {
		t.Errorf("HTTPError = %v, want 502", HTTPError(err))
	}
}

func TestVerifyClosed(t *testing.T) {
	k1 := newECKey(t, "k1")
	jwks := newFakeJWKS(t, k1)
	v := newTestVerifier(t, jwks, newFakeClock())
	v.Close()
	v.Close()
	_, err := v.Verify(context.Background(), k1.sign(t, flatClaims(IntelIssuer, t0)))
	var fe *FetchError
	if !errors.As(err, &fe) || fetches(jwks) != 0 {
		t.Errorf("after Close: error = %v, fetches %d; want a FetchError and none", err,
			fetches(jwks))
	}
}

func TestVerifyContextCanceled(t *testing.T) {
	k1 := newECKey(t, "k1")
	jwks := newFakeJWKS(t, k1)
	defer jwks.Hold()()

	v := newTestVerifier(t, jwks, newFakeClock())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := v.Verify(ctx, k1.sign(t, flatClaims(IntelIssuer, t0)))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want context.Canceled", err)
	}
}

func TestVerifierAppraise(t *testing.T) {
	k1 := newECKey(t, "k1")
	jwks := newFakeJWKS(t, k1)
	v := newTestVerifier(t, jwks, newFakeClock())
	tok := k1.sign(t, flatClaims(IntelIssuer, t0))

	// The token's held data is testHeldData, not any 64-byte report data.
	if _, err := v.Appraise(context.Background(), Evidence{Token: tok}); err == nil {
		t.Error("Appraise accepted a token bound to other report data")
	}
	var ee *EvidenceError
	_, err := v.Appraise(context.Background(), Evidence{Quote: []byte{1}})
	if !errors.As(err, &ee) || ee.Reason != ReasonNoEvidence {
		t.Errorf("no token: error = %v, want ReasonNoEvidence", err)
	}
	var he *httpapi.Error
	if !errors.As(HTTPError(err), &he) || he.Status != http.StatusBadRequest {
		t.Errorf("no token: HTTPError = %v, want 400", HTTPError(err))
	}

	c := flatClaims(IntelIssuer, t0)
	c["tdx_report_data"] = strings.Repeat("42", 64)
	delete(c, "attester_held_data")
	var want tdx.ReportData
	for i := range want {
		want[i] = 0x42
	}

	a, err := v.Appraise(context.Background(), Evidence{Token: k1.sign(t, c), ReportData: want})
	if err != nil || a.Measurements.ReportData != want {
		t.Errorf("Appraise = %+v, %v; want the bound appraisal", a, err)
	}
}

func TestNewVerifierOptions(t *testing.T) {
	tests := map[string]VerifierOptions{
		"http remote":    {JWKSURL: "http://keys.example/certs"},
		"relative":       {JWKSURL: "/certs"},
		"HS256 allowed":  {Algorithms: []jose.SignatureAlgorithm{jose.HS256}},
		"no algorithms":  {Algorithms: []jose.SignatureAlgorithm{}},
		"issuer spaces":  {Issuer: " x"},
		"negative":       {Leeway: -1},
		"age < interval": {MinRefreshInterval: time.Hour, KeyMaxAge: time.Minute},
	}

	for name, opts := range tests {
		t.Run(name, func(t *testing.T) {
			if v, err := NewVerifier(context.Background(), opts); err == nil {
				v.Close()
				t.Error("NewVerifier accepted invalid options")
			}
		})
	}
}

func mustP521(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// pkix returns the DER of a public key: the "secret" of the classic
// HS256-with-the-public-key confusion attack.
func pkix(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// BenchmarkTokenVerify measures verifying an ITA-shaped PS384 token with a
// cached key: the cost a token-mode registration pays.
func BenchmarkTokenVerify(b *testing.B) {
	for _, k := range []signingKey{newRSAKey("ps", jose.PS384), newECKey(b, "ec")} {
		b.Run(string(k.alg), func(b *testing.B) {
			jwks := newFakeJWKS(b, k)
			v, err := NewVerifier(context.Background(), VerifierOptions{
				JWKSURL: jwks.JWKSURL(), Now: func() time.Time { return t0 },
			})
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()

			tok := k.sign(b, flatClaims(IntelIssuer, t0))
			ctx := context.Background()
			if _, err := v.Verify(ctx, tok); err != nil {
				b.Fatal(err)
			}

			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := v.Verify(ctx, tok); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
