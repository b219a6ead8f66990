package devfleet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/devopsdefender/devopsdefender/internal/ita"
)

// JoinOptions configures a control plane that joins a running dev fleet.
type JoinOptions struct {
	// StateDir is the running fleet's state dir. Required.
	StateDir string

	// Listen is the control plane's own loopback address. Empty means a
	// free port.
	Listen string

	// Build identifies the binary on /health.
	Build string

	// SelfCheckInterval and ReapGrace are as in [Options].
	SelfCheckInterval time.Duration
	ReapGrace         time.Duration

	// Logger receives the control plane's events. Nil discards them.
	Logger *slog.Logger
}

// ErrNotRunning is matched (with errors.Is) by the error of [Join] when
// no fleet runs on the state dir.
var ErrNotRunning = errors.New("devfleet: no dev fleet is running on this state dir")

// Join starts a new control plane for the fleet that another process runs
// on opts.StateDir, as a new control-plane VM boots in production: on the
// same registry, it creates its own tunnel for the fleet's hostname
// through the edge's provider API, takes the hostname over and fences the
// running control plane, which stops; the agents follow the hostname to
// the new one. Join returns once the new control plane serves, with
// dev.json pointing at it. The returned fleet holds only that control
// plane; it stops when ctx ends or when a newer control plane fences it
// in turn ([ControlPlane.Done] of its [Fleet.CP]).
func Join(ctx context.Context, opts JoinOptions) (*Fleet, error) {
	f, err := newFleet(Options{StateDir: opts.StateDir, Build: opts.Build,
		SelfCheckInterval: opts.SelfCheckInterval, ReapGrace: opts.ReapGrace,
		Logger: opts.Logger})
	if err != nil {
		return nil, err
	}

	f.ctx, f.cancel = context.WithCancel(ctx)
	if err := f.join(f.ctx, opts.Listen); err != nil {
		f.cancel()
		return nil, errors.Join(err, f.Wait())
	}
	return f, nil
}

// join connects to the running fleet's services and starts the control
// plane.
func (f *Fleet) join(ctx context.Context, listenAddr string) error {
	st, err := f.loadRunning()
	if err != nil {
		return err
	}
	if err := f.connectServices(ctx, st); err != nil {
		return err
	}

	ln, _, err := listen(cmp.Or(listenAddr, "127.0.0.1:0"))
	if err != nil {
		return err
	}

	c, err := f.runCP(ctx, ln)
	if err != nil {
		return err
	}
	if err := f.waitServing(ctx, c); err != nil {
		return err
	}

	// Point the fleet's clients at the new control plane, keeping what
	// the fleet's own process wrote.
	st.CPURL = c.URL
	f.mu.Lock()
	f.state = st
	f.mu.Unlock()
	return writeState(f.opts.StateDir, st)
}

// loadRunning checks that a fleet runs on the state dir and reads its
// state and secrets.
func (f *Fleet) loadRunning() (State, error) {
	dir := f.opts.StateDir
	ok, err := Running(dir)
	if err != nil {
		return State{}, err
	}
	if !ok {
		return State{}, fmt.Errorf("%w (%s): start it with `devopsdefender dev --state-dir %s`",
			ErrNotRunning, dir, dir)
	}

	st, err := LoadState(dir)
	if err != nil {
		return State{}, fmt.Errorf("devfleet: %w", err)
	}
	if st.Services.EdgeAPIURL == "" || st.Services.TrustAuthorityJWKSURL == "" {
		return State{}, fmt.Errorf("devfleet: %s has no services section: "+
			"restart the fleet with this version of devopsdefender", StateFile)
	}

	f.secrets, err = loadSecrets(dir)
	if err != nil {
		return State{}, err
	}

	f.opts.Domain = st.Services.Domain
	return st, nil
}

// connectServices sets the fleet up to use the running fleet's stand-ins:
// the simulated TD's chain (for the measurement policy), the OIDC issuer,
// the Trust Authority, the local GitHub and the edge provider's API.
func (f *Fleet) connectServices(ctx context.Context, st State) error {
	if err := f.startSimulator(); err != nil {
		return err
	}

	var err error
	f.issuerURL = st.OIDCIssuer
	f.verifier, err = ghoidc.NewVerifier(ctx, ghoidc.VerifierOptions{
		Issuer: f.issuerURL, Audience: Audience, Logger: f.log})
	if err != nil {
		return fmt.Errorf("devfleet: %w", err)
	}

	f.taURL, f.taJWKSURL = st.Services.TrustAuthorityURL, st.Services.TrustAuthorityJWKSURL
	f.taVerifier, err = ita.NewVerifier(ctx, ita.VerifierOptions{JWKSURL: f.taJWKSURL,
		Issuer: f.taURL, Logger: f.log})
	if err != nil {
		return fmt.Errorf("devfleet: %w", err)
	}

	f.githubURL = st.Services.GitHubURL

	client, err := localedge.NewClient(localedge.ClientOptions{URL: st.Services.EdgeAPIURL,
		Token: f.secrets.EdgeAPIToken, Logger: f.log})
	if err != nil {
		return fmt.Errorf("devfleet: %w", err)
	}

	port := st.Services.EdgePort
	f.account, f.links = client, client
	f.publicURL = func(host string) string {
		return "http://" + net.JoinHostPort(host, strconv.Itoa(port))
	}
	return nil
}
