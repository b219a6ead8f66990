package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// registerLoop registers with the control plane, retrying transport
// errors, 429 and 5xx with a capped backoff. Any other 4xx means the
// control plane refuses this agent, which retrying cannot change.
func (a *Agent) registerLoop(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := a.register(ctx)
		if err == nil {
			return nil
		}
		var re *refusedError
		if errors.As(err, &re) {
			a.log.Error("registration refused", "status", re.status, "err", err)
			return err
		}
		wait := min(time.Duration(attempt)*time.Second, 30*time.Second)
		a.log.Warn("registration failed; retrying", "attempt", attempt, "wait", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// refusedError is a registration the control plane answered with a 4xx
// other than 429.
type refusedError struct {
	status int
	body   httpapi.Body
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("control plane refused registration: %d %s: %s",
		e.status, e.body.Code, e.body.Message)
}

// register performs one registration attempt.
func (a *Agent) register(ctx context.Context) error {
	ev, err := a.evidence(ctx)
	if err != nil {
		return err
	}
	req := cpapi.RegisterRequest{VMName: a.opts.VMName, Origin: a.opts.Origin, Evidence: ev}
	var resp cpapi.RegisterResponse
	if err := a.postCP(ctx, "/register", req, &resp); err != nil {
		return err
	}

	a.mu.Lock()
	a.reg = registration{agentID: resp.AgentID, hostname: resp.Hostname, url: resp.URL,
		token: resp.AgentToken}
	a.mu.Unlock()
	a.log.Info("registered", "agent_id", resp.AgentID, "hostname", resp.Hostname, "url", resp.URL)
	return nil
}

// evidence asks the runtime to attest. The report data commits to the VM
// name only.
// TODO(#3): commit to a control-plane nonce and the agent's public keys.
func (a *Agent) evidence(ctx context.Context) (agentapi.Evidence, error) {
	rd := sha256.Sum256([]byte("devopsdefender-register-v0\x00" + a.opts.VMName))
	att, err := a.opts.Runtime.Attest(ctx, rd[:])
	if err != nil {
		return agentapi.Evidence{}, fmt.Errorf("attesting: %w", err)
	}
	return agentapi.Evidence{
		AttestationType: att.AttestationType,
		QuoteFormat:     att.QuoteFormat,
		QuoteB64:        att.QuoteB64,
		ReportDataB64:   base64.StdEncoding.EncodeToString(rd[:]),
	}, nil
}

// postCP posts body as JSON to the control plane and decodes the reply.
func (a *Agent) postCP(ctx context.Context, path string, body, out any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encoding request: %w", err)
	}
	u := strings.TrimRight(a.opts.ControlPlaneURL, "/") + path
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.opts.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("calling control plane: %w", err)
	}
	defer resp.Body.Close()
	payload, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("reading control plane reply: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return statusError(resp.StatusCode, payload)
	}
	if err := json.Unmarshal(payload, out); err != nil {
		return fmt.Errorf("decoding control plane reply: %w", err)
	}
	return nil
}

func statusError(status int, payload []byte) error {
	var body httpapi.Body
	json.Unmarshal(payload, &body)
	if status >= 400 && status < 500 && status != http.StatusTooManyRequests {
		return &refusedError{status: status, body: body}
	}
	return fmt.Errorf("control plane answered %d %s: %s", status, body.Code, body.Message)
}
