package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// registerLoop registers with the control plane, retrying every failure
// until it succeeds or ctx ends. Refusals are retried too: a nonce from a
// control plane that a newer one replaced meanwhile earns a 401, a VM
// name still held by the agent's previous process a 409, and an agent
// that exits cannot recover from either.
func (a *Agent) registerLoop(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := a.register(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}

		wait := a.regBackoff.wait(attempt)
		var re *refusedError
		if errors.As(err, &re) {
			a.log.Warn("registration refused; retrying", "status", re.status,
				"code", re.body.Code, "attempt", attempt, "wait", wait, "err", err)
		} else {
			a.log.Warn("registration failed; retrying", "attempt", attempt, "wait", wait,
				"err", err)
		}

		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// backoff is a capped exponential backoff with jitter: attempt n waits
// between half and all of min(base*2^(n-1), max), so that agents refused
// together (a control plane cutover) do not come back in step.
type backoff struct {
	base, max time.Duration
}

// defaultRegBackoff retries soon after a transient failure and settles at
// a minute for a control plane that keeps refusing.
var defaultRegBackoff = backoff{base: time.Second, max: time.Minute}

func (b backoff) wait(attempt int) time.Duration {
	d := b.base
	for i := 1; i < attempt && d < b.max; i++ {
		d *= 2
	}

	d = min(d, b.max)
	half := d / 2
	return half + rand.N(d-half+1)
}

// reattestLoop proves the agent's TD to the control plane again every
// ReattestInterval with a fresh nonce. When the control plane no longer
// accepts the agent's credential (it lost or replaced the record), the
// agent registers anew.
func (a *Agent) reattestLoop(ctx context.Context) error {
	for {
		if err := sleep(ctx, a.opts.ReattestInterval); err != nil {
			return err
		}

		err := a.reattest(ctx)
		var re *refusedError
		switch {
		case err == nil:
			a.log.Debug("re-attested")
		case errors.As(err, &re) && re.status == http.StatusUnauthorized:
			a.log.Warn("control plane refused the agent credential; registering again", "err", err)
			if err := a.registerLoop(ctx); err != nil {
				return err
			}
		default:
			a.log.Warn("re-attestation failed", "err", err)
		}
	}
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

// refusedError is a control-plane answer with a 4xx other than 429.
type refusedError struct {
	status int
	body   httpapi.Body
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("control plane refused: %d %s: %s", e.status, e.body.Code, e.body.Message)
}

// register performs one registration attempt: nonce, evidence bound to
// the nonce and the agent's keys, signed request.
func (a *Agent) register(ctx context.Context) error {
	nonce, ev, err := a.freshEvidence(ctx, attestbind.PurposeRegister, "/register/nonce", "")
	if err != nil {
		return err
	}

	req := cpapi.RegisterRequest{VMName: a.opts.VMName, Origin: a.opts.Origin, Nonce: nonce,
		SigningKey: a.keys.signingB64(), NoiseKey: a.keys.noiseB64(), Evidence: ev}
	var resp cpapi.RegisterResponse
	if err := a.callCP(ctx, http.MethodPost, "/register", "", req, &resp); err != nil {
		return err
	}

	a.mu.Lock()
	a.reg = registration{agentID: resp.AgentID, hostname: resp.Hostname, url: resp.URL,
		token: resp.AgentToken}
	a.evidence = published{ev: ev, nonce: nonce, purpose: attestbind.PurposeRegister}
	a.mu.Unlock()

	a.log.Info("registered", "agent_id", resp.AgentID, "hostname", resp.Hostname, "url", resp.URL)
	a.startTunnel(ctx, resp.TunnelToken)
	a.republish(ctx)
	return nil
}

// reattest sends fresh evidence for the registered agent.
func (a *Agent) reattest(ctx context.Context) error {
	reg := a.registered()

	// The agent's own nonce route, with its credential: its allowance
	// cannot be used up by anonymous callers of /register/nonce.
	nonce, ev, err := a.freshEvidence(ctx, attestbind.PurposeReattest,
		"/agents/"+reg.agentID+"/nonce", reg.token)
	var re *refusedError
	if errors.As(err, &re) && (re.status == http.StatusNotFound ||
		re.status == http.StatusMethodNotAllowed) {
		// A control plane of an earlier release has only the public route.
		nonce, ev, err = a.freshEvidence(ctx, attestbind.PurposeReattest, "/register/nonce", "")
	}
	if err != nil {
		return err
	}

	var out cpapi.Attestation
	path := "/agents/" + reg.agentID + "/attest"
	if err := a.callCP(ctx, http.MethodPost, path, reg.token,
		cpapi.AttestRequest{Nonce: nonce, Evidence: ev}, &out); err != nil {
		return err
	}

	a.mu.Lock()
	a.evidence = published{ev: ev, nonce: nonce, purpose: attestbind.PurposeReattest}
	a.mu.Unlock()
	return nil
}

// freshEvidence gets a nonce from the control plane's noncePath (with the
// agent credential token, if any) and has the runtime attest to report
// data that binds it to the agent's keys.
func (a *Agent) freshEvidence(ctx context.Context, purpose, noncePath,
	token string) (string, agentapi.Evidence, error) {
	var n cpapi.NonceResponse
	if err := a.callCP(ctx, http.MethodPost, noncePath, token, struct{}{}, &n); err != nil {
		return "", agentapi.Evidence{}, err
	}

	raw, err := base64.StdEncoding.DecodeString(n.Nonce)
	if err != nil {
		return "", agentapi.Evidence{}, fmt.Errorf("decoding nonce: %w", err)
	}
	rd, err := attestbind.ReportData(purpose, raw, a.keys.public())
	if err != nil {
		return "", agentapi.Evidence{}, err
	}

	if a.opts.TrustAuthority != nil {
		ev, err := a.trustAuthorityEvidence(ctx, rd)
		return n.Nonce, ev, err
	}

	att, err := a.opts.Runtime.Attest(ctx, rd[:])
	if err != nil {
		return "", agentapi.Evidence{}, fmt.Errorf("attesting: %w", err)
	}
	return n.Nonce, agentapi.Evidence{
		AttestationType: att.AttestationType, QuoteFormat: att.QuoteFormat,
		QuoteB64: att.QuoteB64, ReportDataB64: base64.StdEncoding.EncodeToString(rd[:]),
	}, nil
}

// callCP sends body (nil for none) as signed JSON to the control plane and
// decodes the reply. token, when set, is sent as the agent's bearer
// credential.
func (a *Agent) callCP(ctx context.Context, method, path, token string, body, out any) error {
	var rd io.Reader
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return fmt.Errorf("encoding request: %w", err)
		}
		rd = bytes.NewReader(data)
	}

	u := strings.TrimRight(a.opts.ControlPlaneURL, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}

	if body != nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(attestbind.SignatureHeader, attestbind.Sign(a.keys.signing, data))
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}

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
