package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// Exposed hostnames (reference cf.md §2.6, §3). A workload that declares
// "expose" claims a hostname label for a local port; the agent keeps the
// claims of all its workloads (boot workloads' from [Options.Expose]) and
// sends the full list to the control plane with its own credential,
// which can change only this agent's tunnel. Claims are checked before
// anything is deployed, with the control plane's rules: a valid label
// that is not reserved, a port in 1..65535, no label claimed twice.

// publishTimeout bounds one attempt to publish claims from a deploy; a
// failed attempt is retried by the sync loop.
const publishTimeout = 10 * time.Second

// exposeState is the agent's claims and how far the control plane has
// applied them.
type exposeState struct {
	// deployMu serialises deploys that change claims, from the check of
	// the claims to their update.
	deployMu sync.Mutex
	// pubMu serialises publishing, which calls the control plane.
	pubMu sync.Mutex

	mu     sync.Mutex // guards the fields below; never held across a call
	claims []ingress.Claim
	// version counts changes of claims, so that a publish that raced
	// with a change does not mark the newer claims published.
	version int
	// dirty means the control plane has not applied claims yet.
	dirty bool
	// err says why the last attempt failed.
	err string
	// urls are the public URLs of published hostnames by label.
	urls map[string]string
	// conflict means the control plane refused the claims because another
	// agent holds one of their hostnames.
	conflict bool
	// restored are the apps whose claims came from the claims file and
	// have not been published since; see [Agent.republish].
	restored []string
}

// placeholderZone completes the VM name into a hostname before the
// control plane assigned the real one, so that a claim's label is still
// checked against the length of the flattened name's first label; the
// control plane checks the real hostname again.
const placeholderZone = ".invalid"

// checkClaims validates claims for this agent's hostname.
func (a *Agent) checkClaims(claims []ingress.Claim) error {
	host := a.registered().hostname
	if host == "" {
		host = a.opts.VMName + placeholderZone
	}
	return ingress.ValidateClaims(host, claims)
}

// planClaims returns the claims after deploying spec, and whether they
// change: the spec's app replaces what it claimed before, or drops it
// when the spec exposes nothing. A label that is invalid, reserved or
// taken is a 400. The caller holds deployMu.
func (a *Agent) planClaims(spec workload.Spec) ([]ingress.Claim, bool, error) {
	a.expose.mu.Lock()
	cur := slices.Clone(a.expose.claims)
	a.expose.mu.Unlock()

	app := spec.Name()
	next := slices.DeleteFunc(slices.Clone(cur), func(c ingress.Claim) bool { return c.App == app })
	if spec.Expose != nil {
		if err := ingress.ValidateLabel(spec.Expose.HostnameLabel); err != nil {
			return nil, false, httpapi.BadRequest("expose: %s", err.Error())
		}
		next = ingress.WithClaim(cur, ingress.Claim{App: app,
			Label: spec.Expose.HostnameLabel, Port: spec.Expose.Port})
	}

	if err := a.checkClaims(next); err != nil {
		return nil, false, httpapi.BadRequest("expose: %s", err.Error())
	}
	return next, !slices.Equal(next, cur), nil
}

// setClaims replaces the claims, to be published.
func (a *Agent) setClaims(claims []ingress.Claim) {
	e := &a.expose
	e.mu.Lock()
	defer e.mu.Unlock()
	e.claims, e.dirty = claims, true
	e.version++
	a.saveClaims(claims)
}

// publishClaims sends the claims to the control plane, if the agent is
// registered and they are not published yet, and records the outcome.
// Failures other than a refusal are retried by the sync loop.
func (a *Agent) publishClaims(ctx context.Context) {
	e := &a.expose
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	e.mu.Lock()
	claims, version, dirty := slices.Clone(e.claims), e.version, e.dirty
	e.mu.Unlock()

	reg := a.registered()
	if !dirty || reg.agentID == "" || a.opts.ControlPlaneURL == "" {
		return
	}
	if claims == nil {
		claims = []ingress.Claim{}
	}

	var out cpapi.IngressResponse
	err := a.callCP(ctx, http.MethodPost, "/agents/"+reg.agentID+"/ingress", reg.token,
		cpapi.IngressRequest{Claims: claims}, &out)

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.version != version {
		return // changed meanwhile: the newer claims are still to publish
	}

	var re *refusedError
	switch {
	case err == nil:
		e.dirty, e.err, e.urls = false, "", map[string]string{}
		e.conflict, e.restored = false, nil
		for _, x := range out.Exposed {
			e.urls[x.Label] = x.URL
		}
		a.log.Info("hostnames published", "hostnames", out.Hostnames)
	case errors.As(err, &re) && re.status != http.StatusUnauthorized:
		// The control plane refuses these claims; sending them again
		// cannot change that. A refused credential is different: the
		// agent registers again and then publishes.
		e.dirty, e.err, e.conflict = false, err.Error(), re.status == http.StatusConflict
		a.log.Error("control plane refused the hostname claims", "err", err)
	default:
		e.err = err.Error()
		a.log.Warn("publishing hostname claims failed; retrying", "err", err)
	}
}

// republish marks the claims unpublished, e.g. after a new registration
// whose tunnel has none yet, and publishes them. Claims restored from the
// claims file may have lost their hostnames while the agent was gone: if
// another agent now holds one, they are dropped and the rest published.
func (a *Agent) republish(ctx context.Context) {
	a.expose.mu.Lock()
	has := len(a.expose.claims) > 0
	if has {
		a.expose.dirty = true
		a.expose.version++
	}
	a.expose.mu.Unlock()
	if !has {
		return
	}

	a.publishClaims(ctx)
	if a.dropRestoredAfterConflict() {
		a.publishClaims(ctx)
	}
}

// dropRestoredAfterConflict drops the restored claims when the control
// plane refused the claims for a hostname another agent holds, and
// reports whether it did.
func (a *Agent) dropRestoredAfterConflict() bool {
	a.expose.deployMu.Lock()
	defer a.expose.deployMu.Unlock()

	e := &a.expose
	e.mu.Lock()
	restored, conflict := e.restored, e.conflict
	if !conflict || len(restored) == 0 {
		e.mu.Unlock()
		return false
	}
	next := slices.DeleteFunc(slices.Clone(e.claims), func(c ingress.Claim) bool {
		return slices.Contains(restored, c.App)
	})
	e.restored = nil
	e.mu.Unlock()

	a.log.Warn("dropping restored hostname claims: another agent took a hostname meanwhile",
		"apps", restored)
	a.setClaims(next)
	return true
}

// exposed describes the claims for /health and deploy answers.
func (a *Agent) exposed() []agentapi.Exposed {
	host := a.registered().hostname
	e := &a.expose
	e.mu.Lock()
	defer e.mu.Unlock()

	out := make([]agentapi.Exposed, 0, len(e.claims))
	for _, c := range e.claims {
		x := agentapi.Exposed{App: c.App, Label: c.Label, Port: c.Port, Error: e.err}
		if host != "" {
			x.Hostname = ingress.ExtraHostname(host, c.Label)
		}
		if u, ok := e.urls[c.Label]; ok && !e.dirty && e.err == "" {
			x.URL, x.Published = u, true
		}
		out = append(out, x)
	}
	return out
}

// exposedApp returns app's claim, or nil.
func (a *Agent) exposedApp(app string) *agentapi.Exposed {
	for _, x := range a.exposed() {
		if x.App == app {
			return &x
		}
	}
	return nil
}

// deployExposing runs deploy for spec, checking its claim first so that a
// bad one refuses the deploy before anything runs, and publishing the
// changed claims after the runtime accepted the workload.
func (a *Agent) deployExposing(ctx context.Context, spec workload.Spec,
	deploy func() (agentapi.DeployResponse, error)) (agentapi.DeployResponse, error) {
	a.expose.deployMu.Lock()
	defer a.expose.deployMu.Unlock()

	next, changed, err := a.planClaims(spec)
	if err != nil {
		return agentapi.DeployResponse{}, err
	}

	resp, err := deploy()
	if err != nil || !changed {
		return resp, err
	}

	a.setClaims(next)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	a.publishClaims(pctx)
	resp.Exposed = a.exposedApp(spec.Name())
	return resp, nil
}

// validateBootClaims checks [Options.Expose] in New.
func validateBootClaims(vmName string, claims []ingress.Claim) error {
	if err := ingress.ValidateClaims(vmName+placeholderZone, claims); err != nil {
		return fmt.Errorf("agent: boot expose: %w", err)
	}
	return nil
}
