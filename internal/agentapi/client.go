package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Client calls one agent's HTTP API.
type Client struct {
	// BaseURL is the agent's URL, e.g. "https://vm-1.example.com".
	BaseURL string

	// Token is the bearer sent to /deploy, /exec and /logs.
	Token string

	// HTTP is the client used. Nil means http.DefaultClient.
	HTTP *http.Client
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

// Health fetches GET /health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, http.MethodGet, "/health", nil, &h)
	return h, err
}

// Units fetches GET /api/units.
func (c *Client) Units(ctx context.Context) ([]Unit, error) {
	var u []Unit
	err := c.do(ctx, http.MethodGet, "/api/units", nil, &u)
	return u, err
}

// Deploy posts a workload spec, as raw JSON, to POST /deploy.
func (c *Client) Deploy(ctx context.Context, spec []byte) (DeployResponse, error) {
	var r DeployResponse
	err := c.do(ctx, http.MethodPost, "/deploy", spec, &r)
	return r, err
}

// Exec posts a command to POST /exec.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (ExecResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return ExecResponse{}, fmt.Errorf("encoding request: %w", err)
	}
	var r ExecResponse
	err = c.do(ctx, http.MethodPost, "/exec", body, &r)
	return r, err
}

// Logs fetches the last tail lines of app from GET /logs/{app}.
func (c *Client) Logs(ctx context.Context, app string, tail int) (LogsResponse, error) {
	var r LogsResponse
	p := "/logs/" + url.PathEscape(app) + "?tail=" + strconv.Itoa(tail)
	err := c.do(ctx, http.MethodGet, p, nil, &r)
	return r, err
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling agent: %w", err)
	}
	defer resp.Body.Close()
	payload, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading agent reply: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return replyError(resp.StatusCode, payload)
	}
	if err := json.Unmarshal(payload, out); err != nil {
		return fmt.Errorf("decoding agent reply: %w", err)
	}
	return nil
}

func (c *Client) newRequest(ctx context.Context, method, path string, body []byte) (*http.Request, error) {
	if c.BaseURL == "" {
		return nil, errors.New("agentapi: no agent URL")
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	u := strings.TrimRight(c.BaseURL, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	req.Header.Set("Accept", "application/json")
	return req, nil
}

func replyError(status int, payload []byte) error {
	var b struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	json.Unmarshal(payload, &b)
	return &APIError{Status: status, Code: b.Code, Message: b.Message}
}
