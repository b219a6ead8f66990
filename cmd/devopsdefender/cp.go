package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/cp"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ita"
)

const cpHelp = `usage: devopsdefender cp [flags]

Runs the control plane: the fleet registry (a SQLite file), agent
registration, the fleet dashboard and API, and the collector that scrapes
every agent's /health.

Each flag falls back to the environment variable named in its description.
The admin token (DD_ADMIN_TOKEN, at least 32 characters) authorizes
GET /api/agents and the dashboard; prefer the environment to the flag so it
does not show in the process list.

Flags:
`

func runCP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", envOr("DD_LISTEN", "127.0.0.1:"+envOr("DD_PORT", "8080")),
		"listen address (DD_LISTEN, or 127.0.0.1:DD_PORT)")
	db := fs.String("db", envOr("DD_DB_PATH", "/var/lib/devopsdefender/cp/registry.db"),
		"registry database file (DD_DB_PATH)")
	env := fs.String("env", envOr("DD_ENV", ""), "environment label, e.g. production, pr-42 (DD_ENV)")
	domain := fs.String("domain", envOr("DD_CF_DOMAIN", ""), "parent domain of agent hostnames (DD_CF_DOMAIN)")
	hostname := fs.String("hostname", envOr("DD_HOSTNAME", ""), "the control plane's own hostname (DD_HOSTNAME)")
	adminToken := fs.String("admin-token", envOr("DD_ADMIN_TOKEN", ""), "fleet admin bearer token (DD_ADMIN_TOKEN)")
	ingress := fs.String("ingress", envOr("DD_INGRESS", "direct"),
		"ingress provider: direct (agents are reached at their origin URL; not in production or staging) (DD_INGRESS)")
	attest := fs.String("attestation", envOr("DD_ATTESTATION", "direct"),
		"how agents' evidence is appraised: direct (verify TDX quotes against Intel's root) "+
			"or none (record it unverified; not in production or staging) (DD_ATTESTATION)")
	level := fs.String("log-level", envOr("DD_LOG_LEVEL", "info"), "log level (DD_LOG_LEVEL)")
	fs.Usage = func() { fmt.Fprint(stderr, cpHelp); fs.PrintDefaults() }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}

	e, err := fleetenv.Parse(*env)
	if err != nil {
		return usagef("--env: %v", err)
	}
	if *ingress != "direct" {
		// TODO(#5): the Cloudflare ingress provider.
		return usagef("--ingress %q: only \"direct\" is available", *ingress)
	}
	if err := e.RequireReal("direct ingress", true); err != nil {
		return err
	}
	appraiser, err := newAppraiser(e, *attest, log)
	if err != nil {
		return err
	}
	store, err := fleet.Open(ctx, *db, fleet.Options{Logger: log})
	if err != nil {
		return err
	}
	defer store.Close()
	srv, err := cp.New(cp.Options{
		Store: store, Env: string(e), Domain: *domain, Hostname: *hostname,
		AdminToken: *adminToken, Ingress: directIngress{}, Build: buildVersion(), Logger: log,
		Appraiser: appraiser, AcceptUnverified: appraiser == nil,
	})
	if err != nil {
		return err
	}
	log.Info("control plane starting", "build", buildVersion(), "env", e, "listen", *listen,
		"db", *db, "hostname", *hostname, "domain", *domain)
	return serveUntilDone(ctx, *listen, srv.Handler(), srv.Run)
}

// newAppraiser returns the appraiser for --attestation, or nil for none.
// TODO(#3): the Trust Authority token mode.
func newAppraiser(e fleetenv.Env, mode string, log *slog.Logger) (ita.Appraiser, error) {
	switch mode {
	case "direct":
		return ita.NewDirect(ita.DirectOptions{Logger: log})
	case "none":
		if err := e.RequireReal("unverified attestation", true); err != nil {
			return nil, err
		}
		return nil, nil
	}
	return nil, usagef("--attestation %q: use direct or none", mode)
}

// directIngress publishes nothing: an agent is reached at its origin URL.
// It serves previews and test installations without an edge.
type directIngress struct{}

func (directIngress) Publish(ctx context.Context, agentID, hostname, origin string) (string, error) {
	return origin, nil
}

func (directIngress) Unpublish(ctx context.Context, agentID string) error { return nil }

// serveUntilDone serves h on addr and runs bg alongside until ctx ends.
func serveUntilDone(ctx context.Context, addr string, h http.Handler,
	bg func(context.Context) error) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bgErr := make(chan error, 1)
	go func() { bgErr <- bg(ctx) }()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	var serveE, bgE error
	bgDone := false
	select {
	case serveE = <-serveErr:
	case bgE = <-bgErr:
		bgDone = true
	case <-ctx.Done():
	}
	cancel()
	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	srv.Shutdown(shutdownCtx)
	if !bgDone {
		bgE = <-bgErr
	}
	if errors.Is(serveE, http.ErrServerClosed) {
		serveE = nil
	}
	return errors.Join(serveE, bgE)
}
