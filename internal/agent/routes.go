package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/dashboard"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// Request limits enforced at the edge.
const (
	maxSpecBytes   = 1 << 20
	maxExecBytes   = 64 << 10
	maxExecTimeout = 10 * time.Minute
	maxLogTail     = 10000
)

// Handler returns the agent's HTTP routes.
//
//	GET  /health       public: state and evidence, no credentials
//	GET  /api/units    public: the workloads
//	POST /deploy       CI caller: deploy a workload spec
//	POST /exec         CI caller: run a command
//	GET  /logs/{app}   CI caller: an app's log lines (?tail=N)
//	GET  /             public: the VM's page
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, h httpapi.HandlerFunc) {
		mux.Handle(pattern, httpapi.Handle(a.log, h))
	}

	handle("GET /health", a.handleHealth)
	handle("GET /api/units", a.handleUnits)
	handle("POST /deploy", a.authed(a.handleDeploy))
	handle("POST /exec", a.authed(a.handleExec))
	handle("GET /logs/{app}", a.authed(a.handleLogs))
	handle("GET /{$}", a.handlePage)
	mux.Handle("GET "+dashboard.AssetPrefix, dashboard.Assets())
	handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return httpapi.NotFound("no route for " + r.Method + " " + r.URL.Path)
	})

	return accessLog(a.log, mux)
}

type callerKey struct{}

// authed runs h only for a caller the Authenticator accepts, before the
// body is read.
func (a *Agent) authed(h httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		tok := httpapi.BearerToken(r)
		if tok == "" {
			return httpapi.Unauthorized("a bearer token is required")
		}

		c, err := a.opts.Auth.Authenticate(r.Context(), tok)
		if err != nil {
			return err
		}

		ctx := context.WithValue(r.Context(), callerKey{}, c)
		return h(w, r.WithContext(ctx))
	}
}

func callerOf(r *http.Request) Caller {
	c, _ := r.Context().Value(callerKey{}).(Caller)
	return c
}

func (a *Agent) handleHealth(w http.ResponseWriter, r *http.Request) error {
	return httpapi.WriteJSON(w, http.StatusOK, a.health(r.Context()))
}

// health gathers the /health body. Runtime failures leave the workload
// fields empty rather than failing the probe.
func (a *Agent) health(ctx context.Context) agentapi.Health {
	reg := a.registered()
	h := agentapi.Health{
		OK: true, Service: agentapi.Service, AgentID: reg.agentID, VMName: a.opts.VMName,
		Hostname: reg.hostname, Build: a.opts.Build, AgentMode: "read_write",
		UptimeSecs: int64(a.opts.Now().Sub(a.started).Seconds()), Registered: reg.agentID != "",
		AttestationType: "unknown", Deployments: []string{}, Units: []agentapi.Unit{},
	}

	if rh, err := a.opts.Runtime.Health(ctx); err == nil {
		h.AttestationType = rh.AttestationType
	}

	h.SigningKey, h.NoiseKey = a.keys.signingB64(), a.keys.noiseB64()
	h.Tenant = principalString(a.Tenant())
	h.IntegrityReasons = a.integrity.reasons()
	h.IntegrityState = "clean"
	if len(h.IntegrityReasons) > 0 {
		h.IntegrityState = "controlled"
	}

	if ev := a.published(); ev.nonce != "" {
		h.Evidence, h.EvidenceNonce, h.EvidencePurpose = &ev.ev, ev.nonce, ev.purpose
	}

	units, err := a.units(ctx)
	if err != nil {
		a.log.Warn("listing workloads failed", "err", err)
	}
	for _, u := range units {
		h.Deployments = append(h.Deployments, u.AppName)
	}

	h.Units, h.UnitCount, h.DeploymentCount = units, len(units), len(units)
	h.Tunnel = a.tunnelStatus()
	h.Exposed = a.exposed()
	return h
}

func (a *Agent) handleUnits(w http.ResponseWriter, r *http.Request) error {
	units, err := a.units(r.Context())
	if err != nil {
		return httpapi.Upstream("runtime unavailable", err)
	}
	return httpapi.WriteJSON(w, http.StatusOK, units)
}

// handleDeploy validates a spec and hands it to the runtime. With an
// Idempotency-Key, a retried request returns the first result and the
// workload is not started twice; the same key with another spec is a
// conflict.
func (a *Agent) handleDeploy(w http.ResponseWriter, r *http.Request) error {
	body, err := httpapi.ReadBody(w, r, maxSpecBytes)
	if err != nil {
		return err
	}
	spec, err := workload.Parse(body)
	if err != nil {
		return httpapi.BadRequest("%s", err.Error())
	}
	if len(spec.Cmd) == 0 && spec.GitHubRelease == nil {
		// EasyEnclave accepts such a spec and fails the deployment
		// afterwards; the agent can say so before anything starts.
		return httpapi.BadRequest("workload: invalid spec: cmd or github_release is required")
	}

	// the body's hash identifies the spec to the idempotency table and the audit log
	sum := sha256.Sum256(body)
	specHash := hex.EncodeToString(sum[:])

	key := r.Header.Get(IdempotencyHeader)
	if key == "" {
		resp, err := a.deploy(r, spec, specHash)
		if err != nil {
			return err
		}
		return httpapi.WriteJSON(w, http.StatusOK, resp)
	}

	if !idempotencyKeyRE.MatchString(key) {
		return httpapi.BadRequest("%s must be 8-128 characters of [A-Za-z0-9_.:-]",
			IdempotencyHeader)
	}

	a.deploys.mu.Lock()
	defer a.deploys.mu.Unlock()

	now := a.opts.Now()
	if prev, ok := a.deploys.lookupLocked(key, now); ok {
		if prev.specHash != specHash {
			return &httpapi.Error{Status: http.StatusConflict, Code: httpapi.CodeConflict,
				Message: IdempotencyHeader + " was already used for another spec"}
		}
		a.log.Info("deploy repeated; returning the first result", "app", spec.Name(),
			"id", prev.resp.ID)
		if prev.err != nil {
			return prev.err
		}
		return httpapi.WriteJSON(w, http.StatusOK, prev.resp)
	}

	resp, err := a.deploy(r, spec, specHash)
	a.deploys.storeLocked(key, deployResult{specHash: specHash, resp: resp, err: err,
		expires: now.Add(idempotencyTTL)}, now)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, resp)
}

// deploy hands spec to the runtime, publishing its expose, and records
// who deployed what.
func (a *Agent) deploy(r *http.Request, spec workload.Spec, specHash string) (agentapi.DeployResponse, error) {
	return a.deployExposing(r.Context(), spec, func() (agentapi.DeployResponse, error) {
		return a.deployRuntime(r, spec, specHash)
	})
}

func (a *Agent) deployRuntime(r *http.Request, spec workload.Spec,
	specHash string) (agentapi.DeployResponse, error) {
	id, err := a.opts.Runtime.Deploy(r.Context(), spec)
	if err != nil {
		return agentapi.DeployResponse{}, runtimeError("deploy", err)
	}

	c := callerOf(r)
	a.integrity.add(reasonWorkloadDeployed)
	a.log.Info("workload deployed", "app", spec.Name(), "id", id, "spec_sha256", specHash,
		"repository", c.Repository, "ref", c.Ref, "sha", c.SHA, "workflow", c.Workflow,
		"run_id", c.RunID, "actor", c.Actor)

	a.record(r.Context(), audit.Event{Actor: audit.CI(c.Principal, c.Repository, c.SHA),
		Action: audit.ActionDeploy, Target: a.registered().agentID, Outcome: audit.OutcomeOK,
		Details: map[string]any{"app": spec.Name(), "id": id, "spec_sha256": specHash,
			"repository": c.Repository, "ref": c.Ref, "sha": c.SHA, "workflow": c.Workflow,
			"run_id": c.RunID, "actor": c.Actor}})

	return agentapi.DeployResponse{ID: id, AppName: spec.Name(),
		Status: runtime.StatusDeploying, SpecSHA256: specHash}, nil
}

func (a *Agent) handleExec(w http.ResponseWriter, r *http.Request) error {
	var req agentapi.ExecRequest
	if err := httpapi.DecodeBody(w, r, maxExecBytes, &req); err != nil {
		return err
	}
	if len(req.Cmd) == 0 || req.Cmd[0] == "" {
		return httpapi.BadRequest("cmd must be a non-empty array of strings")
	}

	timeout := time.Duration(req.TimeoutSecs) * time.Second
	if req.TimeoutSecs < 0 || timeout > maxExecTimeout {
		return httpapi.BadRequest("timeout_secs must be in 0..%d", int(maxExecTimeout.Seconds()))
	}

	res, err := a.opts.Runtime.Exec(r.Context(), req.Cmd, timeout)
	if err != nil {
		return runtimeError("exec", err)
	}

	c := callerOf(r)
	a.integrity.add(reasonExec)
	a.log.Info("command executed", "argv0", req.Cmd[0], "exit_code", res.ExitCode,
		"repository", c.Repository, "sha", c.SHA, "run_id", c.RunID)

	a.record(r.Context(), audit.Event{Actor: audit.CI(c.Principal, c.Repository, c.SHA),
		Action: audit.ActionExec, Target: a.registered().agentID, Outcome: audit.OutcomeOK,
		Details: map[string]any{"argv0": req.Cmd[0], "exit_code": res.ExitCode,
			"repository": c.Repository, "ref": c.Ref, "sha": c.SHA, "workflow": c.Workflow,
			"run_id": c.RunID}})

	return httpapi.WriteJSON(w, http.StatusOK, agentapi.ExecResponse(res))
}

func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) error {
	app := r.PathValue("app")
	if !workload.ValidAppName(app) {
		return httpapi.BadRequest("app name %q is not valid", app)
	}

	tail, err := parseTail(r.URL.Query().Get("tail"))
	if err != nil {
		return err
	}

	d, err := a.opts.Runtime.Find(r.Context(), app)
	if err != nil {
		return runtimeError("list", err)
	}
	if d == nil {
		return httpapi.NotFound("no workload named " + app)
	}

	lines, err := a.opts.Runtime.Logs(r.Context(), d.ID, tail)
	if err != nil {
		return runtimeError("logs", err)
	}
	if lines == nil {
		lines = []string{}
	}
	return httpapi.WriteJSON(w, http.StatusOK, agentapi.LogsResponse{
		AppName: app, ID: d.ID, Status: d.Status, Lines: lines})
}

func parseTail(v string) (int, error) {
	if v == "" {
		return runtime.DefaultLogTail, nil
	}

	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxLogTail {
		return 0, httpapi.BadRequest("tail must be an integer in 0..%d", maxLogTail)
	}
	return n, nil
}

// runtimeError maps a runtime failure to a 502 that carries the runtime's
// own message: it describes the caller's workload, not our internals.
func runtimeError(op string, err error) error {
	var re *runtime.Error
	if errors.As(err, &re) {
		return httpapi.Upstream("runtime "+op+": "+re.Message, err)
	}
	return httpapi.Upstream("runtime unavailable", err)
}
