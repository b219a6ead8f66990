package devfleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/devopsdefender/devopsdefender/examples"
	"github.com/devopsdefender/devopsdefender/internal/agent"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/cp"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/runtime/server"
	"github.com/devopsdefender/devopsdefender/internal/websession"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// serveHTTP serves h on ln until ctx ends, then shuts the server down.
// Requests run under ctx, so those that hold on (a connector's tunnel
// connection on the edge API) end with it instead of delaying shutdown.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}

	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()

	if err := srv.Shutdown(shutdownCtx); err != nil {
		// Requests still running (a held tunnel connection, a slow
		// client) end now rather than outlive the server.
		srv.Close()
	}
	<-errc
	return nil
}

// startIssuer starts the local GitHub Actions OIDC issuer.
func (f *Fleet) startIssuer(ctx context.Context) error {
	ln, url, err := listen("127.0.0.1:0")
	if err != nil {
		return err
	}

	iss, err := ghoidc.NewIssuer(ghoidc.IssuerOptions{
		URL: url, Audience: Audience, MintSecret: f.secrets.MintSecret,
		KeyPath: filepath.Join(f.opts.StateDir, "oidc-issuer-key.pem"), Logger: f.log,
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("devfleet: %w", err)
	}

	f.issuerURL = url
	f.goService("oidc-issuer", func() error { return serveHTTP(ctx, ln, iss.Handler()) })
	f.verifier, err = ghoidc.NewVerifier(ctx, ghoidc.VerifierOptions{
		Issuer: f.issuerURL, Audience: Audience, Logger: f.log})
	if err != nil {
		return fmt.Errorf("devfleet: %w", err)
	}
	return nil
}

// startEdge starts the local edge on the fleet's public address, with
// the provider that stands in for the Cloudflare account.
func (f *Fleet) startEdge(ctx context.Context) error {
	ln, _, err := listen(f.opts.Listen)
	if err != nil {
		return err
	}

	edge, err := localedge.New(localedge.Options{Domain: f.opts.Domain,
		Port: ln.Addr().(*net.TCPAddr).Port, Logger: f.log})
	if err != nil {
		ln.Close()
		return err
	}

	f.provider, err = localedge.NewProvider(edge, localedge.ProviderOptions{Logger: f.log})
	if err != nil {
		ln.Close()
		return err
	}

	f.edge = edge
	f.account, f.links, f.publicURL = f.provider, f.provider, edge.URL
	f.goService("edge", func() error { return serveHTTP(ctx, ln, edge) })
	return f.startEdgeAPI(ctx)
}

// startEdgeAPI serves the edge provider's API on loopback, the stand-in
// for Cloudflare's API, for control planes that join the fleet from
// another process.
func (f *Fleet) startEdgeAPI(ctx context.Context) error {
	api, err := localedge.NewAPI(f.provider, localedge.APIOptions{
		Token: f.secrets.EdgeAPIToken, Logger: f.log})
	if err != nil {
		return fmt.Errorf("devfleet: %w", err)
	}

	ln, url, err := listen("127.0.0.1:0")
	if err != nil {
		return err
	}

	f.edgeAPIURL = url
	f.goService("edge-api", func() error { return serveHTTP(ctx, ln, api) })
	return nil
}

// ControlPlane is one control plane of the fleet. Several may run on the
// same registry file: the newest takes the hostname over and fences the
// older ones, which then stop.
type ControlPlane struct {
	// URL is the control plane's own loopback URL.
	URL string

	addr   string
	srv    *cp.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// Done is closed when the control plane has stopped.
func (c *ControlPlane) Done() <-chan struct{} { return c.done }

// Fenced reports whether a newer control plane fenced this one.
func (c *ControlPlane) Fenced() bool { return c.srv.Fenced() }

// Serving reports whether the control plane serves the fleet's
// hostname.
func (c *ControlPlane) Serving() bool { return c.srv.Serving() }

// TunnelID returns the id of the control plane's tunnel.
func (c *ControlPlane) TunnelID() string { return c.srv.TunnelID() }

// startCP starts the control plane, published as app.<domain> through its
// own tunnel, and waits until it serves.
func (f *Fleet) startCP(ctx context.Context) error {
	ln, _, err := listen("127.0.0.1:0")
	if err != nil {
		return err
	}

	c, err := f.runCP(ctx, ln)
	if err != nil {
		return err
	}
	return f.waitServing(ctx, c)
}

// CP returns the fleet's current control plane.
func (f *Fleet) CP() *ControlPlane {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cp
}

// StartSecondCP starts another control plane on the same registry, as a
// new control-plane VM would boot: it takes the hostname over, fences
// the current control plane, which stops, and becomes the current one.
// It returns once the new control plane serves.
func (f *Fleet) StartSecondCP() (*ControlPlane, error) {
	ln, _, err := listen("127.0.0.1:0")
	if err != nil {
		return nil, err
	}

	c, err := f.runCP(f.ctx, ln)
	if err != nil {
		return nil, err
	}
	if err := f.waitServing(f.ctx, c); err != nil {
		return nil, err
	}

	f.setCP(c)
	return c, nil
}

func (f *Fleet) setCP(c *ControlPlane) {
	f.mu.Lock()
	f.cp = c
	f.state.CPURL = c.URL
	st := f.state
	f.mu.Unlock()

	if st.AdminToken != "" { // the fleet finished starting: keep dev.json current
		if err := writeState(f.opts.StateDir, st); err != nil {
			f.log.Error("writing dev.json failed", "err", err)
		}
	}
}

// waitServing waits until c serves the fleet's hostname.
func (f *Fleet) waitServing(ctx context.Context, c *ControlPlane) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	for !c.Serving() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("devfleet: the control plane did not serve %s: %w",
				f.cpHost(), ctx.Err())
		case <-c.done:
			return errors.New("devfleet: the control plane stopped before it served")
		case <-time.After(20 * time.Millisecond):
		}
	}

	return nil
}

func (f *Fleet) cpHost() string { return cpHostLabel + "." + f.opts.Domain }

// runCP opens the registry and serves a control plane on ln. A control
// plane that is fenced stops by itself; that is not an error.
func (f *Fleet) runCP(ctx context.Context, ln net.Listener) (*ControlPlane, error) {
	dbPath := filepath.Join(f.opts.StateDir, "cp", "registry.db")
	store, err := fleet.Open(ctx, dbPath, fleet.Options{Logger: f.log})
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("devfleet: %w", err)
	}

	url := "http://" + ln.Addr().String()
	srv, err := f.newCP(ctx, store, url)
	if err != nil {
		ln.Close()
		store.Close()
		return nil, fmt.Errorf("devfleet: %w", err)
	}

	cpCtx, cancel := context.WithCancel(ctx)
	c := &ControlPlane{URL: url, addr: ln.Addr().String(), srv: srv, cancel: cancel,
		done: make(chan struct{})}
	if f.CP() == nil {
		f.setCP(c)
	}

	f.goService("control-plane", func() error {
		defer close(c.done)
		defer store.Close()

		errc := make(chan error, 1)
		go func() {
			err := srv.Run(cpCtx)
			cancel() // a fenced control plane stops serving too
			errc <- err
		}()

		// Serve until cpCtx ends or serving fails, then stop Run and collect its error.
		err := serveHTTP(cpCtx, ln, srv.Handler())
		cancel()
		runErr := <-errc
		if errors.Is(runErr, cp.ErrFenced) {
			f.log.Info("fenced control plane stopped", "url", url, "reason", runErr)
			runErr = nil
		}

		return errors.Join(err, runErr)
	})

	return c, nil
}

// newCP builds the control plane: it appraises the simulated TD's quotes,
// admits the fleet owner's CI through the local issuer, signs people in
// through the local GitHub, and publishes agents and itself on the local
// edge; its connector maps its tunnel's dashboard service to url.
func (f *Fleet) newCP(ctx context.Context, store *fleet.Store, url string) (*cp.Server, error) {
	pol, err := f.policy(ctx)
	if err != nil {
		return nil, err
	}

	sessions, err := websession.New(ctx, websession.Options{
		DB: store.Shared(), Env: fleetenv.Dev, PublicURL: f.dashboardOrigin(), Owner: f.owner(),
		TenantAgents: cp.TenantsOf(store), HTTPClient: localedge.HTTPClient(),
		GitHub: websession.GitHub{ClientID: oauthClientID, ClientSecret: f.secrets.OAuthSecret,
			WebURL: f.githubURL, APIURL: f.githubURL, Local: true},
		OnEvent: cp.SessionEvents(store), Logger: f.log,
	})
	if err != nil {
		return nil, err
	}

	return cp.New(cp.Options{
		Store: store, Env: "dev", Hostname: f.cpHost(), Domain: f.opts.Domain,
		AdminToken: f.secrets.AdminToken, Ingress: f.account, PublicURL: f.publicURL,
		Connect:   f.connector(map[string]string{ingress.DefaultService: url}),
		Appraiser: f.taVerifier, Policy: pol, Owner: f.owner(), CIVerifier: f.verifier, Sessions: sessions,
		HTTPClient: localedge.HTTPClient(), Build: f.opts.Build, Logger: f.log,
		ScrapeInterval: time.Second, SelfCheckInterval: f.opts.SelfCheckInterval,
		FenceGrace: 200 * time.Millisecond, ReapEvery: 2, ReapGrace: f.opts.ReapGrace,
		ReapFailures: 2,
		// Every dev agent registers from loopback, one address: give it
		// room for a whole fleet registering at once.
		NonceBurst: 4 * maxAgents,
	})
}

// connector returns a ConnectFunc for the local edge's connector, which
// reaches the tunnel's services at the origins in services.
func (f *Fleet) connector(services map[string]string) cp.ConnectFunc {
	return func(token string, onExit func(cloudflared.Exit)) (cp.Connector, error) {
		return localedge.NewConnector(localedge.ConnectorOptions{Provider: f.links,
			Token: token, Services: services, OnExit: onExit, Logger: f.log})
	}
}

// dashboardOrigin is the control plane's origin as browsers reach it.
func (f *Fleet) dashboardOrigin() string {
	return f.publicURL(cpHostLabel + "." + f.opts.Domain)
}

// startGitHub serves the local stand-in for github.com's OAuth and API at
// github.<domain> on the edge.
func (f *Fleet) startGitHub(ctx context.Context) error {
	ln, url, err := listen("127.0.0.1:0")
	if err != nil {
		return err
	}

	provider, err := websession.NewLocalProvider(websession.LocalProviderOptions{
		Env: fleetenv.Dev, ClientID: oauthClientID, ClientSecret: f.secrets.OAuthSecret,
		Users: websession.DevUsers(f.owner()), Logger: f.log})
	if err != nil {
		ln.Close()
		return fmt.Errorf("devfleet: %w", err)
	}

	f.goService("local-github", func() error { return serveHTTP(ctx, ln, provider) })
	host := "github." + f.opts.Domain
	if _, err := f.edge.Publish(ctx, "local-github", host, url); err != nil {
		return fmt.Errorf("devfleet: publishing the local GitHub: %w", err)
	}

	f.githubURL = f.edge.URL(host)
	return nil
}

// RestartCP stops the control plane and starts a new one on the same
// address and registry file, as a VM reboot of the control plane would.
// The new control plane creates a new tunnel, fences the old one's, and
// lives as long as the fleet.
func (f *Fleet) RestartCP() error {
	old := f.CP()
	old.cancel()
	<-old.done
	ln, err := net.Listen("tcp", old.addr)
	if err != nil {
		return fmt.Errorf("devfleet: relistening on %s: %w", old.addr, err)
	}

	c, err := f.runCP(f.ctx, ln)
	if err != nil {
		return err
	}
	if err := f.waitServing(f.ctx, c); err != nil {
		return err
	}

	f.setCP(c)
	return nil
}

// agentService is one agent and its runtime.
type agentService struct {
	name   string
	socket string
	agent  *agent.Agent
	edge   *localedge.Edge
	domain string
}

func (a *agentService) publicURL() string { return a.edge.URL(a.name + "." + a.domain) }

// startAgents starts each agent with its own runtime.
func (f *Fleet) startAgents(ctx context.Context) ([]*agentService, error) {
	var out []*agentService
	for i := 1; i <= f.opts.Agents; i++ {
		a, err := f.startAgent(ctx, fmt.Sprintf("agent-%d", i), f.verifier)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}

	return out, nil
}

func (f *Fleet) startAgent(ctx context.Context, name string,
	verifier *ghoidc.Verifier) (*agentService, error) {
	dir := filepath.Join(f.opts.StateDir, "agents", name)
	rt, err := f.startRuntime(ctx, name, dir)
	if err != nil {
		return nil, err
	}

	ln, origin, err := listen("127.0.0.1:0")
	if err != nil {
		return nil, err
	}

	fwd, err := audit.OpenForwarder(audit.ForwarderOptions{
		Path: filepath.Join(dir, "audit.jsonl"), Logger: f.log})
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("devfleet: %w", err)
	}

	// The agent finds the control plane by its public hostname, as in
	// production, so it follows the hostname to a newer control plane.
	connect := f.connector(map[string]string{ingress.DefaultService: origin,
		ingress.LocalService(ingress.AgentAPIPort): origin})

	ta, err := f.trustAuthorityClient()
	if err != nil {
		ln.Close()
		fwd.Close()
		return nil, fmt.Errorf("devfleet: %w", err)
	}

	ag, err := agent.New(agent.Options{
		VMName: name, Runtime: rt, Verifier: verifier, Owner: f.owner(), Audit: fwd,
		TrustAuthority:  ta,
		ControlPlaneURL: f.dashboardOrigin(), Origin: origin, SyncInterval: 2 * time.Second,
		HTTPClient: localedge.HTTPClient(), Build: f.opts.Build,
		KeyPath:    filepath.Join(dir, "agent-key.pem"),
		ClaimsPath: filepath.Join(dir, "claims.json"),
		Logger:     f.log.With("agent", name),
		Connect: func(token string, onExit func(cloudflared.Exit)) (agent.Connector, error) {
			return connect(token, onExit)
		},
	})
	if err != nil {
		ln.Close()
		fwd.Close()
		return nil, err
	}

	f.goService(name, func() error {
		defer fwd.Close()
		return ag.Serve(ctx, ln)
	})
	return &agentService{name: name, socket: rt.SocketPath(), agent: ag, edge: f.edge,
		domain: f.opts.Domain}, nil
}

// startRuntime starts the agent's local runtime with the ticker workload.
func (f *Fleet) startRuntime(ctx context.Context, name, dir string) (*runtime.Client, error) {
	ticker, err := workload.Parse(examples.Ticker())
	if err != nil {
		return nil, fmt.Errorf("devfleet: %w", err)
	}

	socket, err := socketPath(dir)
	if err != nil {
		return nil, err
	}

	rs, err := server.New(server.Options{
		SocketPath: socket, DataDir: filepath.Join(dir, "runtime"),
		HostTools: f.opts.HostTools, BootWorkloads: []workload.Spec{ticker},
		Attester: server.ProviderAttester(f.sim), AttestationType: f.sim.Type(),
		Logger: f.log.With("runtime", name),
	})
	if err != nil {
		return nil, fmt.Errorf("devfleet: %w", err)
	}

	f.goService(name+"-runtime", func() error { return rs.Serve(ctx) })
	select {
	case <-rs.Ready():
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	return runtime.NewClient(runtime.ClientOptions{SocketPath: socket, Token: rs.Token()})
}

// waitRegistered polls the agent until the control plane has registered it.
func (a *agentService) waitRegistered(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	for {
		if a.agent.Registered() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devfleet: agent %s did not register within %s", a.name, limit)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// maxSocketPath is the usable length of a unix socket path (sun_path).
const maxSocketPath = 104

// socketPath returns dir/runtime.sock, or a short path under the temp
// directory when that would not fit in a unix socket address.
func socketPath(dir string) (string, error) {
	p := filepath.Join(dir, "runtime.sock")
	if len(p) <= maxSocketPath {
		return p, nil
	}

	sum := sha256.Sum256([]byte(dir))
	short := filepath.Join(os.TempDir(), "dd-"+hex.EncodeToString(sum[:6]), "runtime.sock")
	if len(short) > maxSocketPath {
		return "", fmt.Errorf("devfleet: no short enough socket path for %s", dir)
	}
	return short, nil
}
