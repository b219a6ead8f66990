package ita

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/jwks/jwkstest"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

const authorityKey = "local-authority-api-key"

// testAuthority is a local authority on httptest trusting sim's root and
// Intel's, with a client and a verifier pointed at it.
type testAuthority struct {
	auth   *Authority
	srv    *httptest.Server
	client *Client
	ver    *Verifier
	clock  *jwkstest.Clock
}

func newTestAuthority(t *testing.T, sim *tdx.Simulator, opts AuthorityOptions) *testAuthority {
	t.Helper()
	ta := &testAuthority{clock: newFakeClock()}
	// The URL is the issuer, so the server must exist before the
	// authority; its handler is set once the authority is built.
	var h http.Handler = http.NotFoundHandler()
	ta.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(ta.srv.Close)

	opts.URL, opts.APIKey, opts.Logger = ta.srv.URL, authorityKey, testLogger(t)
	if opts.SimulatedRoots == nil {
		opts.SimulatedRoots = poolOf(sim.Root())
	}
	if opts.Now == nil {
		opts.Now = ta.clock.Now
	}
	auth, err := NewAuthority(opts)
	if err != nil {
		t.Fatal(err)
	}

	ta.auth, h = auth, auth.Handler()

	ta.client, err = NewClient(ClientOptions{BaseURL: auth.URL(), APIKey: authorityKey})
	if err != nil {
		t.Fatal(err)
	}

	ta.ver, err = NewVerifier(context.Background(), VerifierOptions{
		JWKSURL: auth.JWKSURL(), Issuer: auth.URL(), Now: ta.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ta.ver.Close() })
	return ta
}

// expected is report data a relying party would compute from its nonce
// and an agent's keys.
var expected = tdx.ReportData{0xdd, 1, 2, 3}

func TestAuthorityEndToEnd(t *testing.T) {
	sim := newTestSimulator(t)
	ta := newTestAuthority(t, sim, AuthorityOptions{})
	ctx := context.Background()

	// Agent: nonce → quote over SHA-512(nonce || runtime data) → token.
	tok, quote, err := ta.client.Token(ctx, sim, expected[:])
	if err != nil {
		t.Fatalf("Token: %v", err)
	}

	// Relying party: verify the token and its binding to expected.
	got, err := ta.ver.Appraise(ctx, Evidence{Token: tok, Quote: quote, ReportData: expected})
	if err != nil {
		t.Fatalf("Appraise: %v", err)
	}

	simM, err := tdx.Parse(quote)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(*simM, got.Measurements); diff != "" {
		t.Errorf("measurements differ from the simulator's (-sim +token):\n%s", diff)
	}

	if got.Type != tdx.TypeSimulated || got.AttesterType != "simulated" ||
		got.Issuer != ta.auth.URL() || got.Source != SourceToken {
		t.Errorf("appraisal = %+v, want a simulated token of the local issuer", got)
	}

	if got.TCB == nil || got.TCB.Status != "UpToDate" {
		t.Errorf("TCB = %+v, want UpToDate", got.TCB)
	}
	if !got.IssuedAt.Equal(t0) || !got.ExpiresAt.Equal(t0.Add(5*time.Minute)) {
		t.Errorf("issued %v, expires %v; want %v + 5 min", got.IssuedAt, got.ExpiresAt, t0)
	}

	// The token carries ITA's v1 claims and the local marker.
	var claims map[string]any
	if err := json.Unmarshal(payloadOf(t, tok), &claims); err != nil {
		t.Fatal(err)
	}

	for _, k := range []string{"tdx_mrtd", "tdx_rtmr3", "attester_held_data", "verifier_nonce",
		"attester_tcb_status", "verifier_instance_ids", "jti"} {
		if claims[k] == nil {
			t.Errorf("token has no %s claim", k)
		}
	}

	if claims["dd_local_authority"] != true {
		t.Error("token is not marked as the local authority's")
	}

	// A quote sent along must be the one the token appraised.
	other, err := sim.Quote(ctx, tdx.ReportData{1})
	if err != nil {
		t.Fatal(err)
	}

	for name, q := range map[string][]byte{"not a quote": []byte("not a quote"),
		"another quote": other} {
		_, err := ta.ver.Appraise(ctx, Evidence{Token: tok, Quote: q, ReportData: expected})
		var ee *EvidenceError
		if !errors.As(err, &ee) || ee.Reason != ReasonQuote {
			t.Errorf("%s with the token: %v, want %q", name, err, ReasonQuote)
		}
	}
}

// TestAuthorityDirectReportData: a quote made directly over the expected
// report data, sent without nonce or runtime data, yields a token that
// binds it too.
func TestAuthorityDirectReportData(t *testing.T) {
	sim := newTestSimulator(t)
	ta := newTestAuthority(t, sim, AuthorityOptions{})
	ctx := context.Background()
	quote, err := sim.Quote(ctx, expected)
	if err != nil {
		t.Fatal(err)
	}

	tok, err := ta.client.Attest(ctx, AttestRequest{Quote: quote})
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}

	if _, err := ta.ver.Appraise(ctx, Evidence{Token: tok, ReportData: expected}); err != nil {
		t.Errorf("Appraise: %v", err)
	}
	other := Evidence{Token: tok, ReportData: tdx.ReportData{1}}
	if _, err := ta.ver.Appraise(ctx, other); err == nil {
		t.Error("Appraise accepted the token for other report data")
	}
}

// attestStatus posts body to the authority and returns the HTTP status.
func attestStatus(t *testing.T, ta *testAuthority, apiKey string, body any) int {
	t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}

	req, err := http.NewRequest(http.MethodPost, ta.srv.URL+"/appraisal/v1/attest",
		bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}

	req.Header.Set("x-api-key", apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func TestAuthorityRefuses(t *testing.T) {
	sim := newTestSimulator(t)
	foreign := newTestSimulator(t) // a TD whose root the authority does not trust

	tests := map[string]struct {
		body   func(t *testing.T, ta *testAuthority) any
		apiKey string
		status int
	}{
		"replayed nonce": {body: func(t *testing.T, ta *testAuthority) any {
			req := validRequest(t, ta, sim)
			if status := attestStatus(t, ta, authorityKey, req); status != http.StatusOK {
				t.Fatalf("first use: status %d", status)
			}
			return req
		}, status: http.StatusConflict},
		"forged nonce signature": {body: func(t *testing.T, ta *testAuthority) any {
			req := validRequest(t, ta, sim)
			req.VerifierNonce.Signature[0] ^= 1
			return req
		}, status: http.StatusBadRequest},
		"nonce made up": {body: func(t *testing.T, ta *testAuthority) any {
			n := &VerifierNonce{Val: bytes.Repeat([]byte{7}, 32),
				Iat: []byte(t0.Format(time.RFC3339)), Signature: bytes.Repeat([]byte{1}, 48)}
			return requestFor(t, sim, n, expected[:])
		}, status: http.StatusBadRequest},
		"nonce iat moved": {body: func(t *testing.T, ta *testAuthority) any {
			n := nonceOf(t, ta)
			n.Iat = []byte(t0.Add(time.Hour).Format(time.RFC3339))
			return requestFor(t, sim, n, expected[:])
		}, status: http.StatusBadRequest},
		"expired nonce": {body: func(t *testing.T, ta *testAuthority) any {
			req := validRequest(t, ta, sim)
			ta.clock.Advance(6 * time.Minute)
			return req
		}, status: http.StatusBadRequest},
		"report data not bound": {body: func(t *testing.T, ta *testAuthority) any {
			req := validRequest(t, ta, sim)
			req.RuntimeData = []byte("other keys")
			return req
		}, status: http.StatusBadRequest},
		"foreign root": {body: func(t *testing.T, ta *testAuthority) any {
			return requestFor(t, foreign, nonceOf(t, ta), expected[:])
		}, status: http.StatusBadRequest},
		"garbage quote": {body: func(t *testing.T, ta *testAuthority) any {
			return AttestRequest{Quote: []byte("not a quote")}
		}, status: http.StatusBadRequest},
		"no quote": {body: func(t *testing.T, ta *testAuthority) any {
			return map[string]any{"runtime_data": "eA=="}
		}, status: http.StatusBadRequest},
		"policy ids": {body: func(t *testing.T, ta *testAuthority) any {
			req := validRequest(t, ta, sim)
			req.PolicyIDs = []string{"9d6a1ef4-6b3d-4a3f-a0d5-3c5b9b0e1c11"}
			return req
		}, status: http.StatusBadRequest},
		"unknown field": {body: func(t *testing.T, ta *testAuthority) any {
			return map[string]any{"quote": "BAA=", "tdx": map[string]any{}}
		}, status: http.StatusBadRequest},
		"wrong API key": {body: func(t *testing.T, ta *testAuthority) any {
			return validRequest(t, ta, sim)
		}, apiKey: "local-authority-api-kez", status: http.StatusUnauthorized},
		"no API key": {body: func(t *testing.T, ta *testAuthority) any {
			return validRequest(t, ta, sim)
		}, apiKey: "-", status: http.StatusUnauthorized},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			ta := newTestAuthority(t, sim, AuthorityOptions{})

			key := authorityKey
			switch tt.apiKey {
			case "":
			case "-":
				key = ""
			default:
				key = tt.apiKey
			}
			if got := attestStatus(t, ta, key, tt.body(t, ta)); got != tt.status {
				t.Errorf("status = %d, want %d", got, tt.status)
			}
		})
	}
}

// validRequest returns an attest request the authority accepts once.
func validRequest(t *testing.T, ta *testAuthority, sim *tdx.Simulator) AttestRequest {
	t.Helper()
	return requestFor(t, sim, nonceOf(t, ta), expected[:])
}

func nonceOf(t *testing.T, ta *testAuthority) *VerifierNonce {
	t.Helper()
	n, err := ta.client.Nonce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func requestFor(t *testing.T, sim *tdx.Simulator, n *VerifierNonce, runtime []byte) AttestRequest {
	t.Helper()
	quote, err := sim.Quote(context.Background(), ReportData(n, runtime))
	if err != nil {
		t.Fatal(err)
	}
	return AttestRequest{Quote: quote, RuntimeData: runtime, VerifierNonce: n}
}

func TestAuthorityNonceRequiresKey(t *testing.T) {
	ta := newTestAuthority(t, newTestSimulator(t), AuthorityOptions{})
	bad, err := NewClient(ClientOptions{BaseURL: ta.auth.URL(), APIKey: "wrong"})
	if err != nil {
		t.Fatal(err)
	}

	var ae *APIError
	if _, err := bad.Nonce(context.Background()); !errors.As(err, &ae) || ae.StatusCode != 401 {
		t.Errorf("nonce with a wrong key: error = %v, want 401", err)
	}
	// The JWKS is public, as Intel's.
	resp, err := http.Get(ta.auth.JWKSURL())
	if err != nil {
		t.Fatal(err)
	}

	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /certs: status %d", resp.StatusCode)
	}
}

// TestAuthorityIntelQuote: a real quote verifies against Intel's root and
// gets attester_type "TDX", never "simulated".
func TestAuthorityIntelQuote(t *testing.T) {
	raw, err := os.ReadFile(realQuote)
	if err != nil {
		t.Fatal(err)
	}

	sim := newTestSimulator(t)
	at := func() time.Time { return collateralDate }
	ta := newTestAuthority(t, sim, AuthorityOptions{Now: at})
	ta.ver.Close()
	ver, err := NewVerifier(context.Background(), VerifierOptions{JWKSURL: ta.auth.JWKSURL(),
		Issuer: ta.auth.URL(), Now: at})
	if err != nil {
		t.Fatal(err)
	}
	defer ver.Close()

	tok, err := ta.client.Attest(context.Background(), AttestRequest{Quote: raw})
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	a, err := ver.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}

	if a.Type != tdx.TypeTDX || a.AttesterType != "TDX" || a.TCB != nil ||
		a.FMSPC != "50806f000000" {
		t.Errorf("appraisal = %+v, want TDX with no TCB (no collateral)", a)
	}
}

func TestAuthorityKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ita-key.pem")
	sim := newTestSimulator(t)
	first := newTestAuthority(t, sim, AuthorityOptions{KeyPath: path})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	second := newTestAuthority(t, sim, AuthorityOptions{KeyPath: path})
	if first.auth.kid != second.auth.kid {
		t.Error("the same key file gave another key")
	}

	if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}

	_, err = NewAuthority(AuthorityOptions{URL: "http://127.0.0.1:1", APIKey: authorityKey,
		KeyPath: path})
	if err == nil {
		t.Error("NewAuthority accepted a corrupt key file")
	}
	if data, _ := os.ReadFile(path); string(data) != "not a key" {
		t.Error("a corrupt key file was replaced")
	}
}

func TestNewAuthorityOptions(t *testing.T) {
	tests := map[string]AuthorityOptions{
		"no URL":        {APIKey: authorityKey},
		"Intel issuer":  {URL: IntelIssuer, APIKey: authorityKey},
		"Intel host":    {URL: "https://ita.intel.com", APIKey: authorityKey},
		"remote http":   {URL: "http://ita.example", APIKey: authorityKey},
		"short API key": {URL: "http://127.0.0.1:1", APIKey: "short"},
		"negative TTL":  {URL: "http://127.0.0.1:1", APIKey: authorityKey, NonceTTL: -1},
	}

	for name, opts := range tests {
		if _, err := NewAuthority(opts); err == nil {
			t.Errorf("%s: NewAuthority accepted invalid options", name)
		}
	}
}

// payloadOf returns the decoded payload of a compact JWS.
func payloadOf(t *testing.T, tok string) []byte {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}

	data, err := base64URL(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	return data
}
