// Package agent is the DevOps Defender agent that runs inside each VM. It
// registers the VM with the control plane, serves the VM's workload API
// (deploy, exec, logs) to authenticated CI callers, and publishes health
// and attestation evidence for the control plane's collector.
//
// The agent drives the workload runtime through EasyEnclave's socket
// protocol; everything it reports about workloads comes from the runtime.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// Caller is the verified identity of a CI job calling the agent.
type Caller struct {
	// Principal is the fleet owner or tenant principal the job acts for,
	// e.g. "org:acme(42)".
	Principal       string
	Subject         string
	Repository      string
	RepositoryOwner string
	Ref             string
	SHA             string
	Workflow        string
	RunID           string
	Actor           string
}

// Authenticator verifies a bearer token and decides whether its holder may
// use the workload API. It returns an *httpapi.Error for a refused caller:
// 401 for a missing or invalid token, 403 for a valid token of a principal
// that is not allowed, 502 when the key set cannot be fetched.
type Authenticator interface {
	Authenticate(ctx context.Context, bearer string) (Caller, error)
}

// Options configures an [Agent].
type Options struct {
	// VMName names the VM; it must be a lowercase DNS label. Required.
	VMName string

	// Runtime is the workload runtime client. Required.
	Runtime *runtime.Client

	// Verifier verifies GitHub Actions OIDC tokens, and Owner is the fleet
	// owner principal: the owner's CI jobs, and the tenant's, may use
	// /deploy, /exec and /logs. Required unless Auth is set.
	Verifier tokenVerifier
	Owner    ghoidc.Principal

	// Auth, when set, replaces the OIDC check of Verifier and Owner.
	Auth Authenticator

	// ControlPlaneURL is the control plane's base URL. Empty means the
	// agent runs unregistered (useful only in tests).
	ControlPlaneURL string

	// Origin is the URL at which the agent's HTTP server is reached by its
	// tunnel connector. Required when ControlPlaneURL is set.
	Origin string

	// Expose are the hostname claims of boot workloads, which the
	// runtime starts from its own configuration, so the agent never sees
	// their specs. They are published after registration like the claims
	// of deployed workloads.
	Expose []ingress.Claim

	// Connect builds the connector (cloudflared) that carries the tunnel
	// the control plane created for the agent, with the tunnel token from
	// each registration. Nil runs none: the agent is then reached only at
	// its origin.
	Connect ConnectFunc

	// KeyPath is the PEM file that keeps the agent's keys across
	// restarts; it is created (mode 0600) if missing. A restarted agent
	// that shows the same keys keeps its VM name, and its tenant, even
	// while its old process still answers. Empty keeps fresh keys in
	// memory only.
	KeyPath string

	// ClaimsPath is the file that keeps the hostname claims of deployed
	// workloads across restarts of the agent, which the runtime's
	// workloads outlive; claims of workloads the runtime no longer runs
	// are dropped when the agent starts. Empty keeps them in memory only.
	ClaimsPath string

	// HTTPClient calls the control plane. Nil means a client with a 30s
	// timeout.
	HTTPClient *http.Client

	// RuntimeWait bounds the wait for the runtime at startup. Zero means
	// 90s, as EasyEnclave's clients wait.
	RuntimeWait time.Duration

	// Build is the build identifier shown on /health.
	Build string

	// TrustAuthority, when set, has the agent's quotes appraised by an
	// Intel Trust Authority (or the local one of the dev fleet) and sends
	// the token with the quote. Nil sends the quote alone, for a control
	// plane that verifies quotes itself.
	TrustAuthority *ita.Client

	// ReattestInterval is how often the agent proves to the control plane
	// again that it runs in the same TD. Zero means 10m.
	ReattestInterval time.Duration

	// SyncInterval is how often the agent reads its configuration (its
	// tenant) from the control plane and forwards its audit entries. Zero
	// means 15s.
	SyncInterval time.Duration

	// Audit records deploys and execs; the agent forwards its entries to
	// the control plane. Nil records nothing. The caller closes it.
	Audit *audit.Forwarder

	// Now is the clock. Nil means time.Now.
	Now func() time.Time

	// Logger receives the agent's events. Nil discards them.
	Logger *slog.Logger
}

// Agent serves one VM. Create it with [New] and run it with [Agent.Serve].
type Agent struct {
	opts      Options
	log       *slog.Logger
	started   time.Time
	keys      *keys
	deploys   deployResults
	integrity integrity
	tunnel    tunnelRunner
	expose    exposeState

	// regBackoff paces registration attempts; tests shorten it.
	regBackoff backoff

	mu       sync.Mutex
	reg      registration      // guarded by mu
	evidence published         // guarded by mu
	tenant   *ghoidc.Principal // guarded by mu
}

// published is the evidence the agent shows on /health.
type published struct {
	ev      agentapi.Evidence
	nonce   string
	purpose string
}

// registration is what the control plane assigned to this agent.
type registration struct {
	agentID  string
	hostname string
	url      string
	token    string
}

// New validates opts and returns an agent.
func New(opts Options) (*Agent, error) {
	if !workload.ValidLabel(opts.VMName) {
		return nil, fmt.Errorf("agent: vm name %q must be a lowercase DNS label", opts.VMName)
	}
	if opts.Runtime == nil {
		return nil, errors.New("agent: Runtime is required")
	}
	if opts.Auth == nil && opts.Verifier == nil {
		return nil, errors.New("agent: a Verifier and Owner, or Auth, are required")
	}

	if err := checkURLs(opts); err != nil {
		return nil, err
	}
	if err := validateBootClaims(opts.VMName, opts.Expose); err != nil {
		return nil, err
	}

	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if opts.RuntimeWait == 0 {
		opts.RuntimeWait = 90 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Build == "" {
		opts.Build = "dev"
	}

	if opts.ReattestInterval == 0 {
		opts.ReattestInterval = 10 * time.Minute
	}
	if opts.SyncInterval == 0 {
		opts.SyncInterval = 15 * time.Second
	}

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "agent", "vm", opts.VMName)

	// keys and claims persist across restarts
	k, err := loadKeys(opts.KeyPath, log)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	claims, err := loadClaims(opts.ClaimsPath, opts.VMName, opts.Expose, log)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}

	a := &Agent{opts: opts, log: log, keys: k, regBackoff: defaultRegBackoff}
	if len(claims) > 0 {
		a.setClaims(claims)
	}
	for _, c := range claims {
		if !isBootApp(opts.Expose, c.App) {
			a.expose.restored = append(a.expose.restored, c.App)
		}
	}

	if a.opts.Auth == nil {
		if a.opts.Auth, err = NewOIDCAuth(opts.Verifier, opts.Owner, a.Tenant); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func checkURLs(opts Options) error {
	if opts.ControlPlaneURL == "" {
		return nil
	}

	for name, v := range map[string]string{"control plane URL": opts.ControlPlaneURL,
		"origin": opts.Origin} {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("agent: %s %q must be an absolute http(s) URL", name, v)
		}
	}
	return nil
}

// Serve serves the agent's HTTP API on ln and, in the background, waits
// for the runtime and registers with the control plane. The HTTP API is up
// before registration so that the VM can be inspected while the control
// plane is unreachable. Serve returns when ctx ends, after shutting the
// server down, or when the runtime never becomes ready. A control plane
// that refuses the agent does not end it: the agent keeps trying.
func (a *Agent) Serve(ctx context.Context, ln net.Listener) error {
	a.started = a.opts.Now()
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.boot(ctx); err != nil && ctx.Err() == nil {
			cancel(err)
		}
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	a.log.Info("agent serving", "addr", ln.Addr().String())

	var err error
	select {
	case err = <-serveErr:
		cancel(err)
	case <-ctx.Done():
	}

	shutdownCtx, done := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer done()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		// Requests still running (a held tunnel connection, a slow
		// client) end now rather than outlive the server.
		srv.Close()
	}
	wg.Wait()

	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// boot waits for the runtime and registers with the control plane.
func (a *Agent) boot(ctx context.Context) error {
	h, err := a.waitRuntime(ctx)
	if err != nil {
		return err
	}
	a.log.Info("runtime ready", "attestation_type", h.AttestationType,
		"socket", a.opts.Runtime.SocketPath())

	a.pruneClaims(ctx)
	if a.opts.ControlPlaneURL == "" {
		a.log.Warn("no control plane configured; running unregistered")
		return nil
	}

	defer a.stopTunnel()
	if err := a.registerLoop(ctx); err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { a.syncLoop(ctx) })
	return a.reattestLoop(ctx)
}

// waitRuntime polls the runtime's health every 250ms until it answers.
func (a *Agent) waitRuntime(ctx context.Context) (runtime.Health, error) {
	deadline := a.opts.Now().Add(a.opts.RuntimeWait)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()

	for {
		h, err := a.opts.Runtime.Health(ctx)
		if err == nil {
			return h, nil
		}
		if a.opts.Now().After(deadline) {
			return h, fmt.Errorf("agent: runtime socket %s not ready after %s: %w",
				a.opts.Runtime.SocketPath(), a.opts.RuntimeWait, err)
		}
		select {
		case <-ctx.Done():
			return h, ctx.Err()
		case <-tick.C:
		}
	}
}

// registered returns the current registration.
func (a *Agent) registered() registration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reg
}

// Registered reports whether the control plane has registered the agent.
func (a *Agent) Registered() bool { return a.registered().agentID != "" }

// published returns the evidence last accepted by the control plane.
func (a *Agent) published() published {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.evidence
}

// Tenant returns the principal the control plane assigned the agent to,
// or nil.
func (a *Agent) Tenant() *ghoidc.Principal {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tenant
}
