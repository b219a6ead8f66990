package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/cp"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/policy"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
	"github.com/devopsdefender/devopsdefender/internal/websession"
)

// cpIdentityFlags are the control plane's identity settings: the fleet
// owner, the CI tokens it admits, and GitHub sign-in for people.
type cpIdentityFlags struct {
	ownerKind, owner, ownerID string
	oidcIssuer, oidcAudience  string
	publicURL                 string
}

func (f *cpIdentityFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.ownerKind, "owner-kind", envOr("DD_OWNER_KIND", "org"),
		"fleet owner kind: user, org or repo (DD_OWNER_KIND)")
	fs.StringVar(&f.owner, "owner", envOr("DD_OWNER", ""),
		"fleet owner: login, org or owner/repo (DD_OWNER)")
	fs.StringVar(&f.ownerID, "owner-id", envOr("DD_OWNER_ID", ""),
		"fleet owner's numeric GitHub id (DD_OWNER_ID)")
	fs.StringVar(&f.oidcIssuer, "oidc-issuer", envOr("DD_OIDC_ISSUER", ghoidc.GitHubIssuer),
		"GitHub Actions OIDC issuer (DD_OIDC_ISSUER)")
	fs.StringVar(&f.oidcAudience, "oidc-audience", envOr("DD_OIDC_AUDIENCE", ""),
		"audience of the fleet's CI tokens; empty admits no CI job (DD_OIDC_AUDIENCE)")
	fs.StringVar(&f.publicURL, "public-url", envOr("DD_PUBLIC_URL", ""),
		"the control plane's origin for browsers; default https://HOSTNAME (DD_PUBLIC_URL)")
}

// apply fills the identity parts of opts: the owner, a CI verifier when an
// audience is set, and GitHub sign-in when DD_GITHUB_CLIENT_ID is set.
func (f *cpIdentityFlags) apply(ctx context.Context, e fleetenv.Env, hostname string,
	store *fleet.Store, opts *cp.Options, log *slog.Logger) error {
	if f.owner == "" {
		if e.Protected() {
			return usagef("--owner and --owner-id are required in %s", e)
		}
		log.Warn("no fleet owner configured: no CI job or GitHub user can act on the fleet")
		return nil
	}

	owner, err := ghoidc.ParsePrincipal(f.ownerKind, f.owner, f.ownerID)
	if err != nil {
		return usagef("fleet owner: %v", err)
	}
	opts.Owner = owner

	if err := e.RequireReal("a non-GitHub OIDC issuer", f.oidcIssuer != ghoidc.GitHubIssuer); err != nil {
		return err
	}

	if f.oidcAudience != "" {
		v, err := ghoidc.NewVerifier(ctx, ghoidc.VerifierOptions{Issuer: f.oidcIssuer,
			Audience: f.oidcAudience, Logger: log})
		if err != nil {
			return err
		}
		opts.CIVerifier = v
	}

	return f.applySessions(ctx, e, hostname, store, opts, log)
}

// applySessions turns on GitHub sign-in. The OAuth app's credentials come
// from the environment only.
func (f *cpIdentityFlags) applySessions(ctx context.Context, e fleetenv.Env, hostname string,
	store *fleet.Store, opts *cp.Options, log *slog.Logger) error {
	id, secret := os.Getenv("DD_GITHUB_CLIENT_ID"), os.Getenv("DD_GITHUB_CLIENT_SECRET")
	if id == "" {
		log.Warn("DD_GITHUB_CLIENT_ID not set: people cannot sign in; pages need the admin token")
		return nil
	}

	public := f.publicURL
	if public == "" {
		public = "https://" + hostname
	}
	sessions, err := websession.New(ctx, websession.Options{
		DB: store.Shared(), Env: e, PublicURL: public, Owner: opts.Owner,
		TenantAgents: cp.TenantsOf(store), OnEvent: cp.SessionEvents(store),
		GitHub: websession.GitHub{ClientID: id, ClientSecret: secret}, Logger: log,
	})
	if err != nil {
		return err
	}
	opts.Sessions = sessions
	return nil
}

// appraiserConfig is how the control plane appraises agents' evidence.
type appraiserConfig struct {
	// mode is --attestation: direct, ita or none.
	mode string
	// collateral is --collateral, for direct: pcs, none, a directory, or
	// empty for the environment's default.
	collateral string
	// client fetches collateral from Intel PCS; nil means tdx.PCS's own.
	client *http.Client
	// now pins the time quotes are checked at; nil means time.Now.
	now func() time.Time
}

// newAppraiser returns the appraiser for --attestation, or nil for none:
// direct verifies quotes against Intel's root and, with collateral, their
// TCB level and revocation; ita verifies Intel Trust Authority tokens
// (DD_ITA_JWKS_URL and DD_ITA_ISSUER, Intel's by default).
func newAppraiser(ctx context.Context, e fleetenv.Env, c appraiserConfig,
	log *slog.Logger) (ita.Appraiser, error) {
	if c.mode != "direct" && c.collateral != "" {
		log.Warn("--collateral is ignored unless --attestation is direct",
			"attestation", c.mode)
	}

	switch c.mode {
	case "direct":
		spec := cmp.Or(c.collateral, defaultCollateral(e))
		col, err := newCollateral(e, spec, c.client)
		if err != nil {
			return nil, err
		}

		if spec == "pcs" {
			col, err = tdx.NewCollateralCache(tdx.CollateralCacheOptions{Getter: col,
				TTL: pcsCacheTTL, Now: c.now, Logger: log})
			if err != nil {
				return nil, err
			}
		}

		if col == nil {
			log.Warn("no Intel collateral: TCB level and PCK revocation are not checked")
		} else {
			log.Info("quotes appraised with Intel collateral", "collateral", spec)
		}
		return ita.NewDirect(ita.DirectOptions{Collateral: col, Now: c.now, Logger: log})
	case "ita":
		return ita.NewVerifier(ctx, ita.VerifierOptions{JWKSURL: os.Getenv("DD_ITA_JWKS_URL"),
			Issuer: os.Getenv("DD_ITA_ISSUER"), Logger: log})
	case "none":
		if err := e.RequireReal("unverified attestation", true); err != nil {
			return nil, err
		}
		return nil, nil
	}

	return nil, usagef("--attestation %q: use direct, ita or none", c.mode)
}

// pcsCacheTTL is how long collateral fetched from Intel PCS is reused: a
// new CRL or TCB info is seen at most an hour late, and PCS is spared a
// handful of requests per quote.
const pcsCacheTTL = time.Hour

// newCollateral returns the Intel PCS collateral for --collateral: "pcs"
// fetches it from Intel with client, a directory serves saved PCS
// responses (see tdx.CollateralDir), and "none" gives nil, which leaves
// the TCB level unknown, so production and staging refuse it. Empty means
// pcs in production and staging and none elsewhere, where fleets run
// simulated TDs or hosts without outbound access to Intel.
func newCollateral(e fleetenv.Env, spec string, client *http.Client) (tdx.CollateralGetter,
	error) {
	switch cmp.Or(spec, defaultCollateral(e)) {
	case "pcs":
		return tdx.PCS{Client: client}, nil
	case "none":
		if err := e.RequireReal("appraisal without Intel collateral", true); err != nil {
			return nil, err
		}
		return nil, nil
	}

	fi, err := os.Stat(spec)
	if err != nil || !fi.IsDir() {
		return nil, usagef("--collateral %q: use pcs, none or a directory of saved "+
			"Intel PCS responses", spec)
	}
	return tdx.CollateralDir(spec), nil
}

func defaultCollateral(e fleetenv.Env) string {
	if e.Protected() {
		return "pcs"
	}
	return "none"
}

// newPolicy reads the measurement policy from DD_POLICY_* (see package
// policy). Production and staging refuse to start without an enforced
// policy that pins the MRTD; elsewhere no policy variables means none.
func newPolicy(e fleetenv.Env, log *slog.Logger) (cp.Policy, error) {
	if !e.Protected() && !anyEnvPrefix("DD_POLICY_") {
		log.Warn("no measurement policy (DD_POLICY_*): any verified TD is accepted")
		return nil, nil
	}

	p, err := policy.FromEnv(os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("measurement policy: %w", err)
	}
	if e.Protected() && (p.Empty() || p.Mode == policy.Observe) {
		return nil, errors.New("measurement policy: " + string(e) +
			" requires an enforced policy with an MRTD allowlist (DD_POLICY_MRTD)")
	}

	return p, nil
}

func anyEnvPrefix(prefix string) bool {
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, prefix) {
			return true
		}
	}
	return false
}
