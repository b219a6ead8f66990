package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// Limits and defaults.
const (
	// MaxRequestLine bounds one request line; EasyEnclave has no limit.
	MaxRequestLine = 1 << 20

	// DefaultLogMaxLines is how many lines each app's log keeps by default.
	DefaultLogMaxLines = 10000

	// MaxLogLine bounds one log line; longer output is split into several.
	MaxLogLine = 16 << 10

	// EEDataDir is EasyEnclave's data directory, the prefix that workload
	// specs hard-code.
	EEDataDir = "/var/lib/easyenclave"

	// DefaultShell is what "attach" runs when the request names no command.
	DefaultShell = "/bin/sh"

	// DefaultGitHubAPIURL is where release metadata comes from.
	DefaultGitHubAPIURL = "https://api.github.com"

	// stopGrace is how long a process group gets between SIGTERM and
	// SIGKILL (easyenclave.md §1.4 "stop").
	stopGrace = 2 * time.Second

	// maxSocketPath is the longest path a unix socket address can hold.
	maxSocketPath = 107
)

// Options configures a [Server]. Zero values select the documented defaults.
type Options struct {
	// SocketPath is where the runtime listens. Empty means
	// [DefaultSocketPath].
	SocketPath string

	// DataDir holds bin/ (fetched assets, host tools, first on PATH),
	// workloads/logs/ and shared/. Empty means [DefaultDataDir].
	DataDir string

	// Token fixes the seal token instead of minting a random one; it must be
	// 64 lowercase hex characters. Meant for tests (EE_TOKEN_FIXED).
	Token string

	// Unsealed turns the token check off. It MUST NOT be used where another
	// user or an untrusted workload can reach the socket.
	Unsealed bool

	// LogMaxLines bounds each app's log, keeping the newest lines. Zero
	// means [DefaultLogMaxLines].
	LogMaxLines int

	// GitHubAPIURL is the release API base. Empty means
	// [DefaultGitHubAPIURL].
	GitHubAPIURL string

	// GitHubToken, when set, is sent as a bearer token to the release API
	// and to asset downloads on the API's host or github.com.
	GitHubToken string

	// LocalAssetsDir, when set, is searched for release assets before the
	// network: <dir>/<owner>/<repo>/<tag or "latest">/<asset>, then
	// <dir>/<asset>.
	LocalAssetsDir string

	// RewriteDataPrefix selects the /var/lib/easyenclave prefix rewrite (see
	// the package doc). Nil means on unless DataDir is [EEDataDir].
	RewriteDataPrefix *bool

	// HostTools names host binaries to symlink into <DataDir>/bin at
	// startup, such as "busybox". A bare name is looked up on the PATH of
	// Env; a missing tool is a startup error.
	HostTools []string

	// BootWorkloads are deployed in order once the socket is bound. Their
	// release assets are fetched first; any fetch failure stops Serve.
	BootWorkloads []workload.Spec

	// Attester produces quotes for "attest". Nil means the local non-quote
	// of [LocalQuote] with attestation type "none".
	Attester Attester

	// AttestationType is what "health" reports when Attester is set, e.g.
	// "tdx". Required with an Attester.
	AttestationType string

	// RefuseAttest makes every "attest" fail as a runtime without an
	// attestation backend would (easyenclave.md §7.6).
	RefuseAttest bool

	// Shell is what "attach" runs without a cmd. Empty means [DefaultShell].
	Shell string

	// Env is the runtime's base environment for workloads, exec and attach.
	// Nil means os.Environ().
	Env []string

	// Logger receives the runtime's log and, at debug level, every workload
	// output line as "[<app>] <line>". Nil discards.
	Logger *slog.Logger

	// HTTPClient fetches release assets. Nil means a client with a
	// ten-minute overall timeout.
	HTTPClient *http.Client

	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Server is a local EasyEnclave runtime. Create it with [New] and run it with
// [Server.Serve].
type Server struct {
	opts     Options
	log      *slog.Logger
	token    string // empty when unsealed
	binDir   string
	logDir   string
	rewrite  bool
	baseEnv  []string // workload environment before a spec's env
	fetcher  *fetcher
	attester Attester
	attType  string
	ready    chan struct{}
	serving  chan struct{} // closed by the first Serve call

	wg sync.WaitGroup // connections, deploys, process watchers and readers

	mu      sync.Mutex // guards the fields below
	deps    map[string]*deployment
	seq     uint64
	upSince time.Time // zero until boot workloads are launched
	closing bool
	conns   map[net.Conn]struct{}
}

// New validates opts, fills in defaults and mints the token. It touches no
// files; [Server.Serve] does.
func New(opts Options) (*Server, error) {
	if err := fillDefaults(&opts); err != nil {
		return nil, err
	}
	if err := validate(&opts); err != nil {
		return nil, err
	}
	token, err := sealToken(opts)
	if err != nil {
		return nil, err
	}

	s := &Server{
		opts:    opts,
		log:     opts.Logger,
		token:   token,
		binDir:  filepath.Join(opts.DataDir, "bin"),
		logDir:  filepath.Join(opts.DataDir, "workloads", "logs"),
		rewrite: opts.DataDir != EEDataDir,
		ready:   make(chan struct{}),
		serving: make(chan struct{}),
		deps:    map[string]*deployment{},
		conns:   map[net.Conn]struct{}{},
	}
	if opts.RewriteDataPrefix != nil {
		s.rewrite = *opts.RewriteDataPrefix
	}

	s.baseEnv = workloadBaseEnv(opts.Env, s.binDir, opts.SocketPath, opts.DataDir)
	s.fetcher = newFetcher(opts, s.binDir)
	s.attester, s.attType = opts.Attester, opts.AttestationType
	if s.attester == nil {
		s.attester, s.attType = localAttester{}, attestationNone
	}

	return s, nil
}

func fillDefaults(o *Options) error {
	var err error
	if o.DataDir == "" {
		if o.DataDir, err = DefaultDataDir(); err != nil {
			return err
		}
	}

	if o.SocketPath == "" {
		o.SocketPath = DefaultSocketPath(o.DataDir)
	}

	// Workloads in any working directory must find both.
	if o.DataDir, err = filepath.Abs(o.DataDir); err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	if o.SocketPath, err = filepath.Abs(o.SocketPath); err != nil {
		return fmt.Errorf("server: socket path: %w", err)
	}

	if o.LogMaxLines == 0 {
		o.LogMaxLines = DefaultLogMaxLines
	}
	if o.GitHubAPIURL == "" {
		o.GitHubAPIURL = DefaultGitHubAPIURL
	}
	if o.Shell == "" {
		o.Shell = DefaultShell
	}
	if o.Env == nil {
		o.Env = os.Environ()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 10 * time.Minute}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

func validate(o *Options) error {
	var errs []error
	if len(o.SocketPath) > maxSocketPath {
		errs = append(errs, fmt.Errorf("socket path %q is longer than %d bytes",
			o.SocketPath, maxSocketPath))
	}
	if o.LogMaxLines < 0 {
		errs = append(errs, fmt.Errorf("LogMaxLines %d is negative", o.LogMaxLines))
	}
	if o.Unsealed && o.Token != "" {
		errs = append(errs, errors.New("Token and Unsealed are mutually exclusive"))
	}
	if o.Token != "" && !validToken(o.Token) {
		errs = append(errs, errors.New("Token must be 64 lowercase hex characters"))
	}
	if o.Attester != nil && o.AttestationType == "" {
		errs = append(errs, errors.New("AttestationType is required with an Attester"))
	}

	for _, t := range o.HostTools {
		if t == "" || filepath.Base(t) == "." || filepath.Base(t) == ".." {
			errs = append(errs, fmt.Errorf("host tool %q is not a program name", t))
		}
	}
	for i := range o.BootWorkloads {
		if err := o.BootWorkloads[i].Validate(); err != nil {
			errs = append(errs, fmt.Errorf("boot workload %d: %w", i, err))
		}
	}

	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("server: invalid options: %w", err)
	}
	return nil
}

// DefaultDataDir is /var/lib/easyenclave for root and
// $HOME/.local/state/easyenclave for anyone else (easyenclave.md §7.5).
func DefaultDataDir() (string, error) {
	if os.Geteuid() == 0 {
		return EEDataDir, nil
	}

	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("server: default data dir: %w", err)
	}
	return filepath.Join(home, ".local", "state", "easyenclave"), nil
}

// DefaultSocketPath is /var/lib/easyenclave/agent.sock for root and
// $XDG_RUNTIME_DIR/easyenclave/agent.sock for anyone else, falling back to
// <dataDir>/agent.sock without XDG_RUNTIME_DIR (easyenclave.md §7.1).
func DefaultSocketPath(dataDir string) string {
	if os.Geteuid() == 0 {
		return filepath.Join(EEDataDir, "agent.sock")
	}
	if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
		return filepath.Join(xdg, "easyenclave", "agent.sock")
	}
	return filepath.Join(dataDir, "agent.sock")
}

// sealToken returns the fixed token, a fresh one, or "" when unsealed.
func sealToken(o Options) (string, error) {
	switch {
	case o.Unsealed:
		return "", nil
	case o.Token != "":
		return o.Token, nil
	}

	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("server: minting token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func validToken(t string) bool {
	if len(t) != 64 {
		return false
	}

	for i := 0; i < len(t); i++ {
		c := t[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}

	return true
}

// Token returns the seal token clients must send, or "" when unsealed.
func (s *Server) Token() string { return s.token }

// SocketPath returns the absolute path the server listens on.
func (s *Server) SocketPath() string { return s.opts.SocketPath }

// DataDir returns the absolute data directory.
func (s *Server) DataDir() string { return s.opts.DataDir }

// Ready is closed once the socket accepts connections and the boot workloads
// have been launched. It is never closed if Serve fails before that.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Serve prepares the data directory, links the host tools, fetches the boot
// workloads' release assets, binds the socket, launches the boot workloads
// and answers requests until ctx ends.
//
// When ctx ends, Serve stops accepting, stops every workload (concurrently,
// each with SIGTERM, up to 2 s, then SIGKILL on its process group), closes
// open connections including attach sessions, waits for every goroutine it
// started, removes the socket and returns nil. A failure before the socket is
// bound, such as a boot fetch error, is returned at once. Serve may be
// called only once.
func (s *Server) Serve(ctx context.Context) error {
	select {
	case <-s.serving:
		return errors.New("server: Serve called twice")
	default:
		close(s.serving)
	}

	if err := s.prepare(ctx); err != nil {
		return err
	}
	ln, err := listen(s.opts.SocketPath)
	if err != nil {
		return err
	}

	s.logStart()
	s.bootWorkloads(ctx)
	close(s.ready)

	stopListening := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopListening()
	s.acceptLoop(ctx, ln)

	s.shutdown()
	if err := os.Remove(s.opts.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("removing socket", "path", s.opts.SocketPath, "err", err)
	}

	return nil
}

// prepare creates the directories, links host tools and pre-fetches boot
// assets (easyenclave.md §3.6 steps 2 and 4).
func (s *Server) prepare(ctx context.Context) error {
	for _, dir := range []string{s.binDir, s.logDir, filepath.Join(s.opts.DataDir, "shared")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("server: creating %s: %w", dir, err)
		}
	}

	if err := linkHostTools(s.binDir, s.opts.HostTools, s.opts.Env); err != nil {
		return err
	}

	// boot assets are fetched before the socket is bound
	for i, spec := range s.opts.BootWorkloads {
		if spec.GitHubRelease == nil {
			continue
		}
		if _, err := s.fetcher.fetch(ctx, *spec.GitHubRelease); err != nil {
			return fmt.Errorf("server: fetching boot workload %d (%s): %w", i, spec.Name(), err)
		}
	}

	return nil
}

// listen binds the socket after removing a stale one and restricts it to
// its owner (easyenclave.md §1.1).
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("server: creating socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("server: removing stale socket: %w", err)
	}

	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("server: binding %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("server: restricting socket: %w", err)
	}
	return ln, nil
}

func (s *Server) logStart() {
	s.log.Info("runtime listening",
		"socket", s.opts.SocketPath,
		"data_dir", s.opts.DataDir,
		"sealed", s.token != "",
		"rewrite_data_prefix", s.rewrite,
		"log_max_lines", s.opts.LogMaxLines,
		"attestation_type", s.attType)

	if s.opts.Attester == nil {
		s.log.Warn("no attestation backend: attest answers with a local blob " +
			"that is NOT a TDX quote")
	}
}

// bootWorkloads deploys the boot specs in order, then starts the uptime
// clock (easyenclave.md §3.6 steps 6 and 7). Like any deploy, each one
// starts in the background, so they run concurrently.
func (s *Server) bootWorkloads(ctx context.Context) {
	for _, spec := range s.opts.BootWorkloads {
		s.deploy(ctx, spec, true)
	}

	s.mu.Lock()
	s.upSince = s.opts.Now()
	s.mu.Unlock()
}

// acceptLoop serves each connection on its own goroutine until the listener
// is closed.
func (s *Server) acceptLoop(ctx context.Context, ln net.Listener) {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accepting connection", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}

		delay = 0
		if !s.trackConn(conn) {
			conn.Close()
			continue
		}

		s.wg.Go(func() {
			defer s.untrackConn(conn)
			s.serveConn(ctx, conn)
		})
	}
}

func (s *Server) trackConn(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrackConn(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// shutdown stops every workload, closes every connection and waits for
// every goroutine the server started.
func (s *Server) shutdown() {
	s.mu.Lock()
	s.closing = true
	deps := make([]*deployment, 0, len(s.deps))
	for _, d := range s.deps {
		deps = append(deps, d)
	}
	s.mu.Unlock()

	var stops sync.WaitGroup
	for _, d := range deps {
		stops.Go(func() { s.halt(d) })
	}
	stops.Wait()

	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()

	s.wg.Wait()
	s.log.Info("runtime stopped", "workloads", len(deps))
}
