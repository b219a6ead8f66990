package cloudflare

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cloudflare/cloudflare-go/v6/zero_trust"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// appsPerPage is the page size of Access application lists.
const appsPerPage = 100

// CleanupAccess deletes the legacy Access applications that protect any
// of hostnames (cf.md §4): DevOps Defender authenticates in code, and an
// app left by an old deployment would put a login page in front of it.
//
// An app matches when its domain, a public destination or a self-hosted
// domain names one of the hostnames, on any path. Unlike the reference, a
// wildcard app ("*.example.com") never matches: it may belong to someone
// else in the account (cf.md §9 item 13). Every match is tried; the
// errors are joined. It returns the ids of the deleted apps.
func (p *Provider) CleanupAccess(ctx context.Context, hostnames []string) ([]string, error) {
	apps, err := p.listApps(ctx)
	if err != nil {
		return nil, fmt.Errorf("cloudflare: cleaning up Access: %w", err)
	}

	var deleted []string
	var errs []error
	for _, a := range apps {
		if !appMatches(a, hostnames) {
			continue
		}
		if err := p.deleteApp(ctx, a.ID); err != nil {
			errs = append(errs, err)
			continue
		}

		p.log.InfoContext(ctx, "legacy access app deleted", "app_id", a.ID, "name", a.Name,
			"domain", a.Domain)
		deleted = append(deleted, a.ID)
	}

	if err := errors.Join(errs...); err != nil {
		return deleted, fmt.Errorf("cloudflare: cleaning up Access: %w", err)
	}
	return deleted, nil
}

// cleanupAccess runs CleanupAccess after a create or an ingress change.
// Its failure is logged, never returned: Access is legacy, and a token
// without Access scope must not stop the fleet (the reference powered the
// control plane off, cf.md §9 item 13).
func (p *Provider) cleanupAccess(ctx context.Context, hostnames []string) {
	if p.opts.SkipAccessCleanup {
		return
	}
	if _, err := p.CleanupAccess(ctx, hostnames); err != nil {
		p.log.WarnContext(ctx, "legacy access cleanup failed", "err", err)
	}
}

func appMatches(a ingress.App, hostnames []string) bool {
	for _, t := range a.Targets {
		host, _, _ := strings.Cut(strings.ToLower(t), "/")
		for _, h := range hostnames {
			if host == h {
				return true
			}
		}
	}

	return false
}

func (p *Provider) deleteApp(ctx context.Context, id string) error {
	var params zero_trust.AccessApplicationDeleteParams
	set(&params.AccountID, p.opts.AccountID)
	_, err := p.apps.Delete(ctx, id, params, p.call(ctx, nil)...)
	if err != nil && !errors.Is(err, ingress.ErrNotFound) {
		return fmt.Errorf("deleting app %s: %w", id, err)
	}
	return nil
}

// listApps reads every Access application of the account, all pages.
func (p *Provider) listApps(ctx context.Context) ([]ingress.App, error) {
	var params zero_trust.AccessApplicationListParams
	set(&params.AccountID, p.opts.AccountID)
	set(&params.PerPage, int64(appsPerPage))
	pages := &pageLog{}
	it := p.apps.ListAutoPaging(ctx, params, p.call(ctx, pages)...)

	apps, err := collect(it, pages,
		func(a zero_trust.AccessApplicationListResponse) string { return a.ID })
	if err != nil {
		return nil, err
	}

	out := make([]ingress.App, 0, len(apps))
	for _, a := range apps {
		out = append(out, appFromJSON(a.ID, a.JSON.RawJSON()))
	}

	return out, nil
}

// appJSON holds the app fields DevOps Defender reads. The SDK types the
// union fields as interface{}, so they are decoded from the raw object.
type appJSON struct {
	Name         string `json:"name"`
	Domain       string `json:"domain"`
	Destinations []struct {
		Type string `json:"type"`
		URI  string `json:"uri"`
	} `json:"destinations"`
	SelfHostedDomains []json.RawMessage `json:"self_hosted_domains"`
	Policies          []json.RawMessage `json:"policies"`
}

func appFromJSON(id, raw string) ingress.App {
	var a appJSON
	json.Unmarshal([]byte(raw), &a)
	app := ingress.App{ID: id, Name: a.Name, Domain: a.Domain, PolicyKind: policyKind(a.Policies)}
	if a.Domain != "" {
		app.Targets = append(app.Targets, a.Domain)
	}

	for _, d := range a.Destinations {
		if d.Type == "public" && d.URI != "" {
			app.Targets = append(app.Targets, d.URI)
		}
	}

	for _, d := range a.SelfHostedDomains {
		if t := selfHostedDomain(d); t != "" {
			app.Targets = append(app.Targets, t)
		}
	}

	return app
}

// selfHostedDomain reads an entry that is a plain string or an object
// with "domain" or "uri".
func selfHostedDomain(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}

	var o struct{ Domain, URI string }
	json.Unmarshal(raw, &o)
	if o.Domain != "" {
		return o.Domain
	}
	return o.URI
}

// policyKind summarises the first policy as the snapshot reports it
// (cf.md §6.1): "bypass", "human" (allow with a GitHub organization or
// email rule), or "unknown".
func policyKind(policies []json.RawMessage) string {
	if len(policies) == 0 {
		return "unknown"
	}

	var pol struct {
		Decision string `json:"decision"`
	}
	json.Unmarshal(policies[0], &pol)

	lower := strings.ToLower(string(policies[0]))
	switch {
	case pol.Decision == "bypass":
		return "bypass"
	case pol.Decision == "allow" && (strings.Contains(lower, "github-organization") ||
		strings.Contains(lower, "emails")):
		return "human"
	}

	return "unknown"
}
