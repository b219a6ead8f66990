package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/agent"
	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
)

const agentHelp = `usage: devopsdefender agent [flags]

Runs the in-VM agent: it waits for the workload runtime's socket, registers
with the control plane, and serves /health, /api/units, /deploy, /exec,
/logs/{app} and the VM's page. /deploy, /exec and /logs require a GitHub
Actions OIDC token for the fleet's audience whose repository owner (or
repository, for a repo principal) is the fleet owner, or the tenant the
control plane assigned this agent to, by name and numeric id.

With --cloudflared, the agent runs cloudflared for the tunnel the control
plane created at registration, with the tunnel token in cloudflared's
environment (TUNNEL_TOKEN), and reports its state on /health. --expose
publishes ports of boot workloads under hostname labels; deployed
workloads publish theirs with "expose" in their spec.

Registration carries the runtime's TDX quote, bound to the control plane's
nonce and the agent's keys. With --ita-url the agent also has the quote
appraised by Intel Trust Authority and sends the token, for a control plane
that runs with --attestation ita.

With --key-file, the agent keeps its key pairs in that file, so that after
a restart it registers as the same agent: it keeps its VM name and tenant
even while its previous process still answers. Without it, a restarted
agent has new keys; it gets its name back once the old process stops
answering, but not its tenant, which the fleet admin must assign again.

Each flag falls back to the environment variable named in its description.

Flags:
`

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	vmName := fs.String("vm-name", envOr("DD_VM_NAME", ""), "VM name, a DNS label (DD_VM_NAME)")
	env := fs.String("env", envOr("DD_ENV", ""), "environment label (DD_ENV)")
	listen := fs.String("listen", envOr("DD_LISTEN", "127.0.0.1:"+envOr("DD_PORT", "8080")),
		"listen address (DD_LISTEN, or 127.0.0.1:DD_PORT)")
	cpURL := fs.String("cp-url", envOr("DD_CP_URL", ""), "control plane URL (DD_CP_URL)")
	origin := fs.String("origin", envOr("DD_ORIGIN", ""),
		"URL the tunnel connector reaches this agent at; default http://LISTEN (DD_ORIGIN)")
	socket := fs.String("socket", envOr("EE_SOCKET_PATH", "/var/lib/easyenclave/agent.sock"),
		"workload runtime socket (EE_SOCKET_PATH)")

	issuer := fs.String("oidc-issuer", envOr("DD_OIDC_ISSUER", ghoidc.GitHubIssuer),
		"GitHub Actions OIDC issuer (DD_OIDC_ISSUER)")
	audience := fs.String("oidc-audience", envOr("DD_OIDC_AUDIENCE", ""),
		"audience the fleet's tokens carry (DD_OIDC_AUDIENCE)")
	ownerKind := fs.String("owner-kind", envOr("DD_OWNER_KIND", "org"), "fleet owner kind: user, org or repo (DD_OWNER_KIND)")
	owner := fs.String("owner", envOr("DD_OWNER", ""), "fleet owner: login, org or owner/repo (DD_OWNER)")
	ownerID := fs.String("owner-id", envOr("DD_OWNER_ID", ""), "fleet owner's numeric GitHub id (DD_OWNER_ID)")

	cloudflaredBin := fs.String("cloudflared", envOr("DD_CLOUDFLARED", ""),
		"cloudflared binary carrying the agent's tunnel; empty runs none (DD_CLOUDFLARED)")
	expose := fs.String("expose", envOr("DD_EXPOSE", ""),
		"boot workloads' hostname claims, LABEL:PORT[,LABEL:PORT...] (DD_EXPOSE)")
	itaURL := fs.String("ita-url", envOr("DD_ITA_BASE_URL", ""),
		"Intel Trust Authority API base URL, for a control plane that appraises "+
			"Trust Authority tokens (--attestation ita); its API key comes from "+
			"DD_ITA_API_KEY only (DD_ITA_BASE_URL)")

	keyFile := fs.String("key-file", envOr("DD_KEY_FILE", ""),
		"PEM file keeping the agent's keys across restarts, created 0600 if missing; "+
			"empty keeps them in memory (DD_KEY_FILE)")
	claimsFile := fs.String("claims-file", envOr("DD_CLAIMS_FILE", ""),
		"file keeping deployed workloads' hostname claims across restarts of the agent; "+
			"empty keeps them in memory (DD_CLAIMS_FILE)")
	level := fs.String("log-level", envOr("DD_LOG_LEVEL", "info"), "log level (DD_LOG_LEVEL)")

	fs.Usage = func() { fmt.Fprint(stderr, agentHelp); fs.PrintDefaults() }
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
	if err := e.RequireReal("a non-GitHub OIDC issuer", *issuer != ghoidc.GitHubIssuer); err != nil {
		return err
	}

	principal, err := ghoidc.ParsePrincipal(*ownerKind, *owner, *ownerID)
	if err != nil {
		return usagef("fleet owner: %v", err)
	}
	claims, err := parseExpose(*expose)
	if err != nil {
		return usagef("--expose: %v", err)
	}

	verifier, err := ghoidc.NewVerifier(ctx, ghoidc.VerifierOptions{Issuer: *issuer,
		Audience: *audience, Logger: log})
	if err != nil {
		return err
	}
	defer verifier.Close()

	ta, err := trustAuthorityClient(*itaURL, os.Getenv("DD_ITA_API_KEY"), log)
	if err != nil {
		return err
	}

	rt, err := runtime.NewClient(runtime.ClientOptions{SocketPath: *socket,
		Token: envOr("EE_TOKEN", "")})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	if *origin == "" {
		*origin = "http://" + ln.Addr().String()
	}

	opts := agent.Options{VMName: *vmName, Runtime: rt, Verifier: verifier, Owner: principal,
		ControlPlaneURL: *cpURL, Origin: *origin, Expose: claims, KeyPath: *keyFile,
		ClaimsPath: *claimsFile, Build: buildVersion(), TrustAuthority: ta, Logger: log}
	if *cloudflaredBin != "" {
		opts.Connect = func(token string, onExit func(cloudflared.Exit)) (agent.Connector, error) {
			sup, err := superviseCloudflared(*cloudflaredBin, token, onExit, log)
			if err != nil {
				return nil, err
			}
			return sup, nil
		}
	}

	a, err := agent.New(opts)
	if err != nil {
		ln.Close()
		return err
	}

	if *keyFile == "" {
		log.Warn("no --key-file: a restarted agent gets new keys, so it takes its VM name " +
			"back only after the old registration goes stale, and without its tenant")
	}
	log.Info("agent starting", "build", buildVersion(), "env", e, "vm", *vmName,
		"listen", ln.Addr().String(), "cp_url", *cpURL, "owner", principal.String(),
		"cloudflared", *cloudflaredBin, "expose", *expose, "key_file", *keyFile)
	return a.Serve(ctx, ln)
}

// trustAuthorityClient returns the agent's Trust Authority client, or nil
// when no URL is configured: the control plane then appraises the quote
// itself.
func trustAuthorityClient(url, apiKey string, log *slog.Logger) (*ita.Client, error) {
	if url == "" {
		return nil, nil
	}
	if apiKey == "" {
		return nil, usagef("--ita-url needs the Trust Authority API key in DD_ITA_API_KEY")
	}

	c, err := ita.NewClient(ita.ClientOptions{BaseURL: url, APIKey: apiKey, Logger: log})
	if err != nil {
		return nil, usagef("--ita-url: %v", err)
	}
	return c, nil
}

// parseExpose reads "LABEL:PORT[,LABEL:PORT...]" (the reference's
// DD_EXTRA_INGRESS). Each claim is named after its label ("boot-LABEL"),
// since the agent never sees a boot workload's spec; the agent validates
// the labels.
func parseExpose(v string) ([]ingress.Claim, error) {
	var out []ingress.Claim
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}

		label, port, ok := strings.Cut(item, ":")
		n, err := strconv.Atoi(port)
		if !ok || err != nil {
			return nil, fmt.Errorf("%q is not LABEL:PORT", item)
		}
		out = append(out, ingress.Claim{App: "boot-" + label, Label: label, Port: n})
	}

	return out, nil
}
