// Package cp is the DevOps Defender control plane: agents register with it,
// it publishes their ingress, keeps them in the fleet registry, scrapes
// their /health, and shows the fleet to its administrator.
//
// Every route and its authorization rule is in one table ([Server.Routes]).
//
// Ingress goes through an [ingress.Provider] (Cloudflare, or the local
// edge in dev), so both run this code: registration creates the agent's
// tunnel and hands its token to the agent, whose connector carries it;
// an agent's workloads publish hostnames through POST
// /agents/{id}/ingress; a re-registration deletes the replaced tunnel.
//
// [Server.Run] runs the collector: every ScrapeInterval it fetches each
// agent's /health through its API hostname with bounded concurrency and
// marks the agent healthy, stale or dead (records are kept, so a
// returning agent becomes healthy), and every ReapEvery rounds it reaps
// orphan tunnels (package reap). With [Options.Connect] it also publishes
// the control plane itself, fences older control planes of its hostname
// (STONITH, cf.md §7), and fences itself when a newer one takes over: it
// refuses writes at once, stops reaping and scraping, and powers off.
package cp

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/reap"
	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/websession"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// TokenVerifier verifies a GitHub Actions OIDC token; [ghoidc.Verifier]
// implements it.
type TokenVerifier interface {
	Verify(ctx context.Context, raw string) (*ghoidc.Claims, error)
}

// MinAdminTokenLen is the shortest admin token [New] accepts.
const MinAdminTokenLen = 32

// Options configures a [Server].
type Options struct {
	// Store is the fleet registry. Required; the caller closes it.
	Store *fleet.Store

	// Env is the installation's name, e.g. "dev" or "pr-42", a lowercase
	// DNS label. It is part of every agent id. Required.
	Env string

	// Hostname is the control plane's own public host, e.g.
	// "app.localhost". Required.
	Hostname string

	// Domain is the zone agents are named in: an agent registering as
	// vm_name "web" gets the hostname "web.<Domain>". Required.
	Domain string

	// AdminToken authenticates the fleet administrator's API calls as a
	// bearer token. Required, at least [MinAdminTokenLen] characters. It
	// is never logged.
	AdminToken string

	// Owner is the fleet owner principal: its CI jobs are the fleet's CI.
	// Required when CIVerifier is set.
	Owner ghoidc.Principal

	// CIVerifier verifies GitHub Actions OIDC tokens. Nil admits no CI
	// job.
	CIVerifier TokenVerifier

	// Sessions signs people in with GitHub and holds their sessions. Nil
	// means pages are reachable only with the admin bearer token.
	Sessions *websession.Service

	// Ingress creates the tunnels and DNS records that publish agents and
	// the control plane: Cloudflare in production, the local edge's
	// provider in dev. Required.
	Ingress ingress.Provider

	// PublicURL returns the URL at which a published hostname is reached,
	// e.g. "http://agent-1.localhost:8080" on the local edge. Nil means
	// "https://<hostname>", as behind Cloudflare.
	PublicURL func(hostname string) string

	// Connect builds the connector that carries the control plane's own
	// tunnel: cloudflared in production, the local edge's connector in
	// dev. onExit must be called after every exit of the connector that
	// its Run context did not cause. When Connect is set, [Server.Run]
	// creates the control plane's tunnel for Hostname, fences older
	// control planes once it serves, reaps orphans, and fences itself when
	// a newer one takes over. Nil publishes nothing, reaps nothing and
	// never fences (tests, a control plane reached directly).
	Connect ConnectFunc

	// PowerOff is called once the control plane was fenced, stopped
	// writing and waited FenceGrace; production powers the VM off. Nil
	// means [Server.Run] just returns [ErrFenced].
	PowerOff func(ctx context.Context) error

	// FenceGrace is how long a fenced control plane keeps answering reads
	// before PowerOff. Zero means 10s.
	FenceGrace time.Duration

	// SelfCheckInterval is the time between checks that the control
	// plane's own tunnel exists and its public hostname reaches it. Zero
	// means 10s.
	SelfCheckInterval time.Duration

	// FenceAfter is how many self-checks in a row must find the tunnel
	// deleted, or the hostname served by another control plane, before
	// the control plane fences itself. A deleted tunnel whose connector
	// exited fences it at once. Zero means 3 (cf.md §7).
	FenceAfter int

	// ReapEvery is how many collector rounds pass between listings of
	// the provider for reaping. Zero means 6 (every 30s at the default
	// ScrapeInterval, the reference's discovery interval).
	ReapEvery int

	// ReapGrace is how old an orphan tunnel must be, and how long its
	// probes must have failed, before it is reaped. Zero means
	// [reap.DefaultGrace].
	ReapGrace time.Duration

	// ReapFailures is how many probes of an orphan tunnel in a row must
	// fail before it is reaped. Zero means [reap.DefaultMinFailures].
	ReapFailures int

	// HTTPClient scrapes agents, probes orphan tunnels and the control
	// plane's own hostname. Nil means a client that does not follow
	// redirects; the dev launcher injects one that resolves *.localhost.
	HTTPClient *http.Client

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Logger receives access logs and events. Nil discards them.
	Logger *slog.Logger

	// ScrapeInterval is the time between collector rounds. Zero means 5s.
	ScrapeInterval time.Duration

	// ScrapeTimeout bounds one agent's /health request. Zero means 3s.
	ScrapeTimeout time.Duration

	// ScrapeConcurrency bounds how many agents are scraped at once. Zero
	// means 8.
	ScrapeConcurrency int

	// StaleAfter is how long an agent may go without a good scrape before
	// it is stale. Zero means 30s.
	StaleAfter time.Duration

	// DeadAfter is how long an agent may go without a good scrape before
	// it is dead. Zero means 15m, longer than an agent takes to reboot and
	// register again (cp.md §4.4).
	DeadAfter time.Duration

	// Build identifies the binary in /health. Empty means "dev".
	Build string

	// Appraiser checks agents' attestation evidence: a Trust Authority
	// token verifier, or a direct quote verifier. Required unless
	// AcceptUnverified is set.
	Appraiser ita.Appraiser

	// Policy decides whether appraised measurements are acceptable. Nil
	// accepts any evidence the Appraiser verified.
	Policy Policy

	// AcceptUnverified registers agents without checking their evidence,
	// recording it as "unverified" everywhere. It is for hosts without
	// TDX and MUST NOT be set in production or staging.
	AcceptUnverified bool

	// MaxEvidenceAge is how old an agent's last verified evidence may
	// grow before the agent is marked unattested. Zero means 30m.
	MaxEvidenceAge time.Duration

	// NonceTTL is how long a registration nonce stays valid. Zero means 2m.
	NonceTTL time.Duration

	// NonceBurst is how many nonces one client may take at once: an
	// anonymous caller per remote address, a registered agent per agent.
	// A client past it gets 429 until it earns another. Zero means 20.
	NonceBurst int

	// NonceEvery is how often a client earns another nonce. Zero means 3s.
	NonceEvery time.Duration
}

// Server is the control plane. Create it with [New], serve [Server.Handler]
// and run [Server.Run] for the collector.
type Server struct {
	opts    Options
	log     *slog.Logger
	store   *fleet.Store
	client  *http.Client
	started time.Time
	handler http.Handler

	// adminHash is the SHA-256 of the admin token; tokens are compared by
	// digest so that the comparison does not leak the length.
	adminHash [sha256.Size]byte

	// wake asks the collector for an immediate round; one pending request
	// is remembered while a round runs.
	wake    chan struct{}
	running atomic.Bool

	nonces *nonces

	// regMu serialises the registry side of registrations and agents'
	// ingress changes: checking who holds a hostname, reserving it while
	// the provider publishes it, and recording its owner (reserve.go).
	regMu    sync.Mutex
	reserved map[string]*reservation // by hostname; guarded by regMu

	// self is the control plane's own tunnel and fencing state.
	self selfState

	// reaper is the collector's reaping state.
	reaper reaperState
}

// New validates opts, fills in defaults and returns a server.
func New(opts Options) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("cp: %w", err)
	}

	opts.setDefaults()

	log := slog.New(requestIDHandler{opts.Logger.Handler()}).With("component", "cp")
	s := &Server{
		opts:      opts,
		log:       log,
		store:     opts.Store,
		client:    opts.HTTPClient,
		started:   opts.Now(),
		adminHash: sha256.Sum256([]byte(opts.AdminToken)),
		wake:      make(chan struct{}, 1),
		reserved:  map[string]*reservation{},
		nonces:    newNonces(&opts),
	}
	s.self.fencedCh = make(chan struct{})
	s.self.exited = make(chan struct{}, 1)
	s.reaper.probes = reap.Probes{}
	s.handler = s.routes()
	return s, nil
}

func (o *Options) validate() error {
	var errs []error
	if o.Store == nil {
		errs = append(errs, errors.New("Store is required"))
	}
	if !workload.ValidLabel(o.Env) {
		errs = append(errs, fmt.Errorf("Env %q is not a lowercase DNS label", o.Env))
	}
	if !validDNSName(o.Hostname) {
		errs = append(errs, fmt.Errorf("Hostname %q is not a DNS name", o.Hostname))
	}
	if !validDNSName(o.Domain) {
		errs = append(errs, fmt.Errorf("Domain %q is not a DNS name", o.Domain))
	}

	if len(o.AdminToken) < MinAdminTokenLen {
		errs = append(errs, fmt.Errorf("AdminToken must have at least %d characters",
			MinAdminTokenLen))
	}
	if o.Ingress == nil {
		errs = append(errs, errors.New("Ingress is required"))
	}
	if o.CIVerifier != nil && o.Owner.ID <= 0 {
		errs = append(errs, errors.New("Owner is required with a CIVerifier"))
	}
	if o.Appraiser == nil && !o.AcceptUnverified {
		errs = append(errs, errors.New("Appraiser is required unless AcceptUnverified is set"))
	}

	if o.ScrapeInterval < 0 || o.ScrapeTimeout < 0 || o.StaleAfter < 0 ||
		o.DeadAfter < 0 || o.ScrapeConcurrency < 0 || o.FenceGrace < 0 ||
		o.SelfCheckInterval < 0 || o.FenceAfter < 0 || o.ReapEvery < 0 ||
		o.ReapGrace < 0 || o.ReapFailures < 0 || o.NonceBurst < 0 || o.NonceEvery < 0 {
		errs = append(errs, errors.New("durations, counts and concurrency must not be negative"))
	}

	return errors.Join(errs...)
}

func (o *Options) setDefaults() {
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	setDefault(&o.ScrapeInterval, 5*time.Second)
	setDefault(&o.ScrapeTimeout, 3*time.Second)
	setDefault(&o.StaleAfter, 30*time.Second)
	setDefault(&o.DeadAfter, 15*time.Minute)
	setDefault(&o.MaxEvidenceAge, 30*time.Minute)
	setDefault(&o.NonceTTL, 2*time.Minute)
	setDefault(&o.NonceEvery, defaultNonceEvery)
	o.NonceBurst = cmp.Or(o.NonceBurst, defaultNonceBurst)
	if o.DeadAfter < o.StaleAfter {
		o.DeadAfter = o.StaleAfter
	}
	if o.ScrapeConcurrency == 0 {
		o.ScrapeConcurrency = 8
	}

	if o.Build == "" {
		o.Build = "dev"
	}
	if o.PublicURL == nil {
		o.PublicURL = func(h string) string { return "https://" + h }
	}

	setDefault(&o.FenceGrace, 10*time.Second)
	setDefault(&o.SelfCheckInterval, 10*time.Second)
	setDefault(&o.ReapGrace, reap.DefaultGrace)
	o.FenceAfter = cmp.Or(o.FenceAfter, 3)
	o.ReapEvery = cmp.Or(o.ReapEvery, 6)
	o.ReapFailures = cmp.Or(o.ReapFailures, reap.DefaultMinFailures)
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d == 0 {
		*d = v
	}
}

// validDNSName reports whether name is one or more lowercase DNS labels
// joined by dots, at most 253 characters.
func validDNSName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}

	for _, l := range strings.Split(name, ".") {
		if !workload.ValidLabel(l) {
			return false
		}
	}

	return true
}

// isLoopbackHost reports whether browsers treat host as a secure context
// even over plain HTTP (the dev fleet on *.localhost).
func isLoopbackHost(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Handler returns the control plane's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Wake asks the collector for a round now instead of at the next tick.
func (s *Server) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
