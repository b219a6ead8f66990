package ita

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/devopsdefender/devopsdefender/internal/endpoint"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// Intel's public endpoints and the issuer of its tokens.
const (
	DefaultBaseURL = "https://api.trustauthority.intel.com"
	DefaultJWKSURL = "https://portal.trustauthority.intel.com/certs"
	IntelIssuer    = "https://portal.trustauthority.intel.com"
)

// REST paths of the appraisal API, version 1.
const (
	noncePath  = "/appraisal/v1/nonce"
	attestPath = "/appraisal/v1/attest"
	certsPath  = "/certs"
)

const (
	// apiKeyHeader carries the ITA API key on every request.
	apiKeyHeader = "x-api-key"
	// requestIDHeader is where ITA returns its request id; support asks
	// for it, so errors carry it.
	requestIDHeader = "request-id"
	// maxResponse bounds what we read from ITA; tokens are a few KiB.
	maxResponse = 1 << 20
)

// VerifierNonce is ITA's signed nonce. The three fields are bytes that
// travel as standard base64 in JSON, as Intel's API defines them.
type VerifierNonce struct {
	Val       []byte `json:"val"`
	Iat       []byte `json:"iat"`
	Signature []byte `json:"signature"`
}

// ReportData returns the report data a quote must carry for ITA to accept
// it with nonce and runtimeData: SHA-512(nonce.val || nonce.iat ||
// runtimeData), the layout of Intel's TDX adapter. A nil nonce hashes the
// runtime data alone.
func ReportData(nonce *VerifierNonce, runtimeData []byte) tdx.ReportData {
	h := sha512.New()
	if nonce != nil {
		h.Write(nonce.Val)
		h.Write(nonce.Iat)
	}

	h.Write(runtimeData)
	var rd tdx.ReportData
	h.Sum(rd[:0])
	return rd
}

// ClientOptions configure [NewClient].
type ClientOptions struct {
	// BaseURL is the API's base, without the /appraisal path. Empty means
	// [DefaultBaseURL]. It must be https, or http to a loopback host (the
	// local [Authority] of dev mode).
	BaseURL string

	// APIKey is the ITA attestation API key. Required. It is sent only in
	// the x-api-key header and never logged or put in errors.
	APIKey string

	// HTTPClient makes the requests. Nil means a client with a 30 s
	// timeout.
	HTTPClient *http.Client

	// Logger receives one record per request (never the key or the
	// token). Nil discards.
	Logger *slog.Logger
}

// Client calls Intel Trust Authority's appraisal API. It is safe for
// concurrent use.
type Client struct {
	base   string
	apiKey string
	hc     *http.Client
	log    *slog.Logger
}

// NewClient validates opts and returns a client.
func NewClient(opts ClientOptions) (*Client, error) {
	base := strings.TrimSuffix(cmp.Or(opts.BaseURL, DefaultBaseURL), "/")
	if err := endpoint.CheckBase(base); err != nil {
		return nil, fmt.Errorf("ita: base URL: %w", err)
	}
	if opts.APIKey == "" || strings.TrimSpace(opts.APIKey) != opts.APIKey {
		return nil, errors.New("ita: API key is required and must not have surrounding spaces")
	}

	return &Client{
		base:   base,
		apiKey: opts.APIKey,
		hc:     cmp.Or(opts.HTTPClient, &http.Client{Timeout: 30 * time.Second}),
		log:    cmp.Or(opts.Logger, slog.New(slog.DiscardHandler)),
	}, nil
}

// APIError reports a non-2xx answer of the Trust Authority. It holds no
// response body: ITA's bodies may echo request details (auth.md §7.14).
type APIError struct {
	// Op is "nonce" or "attest".
	Op string
	// StatusCode is the HTTP status, e.g. 401 for a bad API key.
	StatusCode int
	// RequestID is ITA's request-id header, if it sent one.
	RequestID string
}

func (e *APIError) Error() string {
	msg := "ita: " + e.Op + ": HTTP " + strconv.Itoa(e.StatusCode)
	if e.RequestID != "" {
		msg += " (request-id " + e.RequestID + ")"
	}
	return msg
}

// Temporary reports whether retrying later may succeed: throttling and
// server-side failures.
func (e *APIError) Temporary() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// Nonce fetches a fresh signed verifier nonce.
func (c *Client) Nonce(ctx context.Context) (*VerifierNonce, error) {
	var n VerifierNonce
	if err := c.do(ctx, "nonce", http.MethodGet, noncePath, nil, &n); err != nil {
		return nil, err
	}
	if len(n.Val) == 0 || len(n.Iat) == 0 || len(n.Signature) == 0 {
		return nil, errors.New("ita: nonce: incomplete nonce in response")
	}
	return &n, nil
}

// AttestRequest is the body of POST /appraisal/v1/attest.
type AttestRequest struct {
	// Quote is the raw TDX quote. Required.
	Quote []byte `json:"quote"`
	// RuntimeData is the data the quote's report data commits to together
	// with VerifierNonce (see [ReportData]). ITA returns it in the token
	// as attester_held_data.
	RuntimeData []byte `json:"runtime_data,omitempty"`
	// VerifierNonce is a nonce from [Client.Nonce]; optional.
	VerifierNonce *VerifierNonce `json:"verifier_nonce,omitempty"`
	// PolicyIDs are ITA appraisal policy UUIDs to evaluate; optional.
	PolicyIDs []string `json:"policy_ids,omitempty"`
	// TokenSigningAlg asks for "PS384" (ITA's default) or "RS256".
	TokenSigningAlg string `json:"token_signing_alg,omitempty"`
}

func (r *AttestRequest) validate() error {
	if len(r.Quote) == 0 {
		return errors.New("no quote")
	}
	for _, id := range r.PolicyIDs {
		if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
			return fmt.Errorf("policy id %q is not a UUID", id)
		}
	}

	switch r.TokenSigningAlg {
	case "", "PS384", "RS256":
		return nil
	}
	return fmt.Errorf("token signing algorithm %q is not PS384 or RS256", r.TokenSigningAlg)
}

// attestResponse is ITA's answer to an attest request.
type attestResponse struct {
	Token string `json:"token"`
}

// Attest sends req to ITA and returns the attestation token.
func (c *Client) Attest(ctx context.Context, req AttestRequest) (string, error) {
	if err := req.validate(); err != nil {
		return "", fmt.Errorf("ita: attest: %w", err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("ita: attest: encoding request: %w", err)
	}

	var resp attestResponse
	if err := c.do(ctx, "attest", http.MethodPost, attestPath, body, &resp); err != nil {
		return "", err
	}
	if strings.Count(resp.Token, ".") != 2 {
		return "", errors.New("ita: attest: response holds no token")
	}
	return resp.Token, nil
}

// Quoter produces a TDX quote over caller-chosen report data; a
// [tdx.Provider] is one.
type Quoter interface {
	Quote(ctx context.Context, reportData [64]byte) ([]byte, error)
}

// Token runs the whole appraisal: it fetches a nonce, has q quote
// [ReportData](nonce, runtimeData), and trades the quote for a token. It
// returns the token and the quote, which the caller may publish as
// evidence alongside it.
func (c *Client) Token(ctx context.Context, q Quoter, runtimeData []byte) (string, []byte, error) {
	nonce, err := c.Nonce(ctx)
	if err != nil {
		return "", nil, err
	}
	quote, err := q.Quote(ctx, ReportData(nonce, runtimeData))
	if err != nil {
		return "", nil, fmt.Errorf("ita: quoting: %w", err)
	}

	token, err := c.Attest(ctx, AttestRequest{
		Quote: quote, RuntimeData: runtimeData, VerifierNonce: nonce,
	})
	if err != nil {
		return "", nil, err
	}
	return token, quote, nil
}

// do sends one request and decodes a 2xx JSON answer into out.
func (c *Client) do(ctx context.Context, op, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("ita: %s: %w", op, err)
	}

	req.Header.Set(apiKeyHeader, c.apiKey)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("ita: %s: %w", op, err)
	}
	defer resp.Body.Close()
	c.log.Debug("ita request", "op", op, "status", resp.StatusCode,
		"request_id", resp.Header.Get(requestIDHeader), "duration", time.Since(start))

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// Drain a little so the connection can be reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return &APIError{Op: op, StatusCode: resp.StatusCode,
			RequestID: resp.Header.Get(requestIDHeader)}
	}
	return decodeResponse(op, resp.Body, out)
}

func decodeResponse(op string, r io.Reader, out any) error {
	data, err := io.ReadAll(io.LimitReader(r, maxResponse+1))
	if err != nil {
		return fmt.Errorf("ita: %s: reading response: %w", op, err)
	}
	if len(data) > maxResponse {
		return fmt.Errorf("ita: %s: response exceeds %d bytes", op, maxResponse)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("ita: %s: decoding response: %w", op, err)
	}

	return nil
}
