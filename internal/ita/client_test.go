package ita

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const testAPIKey = "djE6ZmFrZS1pdGEtYXBpLWtleQ"

// fakeITA is Intel Trust Authority's appraisal API on httptest. It checks
// the headers of every request and records attest bodies.
type fakeITA struct {
	t   *testing.T
	srv *httptest.Server

	nonceStatus, attestStatus int    // 0 means 200
	attestBody                string // the reply; "" means {"token": fakeToken}

	mu      sync.Mutex
	attests []map[string]any
}

const fakeToken = "eyJhbGciOiJQUzM4NCJ9.eyJ2ZXIiOiIxLjAuMCJ9.c2ln"

func newFakeITA(t *testing.T) *fakeITA {
	f := &fakeITA{t: t}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /appraisal/v1/nonce", f.serveNonce)
	mux.HandleFunc("POST /appraisal/v1/attest", f.serveAttest)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeITA) client(t *testing.T) *Client {
	t.Helper()
	c, err := NewClient(ClientOptions{BaseURL: f.srv.URL + "/", APIKey: testAPIKey,
		Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fakeITA) checkHeaders(w http.ResponseWriter, r *http.Request) bool {
	if r.Header.Get("x-api-key") != testAPIKey {
		w.Header().Set("request-id", "req-401")
		http.Error(w, `{"error":"invalid api key `+r.Header.Get("x-api-key")+`"}`,
			http.StatusUnauthorized)
		return false
	}

	if r.Header.Get("Accept") != "application/json" {
		f.t.Errorf("Accept = %q, want application/json", r.Header.Get("Accept"))
	}
	return true
}

func (f *fakeITA) serveNonce(w http.ResponseWriter, r *http.Request) {
	if !f.checkHeaders(w, r) {
		return
	}
	if f.nonceStatus != 0 {
		w.Header().Set("request-id", "req-nonce")
		http.Error(w, "nope", f.nonceStatus)
		return
	}

	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"val":"dmFs","iat":"MjAyNS0wNi0wMVQxMjowMDowMFo=","signature":"c2ln"}`)
}

func (f *fakeITA) serveAttest(w http.ResponseWriter, r *http.Request) {
	if !f.checkHeaders(w, r) {
		return
	}

	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		f.t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		f.t.Errorf("attest body: %v", err)
	}
	f.mu.Lock()
	f.attests = append(f.attests, body)
	f.mu.Unlock()

	if f.attestStatus != 0 {
		w.Header().Set("request-id", "req-5xx")
		http.Error(w, "backend exploded", f.attestStatus)
		return
	}

	w.Header().Set("Content-Type", "application/json")
	if f.attestBody != "" {
		io.WriteString(w, f.attestBody)
		return
	}
	json.NewEncoder(w).Encode(map[string]string{"token": fakeToken})
}

func TestClientNonceAndAttest(t *testing.T) {
	f := newFakeITA(t)
	c := f.client(t)
	ctx := context.Background()

	n, err := c.Nonce(ctx)
	if err != nil {
		t.Fatalf("Nonce: %v", err)
	}

	want := &VerifierNonce{Val: []byte("val"), Iat: []byte("2025-06-01T12:00:00Z"),
		Signature: []byte("sig")}
	if diff := cmp.Diff(want, n); diff != "" {
		t.Errorf("nonce (-want +got):\n%s", diff)
	}

	tok, err := c.Attest(ctx, AttestRequest{
		Quote: []byte{4, 0, 2}, RuntimeData: []byte("rd"), VerifierNonce: n,
		PolicyIDs:       []string{"9d6a1ef4-6b3d-4a3f-a0d5-3c5b9b0e1c11"},
		TokenSigningAlg: "PS384",
	})
	if err != nil || tok != fakeToken {
		t.Fatalf("Attest = %q, %v", tok, err)
	}

	// Byte fields travel as standard base64, as Intel's API defines them.
	wantBody := map[string]any{
		"quote":        "BAAC",
		"runtime_data": "cmQ=",
		"verifier_nonce": map[string]any{
			"val": "dmFs", "iat": "MjAyNS0wNi0wMVQxMjowMDowMFo=", "signature": "c2ln",
		},
		"policy_ids":        []any{"9d6a1ef4-6b3d-4a3f-a0d5-3c5b9b0e1c11"},
		"token_signing_alg": "PS384",
	}
	if diff := cmp.Diff(wantBody, f.attests[0]); diff != "" {
		t.Errorf("attest body (-want +got):\n%s", diff)
	}
}

func TestClientErrors(t *testing.T) {
	tests := map[string]struct {
		setup      func(f *fakeITA)
		apiKey     string
		op         func(c *Client) error
		wantStatus int
		temporary  bool
	}{
		"401 nonce": {apiKey: "wrong-key-of-some-length", op: nonceOp, wantStatus: 401},
		"401 attest": {apiKey: "wrong-key-of-some-length", op: attestOp,
			wantStatus: 401},
		"500 attest": {setup: func(f *fakeITA) { f.attestStatus = 500 }, op: attestOp,
			wantStatus: 500, temporary: true},
		"503 nonce": {setup: func(f *fakeITA) { f.nonceStatus = 503 }, op: nonceOp,
			wantStatus: 503, temporary: true},
		"429 attest": {setup: func(f *fakeITA) { f.attestStatus = 429 }, op: attestOp,
			wantStatus: 429, temporary: true},
		"bad JSON":    {setup: func(f *fakeITA) { f.attestBody = `{"token":` }, op: attestOp},
		"no token":    {setup: func(f *fakeITA) { f.attestBody = `{"tok":"x"}` }, op: attestOp},
		"not a token": {setup: func(f *fakeITA) { f.attestBody = `{"token":"x"}` }, op: attestOp},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFakeITA(t)
			if tt.setup != nil {
				tt.setup(f)
			}

			key := testAPIKey
			if tt.apiKey != "" {
				key = tt.apiKey
			}
			c, err := NewClient(ClientOptions{BaseURL: f.srv.URL, APIKey: key})
			if err != nil {
				t.Fatal(err)
			}

			err = tt.op(c)
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), "exploded") {
				t.Errorf("error %q leaks the API key or the response body", err)
			}

			var ae *APIError
			if tt.wantStatus == 0 {
				if errors.As(err, &ae) {
					t.Errorf("error = %v, want a decoding error", err)
				}
				return
			}

			if !errors.As(err, &ae) || ae.StatusCode != tt.wantStatus ||
				ae.Temporary() != tt.temporary || ae.RequestID == "" {
				t.Errorf("error = %#v, want APIError %d (temporary %v) with a request id",
					err, tt.wantStatus, tt.temporary)
			}
		})
	}
}

func nonceOp(c *Client) error {
	_, err := c.Nonce(context.Background())
	return err
}

func attestOp(c *Client) error {
	_, err := c.Attest(context.Background(), AttestRequest{Quote: []byte{4}})
	return err
}

func TestClientAttestValidates(t *testing.T) {
	f := newFakeITA(t)
	c := f.client(t)
	for name, req := range map[string]AttestRequest{
		"no quote":      {},
		"bad policy id": {Quote: []byte{4}, PolicyIDs: []string{"policy-1"}},
		"bad alg":       {Quote: []byte{4}, TokenSigningAlg: "HS256"},
	} {
		if _, err := c.Attest(context.Background(), req); err == nil {
			t.Errorf("%s: Attest accepted an invalid request", name)
		}
	}

	if len(f.attests) != 0 {
		t.Errorf("invalid requests reached the server %d times", len(f.attests))
	}
}

// fakeQuoter records the report data it is asked to quote.
type fakeQuoter struct {
	got [64]byte
	err error
}

func (q *fakeQuoter) Quote(ctx context.Context, rd [64]byte) ([]byte, error) {
	q.got = rd
	return append([]byte{4, 0}, rd[:4]...), q.err
}

func TestClientToken(t *testing.T) {
	f := newFakeITA(t)
	c := f.client(t)
	q := &fakeQuoter{}
	tok, quote, err := c.Token(context.Background(), q, []byte("keys"))
	if err != nil || tok != fakeToken {
		t.Fatalf("Token = %q, %v", tok, err)
	}

	want := sha512Of([]byte("val"), []byte("2025-06-01T12:00:00Z"), []byte("keys"))
	if q.got != want {
		t.Errorf("quoted report data %x, want SHA-512(val||iat||runtime data) %x", q.got, want)
	}
	if !bytes.Equal(quote, append([]byte{4, 0}, want[:4]...)) {
		t.Errorf("returned quote %x is not the quoter's", quote)
	}
	if f.attests[0]["runtime_data"] != "a2V5cw==" || f.attests[0]["verifier_nonce"] == nil {
		t.Errorf("attest body %v lacks the runtime data or nonce", f.attests[0])
	}

	q.err = errors.New("no TDX here")
	if _, _, err := c.Token(context.Background(), q, nil); !errors.Is(err, q.err) {
		t.Errorf("quoter failure: error = %v", err)
	}
}

func TestNewClientOptions(t *testing.T) {
	tests := map[string]ClientOptions{
		"no key":       {},
		"key spaces":   {APIKey: " k "},
		"http remote":  {APIKey: "k", BaseURL: "http://api.example"},
		"credentials":  {APIKey: "k", BaseURL: "https://u:p@api.example"},
		"query":        {APIKey: "k", BaseURL: "https://api.example?x=1"},
		"not absolute": {APIKey: "k", BaseURL: "api.example"},
	}

	for name, opts := range tests {
		if _, err := NewClient(opts); err == nil {
			t.Errorf("%s: NewClient accepted invalid options", name)
		}
	}

	c, err := NewClient(ClientOptions{APIKey: "k"})
	if err != nil || c.base != DefaultBaseURL {
		t.Errorf("defaults: base %q, error %v", c.base, err)
	}
}
