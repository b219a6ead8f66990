package websession

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

// Defaults of [Options].
const (
	DefaultSessionTTL     = 12 * time.Hour
	DefaultDeviceTokenTTL = 7 * 24 * time.Hour
	DefaultDeviceCodeTTL  = 10 * time.Minute
	DefaultPollInterval   = 5 * time.Second
	DefaultMaxPending     = 256

	defaultGitHubWeb = "https://github.com"
	defaultGitHubAPI = "https://api.github.com"

	// minSecret is the least length of Options.Secret.
	minSecret = 32
)

// Options configures [New].
type Options struct {
	// DB holds the session tables. Required. The caller opens it with the
	// modernc.org/sqlite driver, wraps it with [sqldb.New] and closes it;
	// [New] runs [Migrate]. Pass the registry's handle, so that session
	// writes take their turn with the registry's and the audit log's
	// instead of waiting in SQLite's busy handler.
	DB *sqldb.DB

	// Env is the installation. It decides whether plain HTTP and the local
	// OAuth provider may be used: never in production or staging.
	// Required.
	Env fleetenv.Env

	// PublicURL is the control plane's origin as browsers see it, e.g.
	// "https://app.example.com". The OAuth callback and the device
	// verification page hang under it. Required: https, or http to a
	// localhost name (localhost, *.localhost, a loopback IP) in dev.
	PublicURL string

	// ReturnHosts lists other hosts a return_to URL may name, each
	// "host[:port]" or "*.domain[:port]" (any subdomain, not the apex).
	// The PublicURL host and relative paths are always allowed. Empty, the
	// default, keeps people on the control plane; a wildcard over the
	// fleet domain also admits tenant workload hosts (auth.md §7.12).
	ReturnHosts []string

	// Owner is the fleet owner principal; who holds it is a fleet admin.
	// Required.
	Owner ghoidc.Principal

	// OrgAdminsOnly, for an org owner, makes only the org's owners (role
	// "admin") fleet admins. False, the default, admits every active
	// member, public or private.
	OrgAdminsOnly bool

	// TenantAgents answers which agents a person holds as tenant. Nil
	// means no tenants: only fleet admins can sign in.
	TenantAgents TenantsFunc

	// GitHub is where the OAuth app lives.
	GitHub GitHub

	// Secret keys the signing and encryption of state, cookies and bearer
	// tokens; at least 32 bytes, never logged. Nil means a random secret
	// created once and kept in DB, so sessions survive restarts. Changing
	// it ends every session.
	Secret []byte

	// SessionTTL is the life of a browser session. Zero means
	// [DefaultSessionTTL].
	SessionTTL time.Duration

	// DeviceTokenTTL is the longest life of a device-flow bearer token; a
	// token also ends with the browser session that approved it. Zero
	// means [DefaultDeviceTokenTTL].
	DeviceTokenTTL time.Duration

	// DeviceCodeTTL is how long a device code waits for approval, and how
	// long a sign-in may take. Zero means [DefaultDeviceCodeTTL].
	DeviceCodeTTL time.Duration

	// PollInterval is the least time between two polls of one device code.
	// Zero means [DefaultPollInterval].
	PollInterval time.Duration

	// MaxPendingDevices bounds the device codes waiting for approval, so
	// anonymous POST /auth/device/start cannot fill the database. Zero
	// means [DefaultMaxPending].
	MaxPendingDevices int

	// CookieDomain, if set, makes the session cookie a domain cookie
	// (without the "__Host-" prefix). Leave it empty: a domain cookie
	// reaches every host under the domain, tenant workloads included
	// (auth.md §7.4).
	CookieDomain string

	// TrustedOrigins are extra origins ("https://host") whose
	// state-changing requests are accepted, for [http.CrossOriginProtection].
	TrustedOrigins []string

	// OnEvent, if set, receives every login, logout and device pairing,
	// for the audit log. It runs synchronously on the request.
	OnEvent func(ctx context.Context, e Event)

	// HTTPClient calls GitHub. Nil means a client with a 15s timeout.
	HTTPClient *http.Client

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Logger receives events; never tokens, codes or secrets. Nil discards.
	Logger *slog.Logger
}

// GitHub names the OAuth app and where GitHub (or the local stand-in) is.
type GitHub struct {
	// ClientID and ClientSecret identify the OAuth app (or GitHub App).
	// Required; the secret is never logged.
	ClientID     string
	ClientSecret string

	// WebURL serves /login/oauth/authorize and /login/oauth/access_token.
	// Empty means https://github.com.
	WebURL string

	// APIURL serves the REST API (/user, …). Empty means
	// https://api.github.com.
	APIURL string

	// Local says the URLs point at a [LocalProvider]. Refused in
	// production and staging.
	Local bool
}

// config is Options validated and with defaults filled in.
type config struct {
	Options
	public   *url.URL
	secure   bool
	webURL   string
	apiURL   string
	returnOK []hostPattern
}

func (o Options) validate() (*config, error) {
	c := &config{Options: o}
	var errs []error

	if o.DB == nil {
		errs = append(errs, errors.New("DB is required"))
	}
	if _, err := fleetenv.Parse(string(o.Env)); err != nil {
		errs = append(errs, err)
	}

	if err := c.checkOwner(); err != nil {
		errs = append(errs, err)
	}
	if err := c.checkPublicURL(); err != nil {
		errs = append(errs, err)
	}
	if err := c.checkGitHub(); err != nil {
		errs = append(errs, err)
	}
	if err := c.checkReturnHosts(); err != nil {
		errs = append(errs, err)
	}

	if o.Secret != nil && len(o.Secret) < minSecret {
		errs = append(errs, fmt.Errorf("secret must have at least %d bytes", minSecret))
	}
	if o.CookieDomain != "" && strings.ContainsAny(o.CookieDomain, " ;,/:") {
		errs = append(errs, fmt.Errorf("cookie domain %q is not a host name", o.CookieDomain))
	}

	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("websession: %w", err)
	}
	c.fillDefaults()
	return c, nil
}

func (c *config) checkOwner() error {
	p := c.Owner
	if _, err := ghoidc.ParsePrincipal(string(p.Kind), p.Name, fmt.Sprint(p.ID)); err != nil {
		return fmt.Errorf("owner: %w", err)
	}
	return nil
}

func (c *config) checkPublicURL() error {
	u, err := parseOrigin(c.PublicURL)
	if err != nil {
		return fmt.Errorf("public URL: %w", err)
	}

	if u.Scheme == "http" && (c.Env != fleetenv.Dev || !isLocalhost(u.Hostname())) {
		return fmt.Errorf("public URL %q: plain http is only for localhost names in dev", u)
	}
	c.public, c.secure = u, u.Scheme == "https"
	return nil
}

func (c *config) checkGitHub() error {
	g := c.GitHub
	var errs []error
	if g.ClientID == "" || g.ClientSecret == "" {
		errs = append(errs, errors.New("GitHub client id and secret are required"))
	}
	if err := c.Env.RequireReal("the local GitHub OAuth provider", g.Local); err != nil {
		errs = append(errs, err)
	}

	web, err := c.checkGitHubURL(g.WebURL, defaultGitHubWeb)
	if err != nil {
		errs = append(errs, fmt.Errorf("GitHub web URL: %w", err))
	}
	api, err := c.checkGitHubURL(g.APIURL, defaultGitHubAPI)
	if err != nil {
		errs = append(errs, fmt.Errorf("GitHub API URL: %w", err))
	}

	c.webURL, c.apiURL = web, api
	return errors.Join(errs...)
}

// checkGitHubURL allows https anywhere and http only to a loopback stand-in
// outside production and staging. A path is kept, for GitHub Enterprise
// Server's "https://host/api/v3".
func (c *config) checkGitHubURL(raw, def string) (string, error) {
	if raw == "" {
		return def, nil
	}

	path := ""
	if u, err := url.Parse(raw); err == nil {
		path = strings.TrimSuffix(u.EscapedPath(), "/")
		u.Path, u.RawPath = "", ""
		raw = u.String()
	}

	u, err := parseOrigin(raw)
	if err != nil {
		return "", err
	}

	local := isLocalhost(u.Hostname())
	if local && c.Env.Protected() {
		return "", fmt.Errorf("%q is a local stand-in, refused in %s", u, c.Env)
	}
	if u.Scheme == "http" && !local {
		return "", fmt.Errorf("%q: plain http is only for a local stand-in", u)
	}
	return u.String() + path, nil
}

func (c *config) checkReturnHosts() error {
	var errs []error
	for _, h := range c.ReturnHosts {
		p, err := parseHostPattern(h)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c.returnOK = append(c.returnOK, p)
	}
	return errors.Join(errs...)
}

func (c *config) fillDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}

	def(&c.SessionTTL, DefaultSessionTTL)
	def(&c.DeviceTokenTTL, DefaultDeviceTokenTTL)
	def(&c.DeviceCodeTTL, DefaultDeviceCodeTTL)
	def(&c.PollInterval, DefaultPollInterval)

	if c.MaxPendingDevices <= 0 {
		c.MaxPendingDevices = DefaultMaxPending
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 15 * time.Second}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	// The PublicURL host is always a valid return_to target.
	c.returnOK = append(c.returnOK, hostPattern{host: strings.ToLower(c.public.Host)})
}

// parseOrigin parses an absolute http(s) URL with a host and nothing
// after it but an optional path "/".
func parseOrigin(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", raw, err)
	}

	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, fmt.Errorf("%q must be an http(s) URL", raw)
	case u.Host == "" || u.User != nil:
		return nil, fmt.Errorf("%q must name a host and no user", raw)
	case u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%q must have no path, query or fragment", raw)
	}
	return &url.URL{Scheme: u.Scheme, Host: strings.ToLower(u.Host)}, nil
}

// isLocalhost reports whether browsers treat host as a secure context over
// plain HTTP: localhost names and loopback addresses.
func isLocalhost(host string) bool {
	host = strings.ToLower(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}

	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
