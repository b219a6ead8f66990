package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/cp"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ingress/cloudflare"
)

const cpHelp = `usage: devopsdefender cp [flags]

Runs the control plane: the fleet registry (a SQLite file), agent
registration, the fleet dashboard and API, the collector that scrapes
every agent's /health and reaps orphan tunnels, and the control plane's
own Cloudflare tunnel. A new control plane takes its hostname over and
fences the older one (STONITH), which refuses writes and powers off.

Each flag falls back to the environment variable named in its description.
The admin token (DD_ADMIN_TOKEN, at least 32 characters) is the fleet
admin's bearer token for the API and pages; like every secret it comes from
the environment only, so it does not show in the process list. People sign
in with GitHub when DD_GITHUB_CLIENT_ID and DD_GITHUB_CLIENT_SECRET name an
OAuth app whose callback is PUBLIC-URL/auth/github/callback.

Attestation: --attestation direct verifies TDX quotes against Intel's root
and, with --collateral, the platform's TCB level and PCK revocation against
Intel PCS collateral; ita verifies Intel Trust Authority tokens
(DD_ITA_JWKS_URL, DD_ITA_ISSUER, Intel's by default). The measurement
policy comes from DD_POLICY_MRTD, DD_POLICY_RTMR0..3, DD_POLICY_TCB_STATUS,
DD_POLICY_OUTOFDATE_GRACE and DD_POLICY_MODE; production and staging refuse
to start without an enforced policy.

Cloudflare credentials come from the environment only, never from flags:
CLOUDFLARE_API_TOKEN, CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_ZONE_ID (or
DD_CF_API_TOKEN, DD_CF_ACCOUNT_ID, DD_CF_ZONE_ID), and DD_CF_API_BASE to
point at another API root. cloudflared gets the tunnel token in its
environment (TUNNEL_TOKEN), never on its command line.

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

	ingressMode := fs.String("ingress", envOr("DD_INGRESS", "cloudflare"),
		"ingress provider: cloudflare (the local edge runs only in 'dev') (DD_INGRESS)")
	cloudflaredBin := fs.String("cloudflared", envOr("DD_CLOUDFLARED", "cloudflared"),
		"cloudflared binary carrying the control plane's tunnel (DD_CLOUDFLARED)")
	poweroff := fs.String("poweroff-cmd", envOr("DD_POWEROFF_CMD", ""),
		"command run once a newer control plane fenced this one, e.g. 'systemctl poweroff'; "+
			"empty: the process just exits (DD_POWEROFF_CMD)")

	var ident cpIdentityFlags
	ident.register(fs)
	attest := fs.String("attestation", envOr("DD_ATTESTATION", "direct"),
		"how agents' evidence is appraised: direct (verify TDX quotes against Intel's root "+
			"and --collateral), ita (verify Intel Trust Authority tokens) or none (record it "+
			"unverified; not in production or staging) (DD_ATTESTATION)")
	collateral := fs.String("collateral", envOr("DD_COLLATERAL", ""),
		"Intel collateral for --attestation direct, to check the TCB level and PCK revocation: "+
			"pcs (fetch from Intel PCS), a directory of saved PCS responses, or none (not in "+
			"production or staging); default pcs in production and staging, none elsewhere "+
			"(DD_COLLATERAL)")
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
	if *ingressMode != "cloudflare" {
		return usagef("--ingress %q: only \"cloudflare\" is available; "+
			"'devopsdefender dev' runs the local edge", *ingressMode)
	}

	provider, err := newCloudflare(*domain, e, log)
	if err != nil {
		return err
	}

	appraiser, err := newAppraiser(ctx, e,
		appraiserConfig{mode: *attest, collateral: *collateral}, log)
	if err != nil {
		return err
	}

	pol, err := newPolicy(e, log)
	if err != nil {
		return err
	}

	store, err := fleet.Open(ctx, *db, fleet.Options{Logger: log})
	if err != nil {
		return err
	}
	defer store.Close()

	opts := cp.Options{
		Store: store, Env: string(e), Domain: *domain, Hostname: *hostname,
		AdminToken: os.Getenv("DD_ADMIN_TOKEN"), Ingress: provider, Build: buildVersion(),
		Logger: log, Appraiser: appraiser, AcceptUnverified: appraiser == nil, Policy: pol,
		Connect: func(token string, onExit func(cloudflared.Exit)) (cp.Connector, error) {
			sup, err := superviseCloudflared(*cloudflaredBin, token, onExit, log)
			if err != nil {
				return nil, err
			}
			return sup, nil
		},
		PowerOff: powerOffCommand(*poweroff, log),
	}

	if err := ident.apply(ctx, e, *hostname, store, &opts, log); err != nil {
		return err
	}
	srv, err := cp.New(opts)
	if err != nil {
		return err
	}

	log.Info("control plane starting", "build", buildVersion(), "env", e, "listen", *listen,
		"db", *db, "hostname", *hostname, "domain", *domain, "ingress", *ingressMode,
		"attestation", *attest,
		"cf_account_id", provider.AccountID(), "cf_zone_id", provider.ZoneID(),
		"cloudflared", *cloudflaredBin, "poweroff_cmd", *poweroff)
	return serveUntilDone(ctx, *listen, srv.Handler(), srv.Run)
}

// newCloudflare builds the Cloudflare provider from the environment. The
// API token is read from the environment only and never logged.
func newCloudflare(domain string, env fleetenv.Env, log *slog.Logger) (*cloudflare.Provider,
	error) {
	get := func(names ...string) string {
		for _, n := range names {
			if v := strings.TrimSpace(os.Getenv(n)); v != "" {
				return v
			}
		}
		return ""
	}

	opts := cloudflare.Options{
		APIToken:  get("CLOUDFLARE_API_TOKEN", "DD_CF_API_TOKEN"),
		AccountID: get("CLOUDFLARE_ACCOUNT_ID", "DD_CF_ACCOUNT_ID"),
		ZoneID:    get("CLOUDFLARE_ZONE_ID", "DD_CF_ZONE_ID"),
		Domain:    domain, Env: string(env), BaseURL: get("DD_CF_API_BASE"), Logger: log,
	}

	var missing []string
	for name, v := range map[string]string{"CLOUDFLARE_API_TOKEN": opts.APIToken,
		"CLOUDFLARE_ACCOUNT_ID": opts.AccountID, "CLOUDFLARE_ZONE_ID": opts.ZoneID,
		"DD_CF_DOMAIN (--domain)": domain} {
		if v == "" {
			missing = append(missing, name)
		}
	}

	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("cloudflare ingress: set %s", strings.Join(missing, ", "))
	}
	return cloudflare.New(opts)
}

// superviseCloudflared returns a supervisor of bin for a tunnel token,
// which it passes in cloudflared's environment only.
func superviseCloudflared(bin, token string, onExit func(cloudflared.Exit),
	log *slog.Logger) (*cloudflared.Supervisor, error) {
	return cloudflared.New(cloudflared.Options{Token: token, Binary: bin, OnExit: onExit,
		Logger: log})
}

// powerOffCommand returns a PowerOff that runs command (split on spaces),
// or nil for none.
func powerOffCommand(command string, log *slog.Logger) func(context.Context) error {
	argv := strings.Fields(command)
	if len(argv) == 0 {
		return nil
	}

	return func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("running %q: %w: %s", command, err, bytes.TrimSpace(out))
		}
		log.Info("power-off command ran", "command", command)
		return nil
	}
}

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
	if err := srv.Shutdown(shutdownCtx); err != nil {
		// Requests still running (a held tunnel connection, a slow
		// client) end now rather than outlive the server.
		srv.Close()
	}

	if !bgDone {
		bgE = <-bgErr
	}
	if errors.Is(serveE, http.ErrServerClosed) {
		serveE = nil
	}
	return errors.Join(serveE, bgE)
}
