package agentapi

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// IdempotencyHeader names the POST /deploy request header that lets the
// agent recognise a repeated request: for a key it has seen with the same
// spec it returns the first result instead of starting the workload again.
const IdempotencyHeader = "Idempotency-Key"

// deployTries bounds the tries of one deploy, the first included.
const deployTries = 3

// TokenSource supplies the bearer token of each request. Its Token may
// return a cached token or fetch a new one, so that a long wait on a
// deploy can outlive one short-lived CI token.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// Client calls one agent's HTTP API.
type Client struct {
	// BaseURL is the agent's URL, e.g. "https://vm-1.example.com".
	BaseURL string

	// Token is the bearer sent to /deploy, /exec and /logs.
	Token string

	// Tokens, when non-nil, is asked for the bearer before every request
	// and wins over Token.
	Tokens TokenSource

	// HTTP is the client used. Nil means http.DefaultClient.
	HTTP *http.Client

	// RetryDelay is the pause before the second try of a deploy; it
	// doubles before each later one. Zero means one second.
	RetryDelay time.Duration
}

// APIError is a non-2xx reply from the agent.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("agent answered %d", e.Status)
	}
	return fmt.Sprintf("agent answered %d %s: %s", e.Status, e.Code, e.Message)
}

// transportError is a failure to send a request or to read its reply: the
// agent may or may not have acted on it.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// request is one call of the agent's API.
type request struct {
	method, path string
	body         []byte
	key          string // Idempotency-Key, if any
}

// Health fetches GET /health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, request{method: http.MethodGet, path: "/health"}, &h)
	return h, err
}

// Units fetches GET /api/units.
func (c *Client) Units(ctx context.Context) ([]Unit, error) {
	var u []Unit
	err := c.do(ctx, request{method: http.MethodGet, path: "/api/units"}, &u)
	return u, err
}

// Deploy posts a workload spec, as raw JSON, to POST /deploy under a
// fresh idempotency key. See [Client.DeployWithKey].
func (c *Client) Deploy(ctx context.Context, spec []byte) (DeployResponse, error) {
	return c.DeployWithKey(ctx, spec, NewIdempotencyKey())
}

// DeployWithKey posts a workload spec, as raw JSON, to POST /deploy with
// key in the [IdempotencyHeader].
//
// A deploy is never repeated blindly: the agent may have started the
// workload before its reply was lost. The request is tried again only
// when its outcome is unknown (a transport error) or the agent could not
// take it (502, 503), at most three tries in all, and always with the same
// key, for which the agent returns the first result rather than deploying
// twice. Any other reply is final.
func (c *Client) DeployWithKey(ctx context.Context, spec []byte,
	key string) (DeployResponse, error) {
	req := request{method: http.MethodPost, path: "/deploy", body: spec, key: key}
	delay := cmp.Or(c.RetryDelay, time.Second)

	for try := 1; ; try++ {
		var r DeployResponse
		err := c.do(ctx, req, &r)
		if err == nil || try == deployTries || !retryable(ctx, err) {
			return r, err
		}
		if werr := sleep(ctx, delay); werr != nil {
			return DeployResponse{}, fmt.Errorf("retrying deploy after %v: %w", err, werr)
		}
		delay *= 2
	}
}

// retryable reports whether a deploy that failed with err may be sent
// again with the same idempotency key.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}

	var te *transportError
	if errors.As(err, &te) {
		return true
	}
	var ae *APIError
	return errors.As(err, &ae) &&
		(ae.Status == http.StatusBadGateway || ae.Status == http.StatusServiceUnavailable)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// NewIdempotencyKey returns a random version 4 UUID, a fresh key for one
// deploy.
func NewIdempotencyKey() string {
	b := make([]byte, 16)
	rand.Read(b)

	// mark version 4 and the RFC 4122 variant
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80

	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Exec posts a command to POST /exec.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (ExecResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return ExecResponse{}, fmt.Errorf("encoding request: %w", err)
	}

	var r ExecResponse
	err = c.do(ctx, request{method: http.MethodPost, path: "/exec", body: body}, &r)
	return r, err
}

// Logs fetches the last tail lines of app from GET /logs/{app}.
func (c *Client) Logs(ctx context.Context, app string, tail int) (LogsResponse, error) {
	var r LogsResponse
	p := "/logs/" + url.PathEscape(app) + "?tail=" + strconv.Itoa(tail)
	err := c.do(ctx, request{method: http.MethodGet, path: p}, &r)
	return r, err
}

func (c *Client) do(ctx context.Context, r request, out any) error {
	req, err := c.newRequest(ctx, r)
	if err != nil {
		return err
	}

	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}

	resp, err := hc.Do(req)
	if err != nil {
		return &transportError{fmt.Errorf("calling agent: %w", err)}
	}
	defer resp.Body.Close()

	payload, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return &transportError{fmt.Errorf("reading agent reply: %w", err)}
	}
	if resp.StatusCode/100 != 2 {
		return replyError(resp.StatusCode, payload)
	}
	if err := json.Unmarshal(payload, out); err != nil {
		return fmt.Errorf("decoding agent reply: %w", err)
	}
	return nil
}

func (c *Client) newRequest(ctx context.Context, r request) (*http.Request, error) {
	if c.BaseURL == "" {
		return nil, errors.New("agentapi: no agent URL")
	}

	token, err := c.bearer(ctx)
	if err != nil {
		return nil, err
	}

	var rd io.Reader
	if r.body != nil {
		rd = bytes.NewReader(r.body)
	}
	u := strings.TrimRight(c.BaseURL, "/") + r.path
	req, err := http.NewRequestWithContext(ctx, r.method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}

	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.key != "" {
		req.Header.Set(IdempotencyHeader, r.key)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Accept", "application/json")
	return req, nil
}

// bearer returns the token for the next request.
func (c *Client) bearer(ctx context.Context) (string, error) {
	if c.Tokens == nil {
		return c.Token, nil
	}

	tok, err := c.Tokens.Token(ctx)
	if err != nil {
		return "", fmt.Errorf("getting a token: %w", err)
	}
	return tok, nil
}

func replyError(status int, payload []byte) error {
	var b struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	json.Unmarshal(payload, &b)
	return &APIError{Status: status, Code: b.Code, Message: b.Message}
}
