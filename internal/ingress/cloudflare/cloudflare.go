// Package cloudflare is the production [ingress.Provider]: Cloudflare
// tunnels with remotely managed ingress, proxied CNAMEs to
// "<tunnel-id>.cfargotunnel.com", and the cleanup of legacy Access
// applications, on github.com/cloudflare/cloudflare-go/v6 (reference
// cf.md §1–§4).
//
// It fixes the reference's weaknesses (cf.md §9): every request has a
// timeout; 429 and 5xx answers are retried with backoff and jitter; every
// list is read to its last page and checked against the totals the API
// reports, so a short or failed list marks the view degraded instead of
// silently dropping live resources; records are looked up by exact name
// and never duplicated, moved only away from a tunnel of the provider's
// own environment (the reference rewrote whatever CNAME held a name, so a
// preview could take production's), and never written over a record that
// points at no tunnel; a failed create removes its tunnel; an ingress
// change removes the records of hostnames it drops; Access cleanup never
// deletes a wildcard app DevOps Defender did not make, and its failure
// never fails the caller.
//
// Tests run against the fake API in package cftest.
package cloudflare

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/cloudflare/cloudflare-go/v6/dns"
	"github.com/cloudflare/cloudflare-go/v6/option"
	"github.com/cloudflare/cloudflare-go/v6/zero_trust"

	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// DefaultBaseURL is Cloudflare's v4 API.
const DefaultBaseURL = "https://api.cloudflare.com/client/v4/"

// Options configures a [Provider].
type Options struct {
	// APIToken authenticates every request. Required. It is never logged.
	APIToken string

	// AccountID owns the tunnels and Access applications. Required.
	AccountID string

	// ZoneID holds the DNS records. Required.
	ZoneID string

	// Domain is the zone's name, e.g. "devopsdefender.com". Hostnames
	// outside it are refused, so no record is written into a zone that
	// does not serve it. Required.
	Domain string

	// Env is the environment whose tunnels this provider makes, e.g.
	// "production" or "pr-7". Several environments may share the zone: a
	// record is moved from another tunnel only if that tunnel's name
	// belongs to Env ([ingress.ParseResourceName]). Required.
	Env string

	// BaseURL is the API root. Empty means [DefaultBaseURL]; tests point it
	// at a cftest server.
	BaseURL string

	// HTTPClient sends requests. Nil means a new client with the default
	// transport; RequestTimeout bounds each attempt either way.
	HTTPClient *http.Client

	// RequestTimeout bounds one attempt of one request, body included.
	// Zero means 30s.
	RequestTimeout time.Duration

	// MaxAttempts is how often a request is tried when it keeps failing
	// with 429, a 5xx or a transport error. Zero means 5.
	MaxAttempts int

	// MinBackoff and MaxBackoff bound the wait between attempts, which
	// doubles from MinBackoff. Zero means 1s and 30s.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Sleep waits between attempts. Nil means a timer that ctx can
	// cancel; tests record the waits instead.
	Sleep func(ctx context.Context, d time.Duration) error

	// Logger receives retries and cleanup events. Nil discards them.
	Logger *slog.Logger

	// SkipAccessCleanup turns off the removal of legacy Access
	// applications after a create or an ingress change, e.g. for a token
	// without Access permissions.
	SkipAccessCleanup bool
}

// Provider talks to one Cloudflare account and zone. It is safe for
// concurrent use.
type Provider struct {
	opts Options
	log  *slog.Logger

	tunnels *zero_trust.TunnelCloudflaredService
	records *dns.RecordService
	apps    *zero_trust.AccessApplicationService
}

var _ ingress.Provider = (*Provider)(nil)

// New validates opts and returns a provider. It makes no request.
func New(opts Options) (*Provider, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}

	opts.setDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client := opts.HTTPClient
	if client == nil {
		client = &http.Client{}
	}

	// Retries are ours (see call); cloudflare-go's would retry on top.
	base := []option.RequestOption{
		option.WithBaseURL(opts.BaseURL),
		option.WithAPIToken(opts.APIToken),
		option.WithHTTPClient(client),
		option.WithMaxRetries(0),
	}

	return &Provider{
		opts:    opts,
		log:     log.With("component", "cloudflare"),
		tunnels: zero_trust.NewTunnelCloudflaredService(base...),
		records: dns.NewRecordService(base...),
		apps:    zero_trust.NewAccessApplicationService(base...),
	}, nil
}

func (o *Options) validate() error {
	var errs []error
	for name, v := range map[string]string{"APIToken": o.APIToken, "AccountID": o.AccountID,
		"ZoneID": o.ZoneID, "Domain": o.Domain} {
		if strings.TrimSpace(v) == "" {
			errs = append(errs, fmt.Errorf("%s is required", name))
		}
	}

	if o.Domain != "" {
		if err := ingress.ValidateHostname(o.Domain); err != nil {
			errs = append(errs, fmt.Errorf("domain: %w", err))
		}
	}
	if _, err := fleetenv.Parse(o.Env); err != nil {
		errs = append(errs, fmt.Errorf("env: %w", err))
	}

	if o.RequestTimeout < 0 || o.MaxAttempts < 0 || o.MinBackoff < 0 || o.MaxBackoff < 0 {
		errs = append(errs, errors.New("timeouts, attempts and backoffs must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cloudflare: invalid options: %w", err)
	}
	return nil
}

func (o *Options) setDefaults() {
	if o.BaseURL == "" {
		o.BaseURL = DefaultBaseURL
	}
	if !strings.HasSuffix(o.BaseURL, "/") {
		o.BaseURL += "/"
	}

	if o.RequestTimeout == 0 {
		o.RequestTimeout = 30 * time.Second
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 5
	}

	if o.MinBackoff == 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 30 * time.Second
	}

	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
}

// AccountID returns the account the provider manages.
func (p *Provider) AccountID() string { return p.opts.AccountID }

// ZoneID returns the zone the provider manages.
func (p *Provider) ZoneID() string { return p.opts.ZoneID }

// inZone reports whether hostname belongs to the provider's zone.
func (p *Provider) inZone(hostname string) bool {
	return hostname == p.opts.Domain || strings.HasSuffix(hostname, "."+p.opts.Domain)
}

// checkIngress validates in and that every hostname is in the zone.
func (p *Provider) checkIngress(in ingress.Ingress) error {
	if err := in.Validate(); err != nil {
		return err
	}

	for _, h := range in.Hostnames() {
		if !p.inZone(h) {
			return fmt.Errorf("cloudflare: hostname %q is outside the zone %q", h, p.opts.Domain)
		}
	}

	return nil
}
