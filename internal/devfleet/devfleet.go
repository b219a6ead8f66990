// Package devfleet runs a whole DevOps Defender fleet on one machine, on
// loopback, with no TDX and no internet: a local OIDC issuer standing in
// for GitHub Actions, the control plane with its SQLite registry, a local
// edge standing in for Cloudflare, and N agents, each with its own local
// workload runtime running real processes. Every piece speaks the real
// protocol, so the production code paths run unchanged.
//
// Ingress runs the control plane's production code against the local
// edge's provider (localedge.Provider, the stand-in for the Cloudflare
// account): the control plane creates its own tunnel for app.<domain>
// and one per agent registration, with the same ingress rules as in
// production, whose services are "http://localhost:PORT" inside a VM.
// The stand-in for cloudflared (localedge.Connector) maps them back to
// this machine: the control plane's connector maps the dashboard service
// (:8080) to its loopback listener, an agent's maps its dashboard and API
// services (:8080, :8081) to the agent's loopback listener, and every
// other service, a workload's exposed port, is dialled as written, since
// the workloads run on this machine. Agents find the control plane by
// its public hostname through the edge, as in production, so a second
// control plane ([Fleet.StartSecondCP]) takes the fleet over by taking
// the hostname over, and fences the first, which stops.
package devfleet

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/gofrs/flock"

	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// Dev fleet identity. The owner principal is what locally minted tokens
// carry by default, so the dev CLI can deploy out of the box.
const (
	Audience  = "devopsdefender"
	OwnerName = "devopsdefender-dev"
	OwnerID   = 1001
	KindOwner = ghoidc.KindOrg

	// oauthClientID names the control plane's OAuth app at the local
	// GitHub.
	oauthClientID = "devopsdefender-dev"
	cpHostLabel   = "app"
	cpOwnerLabel  = "control-plane"
)

// maxAgents bounds a dev fleet's agents.
const maxAgents = 64

// Options configures a dev fleet.
type Options struct {
	// StateDir holds the registry, keys and dev.json. Required.
	StateDir string

	// Listen is the edge's address. Empty means 127.0.0.1:8080; port 0
	// picks a free port.
	Listen string

	// Agents is the number of agents. Zero means 1.
	Agents int

	// Domain is the parent domain of fleet hostnames. Empty means
	// "localhost".
	Domain string

	// HostTools are host binaries linked into each runtime's bin dir.
	// Nil means busybox, when the host has it.
	HostTools []string

	// Build identifies the binary on /health.
	Build string

	// SelfCheckInterval is how often each control plane checks that its
	// hostname reaches it (and so how quickly an older one is fenced).
	// Zero means 1s.
	SelfCheckInterval time.Duration

	// ReapGrace is how long an orphan tunnel must have existed, and
	// failed its probes, before the control plane reaps it. Zero means
	// the production default, 15m.
	ReapGrace time.Duration

	// Logger receives every component's events. Nil discards them.
	Logger *slog.Logger
}

// Fleet is a running dev fleet. Stop it by cancelling the context given to
// [Start], or with [Fleet.Close].
type Fleet struct {
	opts    Options
	log     *slog.Logger
	secrets secrets
	state   State

	issuerURL string
	verifier  *ghoidc.Verifier
	githubURL string
	sim       *tdx.Simulator
	// taURL is the local Trust Authority; taVerifier checks its tokens.
	taURL      string
	taJWKSURL  string
	taVerifier *ita.Verifier
	edge       *localedge.Edge
	provider   *localedge.Provider
	cp         *ControlPlane // guarded by mu

	// account and links are how control planes and connectors reach the
	// edge's provider: the provider itself, or its API when the control
	// plane joined the fleet from another process ([Join]). publicURL
	// gives a hostname's URL on the edge.
	account    ingress.Provider
	links      localedge.Linker
	publicURL  func(hostname string) string
	edgeAPIURL string

	// lock is held while the fleet runs, so that a second fleet cannot
	// start on the same state dir.
	lock *flock.Flock

	// ctx is the fleet's lifetime; every component stops when it ends.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex // guards cp, state and errs
	errs   []error
}

// secrets are generated once per state dir and kept across runs.
type secrets struct {
	AdminToken  string `json:"admin_token"`
	MintSecret  string `json:"oidc_mint_secret"`
	OAuthSecret string `json:"oauth_client_secret"`
	// TrustAuthorityKey is the local Trust Authority's API key.
	TrustAuthorityKey string `json:"trust_authority_key"`
	// EdgeAPIToken authorizes the edge provider's API, which control
	// planes joining the fleet from another process use.
	EdgeAPIToken string `json:"edge_api_token"`
}

// Start starts every component, waits until each agent has registered,
// and writes dev.json. The fleet runs until ctx ends.
func Start(ctx context.Context, opts Options) (*Fleet, error) {
	f, err := newFleet(opts)
	if err != nil {
		return nil, err
	}

	f.ctx, f.cancel = context.WithCancel(ctx)
	ctx = f.ctx
	if err := f.start(ctx); err != nil {
		f.cancel()
		return nil, errors.Join(err, f.Wait())
	}
	return f, nil
}

func newFleet(opts Options) (*Fleet, error) {
	if opts.StateDir == "" {
		return nil, errors.New("devfleet: StateDir is required")
	}

	dir, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, fmt.Errorf("devfleet: resolving state dir: %w", err)
	}

	opts.StateDir = dir
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:8080"
	}
	if opts.Agents == 0 {
		opts.Agents = 1
	}

	if opts.Agents < 0 || opts.Agents > maxAgents {
		return nil, fmt.Errorf("devfleet: agents %d must be in 1..%d", opts.Agents, maxAgents)
	}

	if opts.Domain == "" {
		opts.Domain = "localhost"
	}
	if opts.SelfCheckInterval <= 0 {
		opts.SelfCheckInterval = time.Second
	}

	if opts.HostTools == nil {
		if _, err := exec.LookPath("busybox"); err == nil {
			opts.HostTools = []string{"busybox"}
		}
	}

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fleet{opts: opts, log: log}, nil
}

// start brings the components up in dependency order.
func (f *Fleet) start(ctx context.Context) error {
	if err := os.MkdirAll(f.opts.StateDir, 0o700); err != nil {
		return fmt.Errorf("devfleet: creating state dir: %w", err)
	}
	if err := f.lockStateDir(); err != nil {
		return err
	}

	s, err := loadSecrets(f.opts.StateDir)
	if err != nil {
		return err
	}
	f.secrets = s

	if err := f.startSimulator(); err != nil {
		return err
	}
	if err := f.startIssuer(ctx); err != nil {
		return err
	}
	if err := f.startTrustAuthority(ctx); err != nil {
		return err
	}

	if err := f.startEdge(ctx); err != nil {
		return err
	}
	if err := f.startGitHub(ctx); err != nil {
		return err
	}
	if err := f.startCP(ctx); err != nil {
		return err
	}

	agents, err := f.startAgents(ctx)
	if err != nil {
		return err
	}
	return f.finish(ctx, agents)
}

// finish waits for every agent to register and writes dev.json.
func (f *Fleet) finish(ctx context.Context, agents []*agentService) error {
	for _, a := range agents {
		if err := a.waitRegistered(ctx, time.Minute); err != nil {
			return err
		}
	}

	st := State{
		CPURL:          f.CP().URL,
		EdgeURL:        f.edge.URL("localhost"),
		DashboardURL:   f.edge.URL(cpHostLabel+"."+f.opts.Domain) + "/",
		AdminToken:     f.secrets.AdminToken,
		OIDCIssuer:     f.issuerURL,
		OIDCAudience:   Audience,
		OIDCMintSecret: f.secrets.MintSecret,
		Owner:          Owner{Kind: string(KindOwner), Name: OwnerName, ID: OwnerID},
		Services: Services{Domain: f.opts.Domain, EdgePort: f.edge.Port(),
			EdgeAPIURL: f.edgeAPIURL, TrustAuthorityURL: f.taURL,
			TrustAuthorityJWKSURL: f.taJWKSURL, GitHubURL: f.githubURL},
	}

	for _, a := range agents {
		st.Agents = append(st.Agents, StateAgent{Name: a.name, URL: a.publicURL(),
			RuntimeSocket: a.socket})
	}

	f.mu.Lock()
	f.state = st
	f.mu.Unlock()
	return writeState(f.opts.StateDir, st)
}

// startSimulator loads or creates the simulated TD shared by every agent
// of the fleet. Its PCK chain lives in the state dir, so the control
// plane's trust in its root survives restarts.
func (f *Fleet) startSimulator() error {
	sim, err := tdx.NewSimulator(tdx.SimulatorOptions{
		Dir: filepath.Join(f.opts.StateDir, "simulated-td"), Logger: f.log})
	if err != nil {
		return fmt.Errorf("devfleet: %w", err)
	}

	f.sim = sim
	return nil
}

// State returns what dev.json holds.
func (f *Fleet) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

// Provider returns the local edge's ingress provider, the fleet's
// stand-in for the Cloudflare account.
func (f *Fleet) Provider() *localedge.Provider { return f.provider }

// Close stops every component and waits for them.
func (f *Fleet) Close() error {
	f.cancel()
	return f.Wait()
}

// Wait blocks until every component has stopped and returns their errors.
func (f *Fleet) Wait() error {
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()

	if f.lock != nil {
		if err := f.lock.Unlock(); err != nil {
			f.errs = append(f.errs, fmt.Errorf("devfleet: unlocking the state dir: %w", err))
		}
		f.lock = nil
	}

	return errors.Join(f.errs...)
}

// lockFile is held, in the state dir, by the process running the fleet.
const lockFile = "dev.lock"

// lockWait bounds how long a starting fleet waits for its lock.
const lockWait = time.Second

// ErrRunning is matched (with errors.Is) by the error of [Start] when a
// fleet already runs on the state dir.
var ErrRunning = errors.New("devfleet: a dev fleet is already running on this state dir")

// lockStateDir takes the state dir's lock, which two fleets on one
// registry, one set of runtime sockets and one dev.json would fight
// over. The kernel drops the lock when the process ends, however it ends.
func (f *Fleet) lockStateDir() error {
	running := fmt.Errorf("%w (%s); to start a second control plane for it, run "+
		"`devopsdefender dev cp --state-dir %s`", ErrRunning, f.opts.StateDir, f.opts.StateDir)
	if up, err := Running(f.opts.StateDir); err == nil && up {
		return running
	}

	l := flock.New(filepath.Join(f.opts.StateDir, lockFile), flock.SetPermissions(0o600))
	// A client checking whether the fleet runs holds a shared lock for a
	// moment; wait that out rather than mistake it for a running fleet.
	ctx, cancel := context.WithTimeout(context.Background(), lockWait)
	defer cancel()
	ok, err := l.TryLockContext(ctx, 20*time.Millisecond)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("devfleet: locking the state dir: %w", err)
	}

	if !ok {
		return running
	}

	f.lock = l
	return nil
}

// Running reports whether a fleet holds the lock of dir. It creates
// nothing: a running fleet always has the lock file.
func Running(dir string) (bool, error) {
	path := filepath.Join(dir, lockFile)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}

	// A shared lock: checks do not get in each other's way, only the
	// fleet's exclusive one stops them.
	l := flock.New(path, flock.SetFlag(os.O_RDONLY))
	ok, err := l.TryRLock()
	if err != nil {
		return false, fmt.Errorf("devfleet: checking the state dir's lock: %w", err)
	}
	if ok {
		return false, l.Unlock()
	}
	return true, nil
}

// goService runs fn in a goroutine owned by the fleet and records its error.
func (f *Fleet) goService(name string, fn func() error) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := fn(); err != nil && !errors.Is(err, context.Canceled) {
			f.log.Error("component stopped with an error", "component", name, "err", err)
			f.mu.Lock()
			f.errs = append(f.errs, fmt.Errorf("%s: %w", name, err))
			f.mu.Unlock()
		}
	}()
}

func (f *Fleet) owner() ghoidc.Principal {
	return ghoidc.Principal{Kind: KindOwner, Name: OwnerName, ID: OwnerID}
}

// loadSecrets reads secrets.json from dir, creating it on first use.
func loadSecrets(dir string) (secrets, error) {
	var s secrets
	path := filepath.Join(dir, "secrets.json")
	data, err := os.ReadFile(path)
	if err == nil {
		if err := json.Unmarshal(data, &s); err != nil {
			return s, fmt.Errorf("devfleet: decoding %s: %w", path, err)
		}
		if s.AdminToken != "" && s.MintSecret != "" && s.OAuthSecret != "" &&
			s.TrustAuthorityKey != "" && s.EdgeAPIToken != "" {
			return s, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("devfleet: reading secrets: %w", err)
	}

	// Keep the stored secrets and generate only the missing ones.
	s = secrets{AdminToken: cmp.Or(s.AdminToken, randomHex(32)),
		MintSecret:        cmp.Or(s.MintSecret, randomHex(32)),
		OAuthSecret:       cmp.Or(s.OAuthSecret, randomHex(32)),
		TrustAuthorityKey: cmp.Or(s.TrustAuthorityKey, randomHex(32)),
		EdgeAPIToken:      cmp.Or(s.EdgeAPIToken, randomHex(32))}

	data, err = json.MarshalIndent(s, "", "  ")
	if err != nil {
		return s, fmt.Errorf("devfleet: encoding secrets: %w", err)
	}
	return s, writeFileAtomic(path, data, 0o600)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// listen opens a loopback TCP listener on addr.
func listen(addr string) (net.Listener, string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("devfleet: listening on %s: %w", addr, err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	return ln, "http://127.0.0.1:" + port, nil
}

// PrintSummary writes the short "what now" text for a person.
func (f *Fleet) PrintSummary(w io.Writer) {
	st := f.State()
	fmt.Fprintf(w, "DevOps Defender dev fleet is up (state in %s)\n\n", f.opts.StateDir)
	state := filepath.Join(f.opts.StateDir, StateFile)
	fmt.Fprintf(w, "  dashboard:    %s\n", st.DashboardURL)
	fmt.Fprintf(w, "                sign in with GitHub as dev-admin (or dev-tenant) on the local GitHub\n")
	fmt.Fprintf(w, "                API: bearer admin token, jq -r .admin_token %s\n", state)
	fmt.Fprintf(w, "  control plane %s\n", st.CPURL)

	for _, a := range st.Agents {
		fmt.Fprintf(w, "  agent %-8s %s\n", a.Name, a.URL)
	}

	first := st.Agents[0].Name
	fmt.Fprintf(w, "\nTry:\n  devopsdefender deploy --state-dir %s --agent %s examples/hello.json\n",
		f.opts.StateDir, first)
	fmt.Fprintf(w, "  devopsdefender logs --state-dir %s --agent %s hello\n", f.opts.StateDir, first)
	fmt.Fprintf(w, "\nCtrl-C stops the fleet and every workload.\n")
}
