package ita

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/jwks/jwkstest"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// t0 is the pinned start of every fake clock.
var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func newFakeClock() *jwkstest.Clock { return jwkstest.NewClock(t0) }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// rsaTestKey is generated once: RSA key generation is slow and the tests
// only need a key the verifier does not otherwise know.
var rsaTestKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// signingKey is a private key with the kid and alg it is published under.
type signingKey struct {
	kid string
	alg jose.SignatureAlgorithm
	key any // *ecdsa.PrivateKey or *rsa.PrivateKey
}

func newECKey(t testing.TB, kid string) signingKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid: kid, alg: jose.ES256, key: k}
}

func newRSAKey(kid string, alg jose.SignatureAlgorithm) signingKey {
	return signingKey{kid: kid, alg: alg, key: rsaTestKey()}
}

func (k signingKey) public() any {
	switch p := k.key.(type) {
	case *ecdsa.PrivateKey:
		return &p.PublicKey
	case *rsa.PrivateKey:
		return &p.PublicKey
	}
	panic("unknown key type")
}

func (k signingKey) jwk() jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.public(), KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"}
}

// sign signs claims with k under its alg and kid, as any issuer would.
func (k signingKey) sign(t testing.TB, claims any) string {
	t.Helper()
	return jwkstest.SignJWT(t, k.alg, k.key, k.kid, claims)
}

// unsignedJWT builds header.payload. with no signature, for "none".
func unsignedJWT(t testing.TB, header, claims any) string {
	t.Helper()
	enc := func(v any) string {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(data)
	}

	return enc(header) + "." + enc(claims) + "."
}

// Measurement values of the test tokens.
var (
	testMRTD = strings.Repeat("a1", 48)
	testRTMR = [4]string{strings.Repeat("b0", 48), strings.Repeat("b1", 48),
		strings.Repeat("b2", 48), strings.Repeat("00", 48)}
	testMRSEAM   = strings.Repeat("5e", 48)
	testHeldData = []byte("runtime data of the agent")
	testNonce    = &VerifierNonce{Val: []byte("nonce-val"),
		Iat: []byte("2025-06-01T11:59:00Z"), Signature: []byte("sig")}
	testReportData = ReportData(testNonce, testHeldData)
)

// teeFields are the TDX claims of an ITA token for a production TD.
func teeFields() map[string]any {
	return map[string]any{
		"attester_type":           "TDX",
		"attester_tcb_status":     "UpToDate",
		"attester_tcb_date":       "2024-03-13T00:00:00Z",
		"attester_advisory_ids":   []string{"INTEL-SA-00837"},
		"attester_held_data":      base64.StdEncoding.EncodeToString(testHeldData),
		"dbgstat":                 "disabled",
		"verifier_nonce":          testNonce,
		"tdx_mrtd":                testMRTD,
		"tdx_rtmr0":               testRTMR[0],
		"tdx_rtmr1":               testRTMR[1],
		"tdx_rtmr2":               testRTMR[2],
		"tdx_rtmr3":               testRTMR[3],
		"tdx_mrseam":              testMRSEAM,
		"tdx_mrsignerseam":        strings.Repeat("00", 48),
		"tdx_td_attributes":       "0000001000000000",
		"tdx_td_attributes_debug": false,
		"tdx_is_debuggable":       false,
		"tdx_xfam":                "e718060000000000",
		"tdx_tee_tcb_svn":         "03000400000000000000000000000000",
		"tdx_report_data":         hex.EncodeToString(testReportData[:]),
		"tdx_seamsvn":             264,
		"tdx_collateral": map[string]any{
			"fmspc": "50806F000000", "tcbevaluationdatanumber": 17,
		},
	}
}

// registered returns the JWT claims of a token issued at now by iss.
func registered(iss string, now time.Time) map[string]any {
	return map[string]any{
		"iss": iss,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(5 * time.Minute).Unix(),
		"jti": "448d929c-dadb-4cb9-b3f7-2f2ba8b98765",
		"verifier_instance_ids": []string{
			"357a11dd-b02e-47df-9b2c-7d1d7a3f0a11", "bda9d175-6cf3-421f-8d2e-1c8b0e2f9a22",
		},
		"eat_profile": "https://portal.trustauthority.intel.com/eat_profile.html",
		"intuse":      "generic",
	}
}

// flatClaims is a version 1 token payload: TDX claims at the top level.
func flatClaims(iss string, now time.Time) map[string]any {
	c := registered(iss, now)
	for k, v := range teeFields() {
		c[k] = v
	}
	c["ver"] = "1.0.0"
	return c
}

// nestedClaims is a version 2 token payload: TDX claims under "tdx".
func nestedClaims(iss string, now time.Time) map[string]any {
	c := registered(iss, now)
	c["tdx"] = teeFields()
	c["ver"] = "2.0.0"
	return c
}

// wantAppraisal is the appraisal of flatClaims and nestedClaims.
func wantAppraisal(iss string, now time.Time) *Appraisal {
	return &Appraisal{
		Type: tdx.TypeTDX, Source: SourceToken, Issuer: iss, AttesterType: "TDX",
		Measurements: tdx.Measurements{
			TEETCBSVN:    mustHex("03000400000000000000000000000000"),
			MRSEAM:       mustHex(testMRSEAM),
			MRSignerSEAM: make(tdx.Hex, 48),
			TDAttributes: mustHex("0000001000000000"),
			XFAM:         mustHex("e718060000000000"),
			MRTD:         mustHex(testMRTD),
			RTMR: [4]tdx.Hex{mustHex(testRTMR[0]), mustHex(testRTMR[1]), mustHex(testRTMR[2]),
				mustHex(testRTMR[3])},
			ReportData: testReportData,
		},
		TCB: &tdx.TCB{Status: "UpToDate", Date: time.Date(2024, 3, 13, 0, 0, 0, 0, time.UTC),
			AdvisoryIDs: []string{"INTEL-SA-00837"}},
		FMSPC:         "50806f000000",
		HeldData:      testHeldData,
		VerifierNonce: testNonce,
		TokenID:       "448d929c-dadb-4cb9-b3f7-2f2ba8b98765",
		VerifierInstanceIDs: []string{
			"357a11dd-b02e-47df-9b2c-7d1d7a3f0a11", "bda9d175-6cf3-421f-8d2e-1c8b0e2f9a22",
		},
		IssuedAt:  now.UTC(),
		ExpiresAt: now.Add(5 * time.Minute).UTC(),
	}
}

func mustHex(s string) tdx.Hex {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// newFakeJWKS serves keys on httptest as the issuer's key set.
func newFakeJWKS(t testing.TB, keys ...signingKey) *jwkstest.Server {
	set := make([]jose.JSONWebKey, len(keys))
	for i, k := range keys {
		set[i] = k.jwk()
	}
	return jwkstest.NewServer(t, set...)
}

// fetches is how many times the key set of jwks was fetched.
func fetches(jwks *jwkstest.Server) int {
	_, n := jwks.Hits()
	return n
}

// newTestVerifier returns a verifier of tokens issued by IntelIssuer with
// keys from jwks, on clock.
func newTestVerifier(t testing.TB, jwks *jwkstest.Server, clock *jwkstest.Clock) *Verifier {
	t.Helper()
	v, err := NewVerifier(context.Background(), VerifierOptions{
		JWKSURL: jwks.JWKSURL(), Now: clock.Now, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// newTestSimulator returns a simulated TD with fixed measurements.
func newTestSimulator(t testing.TB) *tdx.Simulator {
	t.Helper()
	sim, err := tdx.NewSimulator(tdx.SimulatorOptions{
		MRTD: mustHex(testMRTD),
		RTMR: [4][]byte{mustHex(testRTMR[0]), mustHex(testRTMR[1])},
		// The chain is dated from the fake clocks start, not the real time.
		Now: func() time.Time { return t0 },
	})
	if err != nil {
		t.Fatal(err)
	}
	return sim
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// sha512Of is SHA-512 of the concatenated parts.
func sha512Of(parts ...[]byte) [64]byte {
	h := sha512.New()
	for _, p := range parts {
		h.Write(p)
	}
	var out [64]byte
	h.Sum(out[:0])
	return out
}

// del and set return claim mutations for table tests.
func del(key string) func(map[string]any) {
	return func(c map[string]any) { delete(c, key) }
}

func set(key string, v any) func(map[string]any) {
	return func(c map[string]any) { c[key] = v }
}
