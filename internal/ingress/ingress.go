// Package ingress is how the control plane makes agents and itself
// reachable under public hostnames: one tunnel per agent (and per control
// plane boot), whose ingress rules route each hostname to a local origin,
// and one DNS record per hostname pointing at the tunnel (reference cf.md
// §2 and §3).
//
// [Provider] is the interface the control plane programs against; the
// Cloudflare implementation lives in ingress/cloudflare. This package also
// holds the hostname rules every implementation shares: one-level
// flattening so that a single-level wildcard certificate covers every
// name ([LabelHostname]), label validation ([ValidateLabel],
// [ValidateClaims]) and the resource naming that tells which environment a
// tunnel or record belongs to ([ParseResourceName]).
package ingress

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ErrNotFound is matched (with errors.Is) by a provider's error when a
// tunnel or record does not exist.
var ErrNotFound = errors.New("ingress: not found")

// ErrHostnameTaken is matched (with errors.Is) by a provider's error when
// a hostname's DNS record belongs to something the tunnel may not take it
// from: a tunnel of another environment, a tunnel the provider cannot
// read, or a record that points at no tunnel. The record is left as it
// was.
var ErrHostnameTaken = errors.New("ingress: hostname taken")

// Provider creates and removes tunnels and their DNS records. Every method
// takes the caller's context; implementations retry transient failures
// themselves, so an error is final for this call.
type Provider interface {
	// CreateTunnel creates a remotely managed tunnel named name, applies
	// in's ingress rules and points a DNS record for each of in's
	// hostnames at it. A failure removes the tunnel again, so a failed
	// create leaves nothing that serves. A record is moved from another
	// tunnel only if that tunnel is of the same environment (by its name,
	// [ParseResourceName]); otherwise the call fails with
	// [ErrHostnameTaken].
	CreateTunnel(ctx context.Context, name string, in Ingress) (Tunnel, error)

	// ReplaceIngress replaces the whole ingress configuration of a tunnel
	// with in, points a record for each hostname at the tunnel, and
	// removes the records of hostnames it no longer serves (only those
	// still pointing at this tunnel). The tunnel and its token stay.
	// Records are moved as by CreateTunnel, and a hostname held by
	// another environment fails the call with [ErrHostnameTaken] before
	// anything changes.
	ReplaceIngress(ctx context.Context, tunnelID string, in Ingress) error

	// DeleteTunnel drops the tunnel's connections, deletes the tunnel and
	// then every DNS record still pointing at it. A record that was moved
	// to another tunnel (a control-plane cutover) is left alone. Deleting
	// a tunnel that is already gone is not an error.
	DeleteTunnel(ctx context.Context, tunnelID string) error

	// DeleteRecord deletes one DNS record. A missing record is not an
	// error.
	DeleteRecord(ctx context.Context, recordID string) error

	// Tunnel reads one tunnel. A soft-deleted tunnel is returned with
	// DeletedAt set; a tunnel that never existed gives [ErrNotFound].
	Tunnel(ctx context.Context, tunnelID string) (TunnelInfo, error)

	// TunnelIngress reads a tunnel's current ingress rules, catch-all
	// included, e.g. to find which hostnames an older control plane's
	// tunnel serves.
	TunnelIngress(ctx context.Context, tunnelID string) ([]Rule, error)

	// List reads every tunnel and DNS record, all pages of them. A list
	// that fails or comes back short is recorded in View.Errors and the
	// view is not Complete; List itself never fails.
	List(ctx context.Context, opts ListOptions) View
}

// Rule is one ingress rule: requests for Hostname go to Service, e.g.
// "http://localhost:8081" or "http_status:404". An empty Hostname matches
// every request (the catch-all).
type Rule struct {
	Hostname string `json:"hostname,omitempty"`
	Service  string `json:"service"`
}

// CatchAll is the last rule of every tunnel: hostnames nothing else
// matched get 404, as the local edge answers unknown hostnames.
var CatchAll = Rule{Service: "http_status:404"}

// Ingress is the routing of one tunnel: Extras first, in order, so that
// they match before the primary hostname, then the primary hostname, then
// [CatchAll] (cf.md §2.3).
type Ingress struct {
	// Hostname is the primary hostname, e.g. the agent's dashboard host.
	Hostname string

	// Service is the primary hostname's origin. Empty means
	// [DefaultService].
	Service string

	// Extras are further hostnames with their own origins, e.g. the agent
	// API and workloads' exposed ports.
	Extras []Rule
}

// Ports the agent and control plane listen on behind their tunnel.
const (
	// DashboardPort serves the primary hostname (cf.md §3).
	DashboardPort = 8080
	// AgentAPIPort serves the agent's API hostname.
	AgentAPIPort = 8081
	// ShellPort serves the control plane's "-shell" hostname.
	ShellPort = 7682
)

// DefaultService is the primary hostname's origin when none is given.
var DefaultService = LocalService(DashboardPort)

// LocalService returns the origin "http://localhost:<port>".
func LocalService(port int) string { return "http://localhost:" + strconv.Itoa(port) }

// Rules returns the full ordered rule list: extras, primary, catch-all.
func (in Ingress) Rules() []Rule {
	svc := in.Service
	if svc == "" {
		svc = DefaultService
	}
	rules := make([]Rule, 0, len(in.Extras)+2)
	rules = append(rules, in.Extras...)
	rules = append(rules, Rule{Hostname: in.Hostname, Service: svc}, CatchAll)
	return rules
}

// Hostnames returns the hostnames that need a DNS record, primary first
// and then the extras in order (the order records are written in).
func (in Ingress) Hostnames() []string {
	hs := make([]string, 0, len(in.Extras)+1)
	hs = append(hs, in.Hostname)
	for _, r := range in.Extras {
		hs = append(hs, r.Hostname)
	}
	return hs
}

// Validate checks that every hostname is a lowercase DNS name, that no
// hostname appears twice (a duplicate would silently shadow the second
// rule), and that every service is an http(s) origin or an http_status.
func (in Ingress) Validate() error {
	var errs []error
	seen := map[string]bool{}
	rules := in.Rules()
	for _, r := range rules[:len(rules)-1] {
		if err := ValidateHostname(r.Hostname); err != nil {
			errs = append(errs, err)
		}
		if seen[r.Hostname] {
			errs = append(errs, fmt.Errorf("hostname %q appears twice", r.Hostname))
		}
		seen[r.Hostname] = true
		errs = append(errs, validateService(r.Service))
	}

	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ingress: invalid ingress: %w", err)
	}
	return nil
}

var httpStatusRE = regexp.MustCompile(`^http_status:[1-5][0-9][0-9]$`)

// validateService accepts the origins the ingress rules are built from:
// an absolute http(s) URL without credentials, query or fragment, or a
// fixed status.
func validateService(svc string) error {
	if httpStatusRE.MatchString(svc) {
		return nil
	}

	u, err := url.Parse(svc)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("service %q is not an http(s) origin or http_status:NNN", svc)
	}
	return nil
}

// Tunnel is a tunnel as [Provider.CreateTunnel] made it.
type Tunnel struct {
	ID        string
	Name      string
	CreatedAt time.Time

	// Token is what cloudflared runs the tunnel with. It is a secret:
	// never log it, never put it on a command line.
	Token string `json:"-"`
}

// TunnelInfo is a tunnel as listed.
type TunnelInfo struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`

	// DeletedAt is set on a soft-deleted tunnel; zero means live.
	DeletedAt time.Time `json:"deleted_at,omitzero"`

	// Status is the provider's connection state: "inactive" (never
	// connected), "healthy", "degraded" or "down".
	Status string `json:"status,omitempty"`

	// Hostnames are the hostnames the tunnel's ingress rules route, in
	// rule order. Filled only when IngressListed.
	Hostnames []string `json:"hostnames,omitempty"`

	// IngressListed says Hostnames was read (see [ListOptions]).
	IngressListed bool `json:"ingress_listed,omitempty"`
}

// Deleted reports whether the tunnel is soft-deleted.
func (t *TunnelInfo) Deleted() bool { return !t.DeletedAt.IsZero() }

// TunnelTargetSuffix is the CNAME target suffix of every tunnel hostname:
// records point at "<tunnel-id>.cfargotunnel.com".
const TunnelTargetSuffix = ".cfargotunnel.com"

// TunnelTarget returns the CNAME target of a tunnel.
func TunnelTarget(tunnelID string) string { return tunnelID + TunnelTargetSuffix }

// Record is a DNS record as listed.
type Record struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Type      string    `json:"type"`
	Content   string    `json:"content"`
	Proxied   bool      `json:"proxied"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// TunnelID returns the tunnel a CNAME points at, or "" when the record
// does not point at a tunnel.
func (r *Record) TunnelID() string {
	if r.Type != "CNAME" {
		return ""
	}

	id, ok := strings.CutSuffix(strings.ToLower(r.Content), TunnelTargetSuffix)
	if !ok || id == "" || strings.Contains(id, ".") {
		return ""
	}
	return id
}

// App is a legacy Cloudflare Access application (cf.md §4). DevOps
// Defender creates none; old deployments left some behind.
type App struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Domain string `json:"domain"`

	// Targets are every domain or URI the app protects: its domain,
	// public destinations and self-hosted domains.
	Targets []string `json:"targets,omitempty"`

	// PolicyKind summarises the first policy: "bypass", "human" or
	// "unknown".
	PolicyKind string `json:"policy_kind"`
}

// ListOptions chooses what [Provider.List] reads besides tunnels and DNS
// records.
type ListOptions struct {
	// IngressPrefix, when set, reads the ingress rules of every live
	// tunnel whose name starts with it, e.g. "dd-pr-42-cp-" to find older
	// control planes by the hostnames they serve. Empty reads none.
	IngressPrefix string

	// Apps also lists legacy Access applications. A token without Access
	// scope then makes the view incomplete, so reaping leaves it off.
	Apps bool
}

// View is one reading of the provider's state.
type View struct {
	FetchedAt time.Time `json:"fetched_at"`

	// Tunnels are the live (not soft-deleted) tunnels.
	Tunnels []TunnelInfo `json:"tunnels"`

	// Records are the zone's CNAME records.
	Records []Record `json:"records"`

	// Apps are the legacy Access applications, when listed.
	Apps []App `json:"apps,omitempty"`

	// Errors says what could not be read completely.
	Errors []FetchError `json:"errors,omitempty"`

	// Complete is set by the provider when every requested list was read
	// in full. The zero View is not complete: an empty view must never
	// look like an account without resources.
	Complete bool `json:"complete"`
}

// Degraded reports whether the view may be missing resources. Nothing may
// be deleted on the strength of a degraded view.
func (v *View) Degraded() bool { return !v.Complete || len(v.Errors) > 0 }

// Failed reports whether reading the list what ("tunnels", "dns", "apps",
// or "ingress") failed.
func (v *View) Failed(what string) bool {
	for _, e := range v.Errors {
		if e.What == what {
			return true
		}
	}
	return false
}

// FetchError is one list that could not be read completely.
type FetchError struct {
	// What is "tunnels", "dns", "apps" or "ingress".
	What string `json:"what"`
	// ID names the tunnel for an "ingress" error.
	ID string `json:"id,omitempty"`
	// Err is the error text.
	Err string `json:"error"`
}

func (e FetchError) String() string {
	if e.ID != "" {
		return e.What + " " + e.ID + ": " + e.Err
	}
	return e.What + ": " + e.Err
}
