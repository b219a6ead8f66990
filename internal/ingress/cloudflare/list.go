package cloudflare

import (
	"context"
	"fmt"
	"strings"

	"github.com/cloudflare/cloudflare-go/v6/dns"
	"github.com/cloudflare/cloudflare-go/v6/shared"
	"github.com/cloudflare/cloudflare-go/v6/zero_trust"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// tunnelsPerPage is the page size of tunnel lists; every page is read.
const tunnelsPerPage = 100

// List implements [ingress.Provider]. Records are read before tunnels: a
// record seen here was written after its tunnel was created, so the later
// tunnel list holds that tunnel, and a record never looks dangling only
// because its tunnel is newer than the tunnel list (cf.md §5.2).
func (p *Provider) List(ctx context.Context, opts ingress.ListOptions) ingress.View {
	v := ingress.View{FetchedAt: p.opts.Now()}
	fail := func(what, id string, err error) {
		v.Errors = append(v.Errors, ingress.FetchError{What: what, ID: id, Err: err.Error()})
	}

	if recs, err := p.listRecords(ctx, dns.RecordListParams{}); err != nil {
		fail("dns", "", err)
	} else {
		v.Records = recs
	}

	if tuns, err := p.listTunnels(ctx); err != nil {
		fail("tunnels", "", err)
	} else {
		v.Tunnels = tuns
	}

	if opts.IngressPrefix != "" {
		p.readIngress(ctx, v.Tunnels, opts.IngressPrefix, fail)
	}

	if opts.Apps {
		if apps, err := p.listApps(ctx); err != nil {
			fail("apps", "", err)
		} else {
			v.Apps = apps
		}
	}

	v.Complete = len(v.Errors) == 0
	return v
}

// listTunnels reads every live tunnel, all pages.
func (p *Provider) listTunnels(ctx context.Context) ([]ingress.TunnelInfo, error) {
	var params zero_trust.TunnelCloudflaredListParams
	set(&params.AccountID, p.opts.AccountID)
	set(&params.IsDeleted, false)
	set(&params.PerPage, float64(tunnelsPerPage))
	pages := &pageLog{}

	it := p.tunnels.ListAutoPaging(ctx, params, p.call(ctx, pages)...)
	tuns, err := collect(it, pages, func(t shared.CloudflareTunnel) string { return t.ID })
	if err != nil {
		return nil, err
	}

	out := make([]ingress.TunnelInfo, 0, len(tuns))
	for i := range tuns {
		out = append(out, tunnelInfo(&tuns[i]))
	}

	return out, nil
}

// readIngress fills in the hostnames of the tunnels named with prefix.
func (p *Provider) readIngress(ctx context.Context, tuns []ingress.TunnelInfo, prefix string,
	fail func(what, id string, err error)) {
	for i := range tuns {
		t := &tuns[i]
		if !strings.HasPrefix(t.Name, prefix) {
			continue
		}

		rules, err := p.TunnelIngress(ctx, t.ID)
		if err != nil {
			fail("ingress", t.ID, err)
			continue
		}

		for _, r := range rules {
			if r.Hostname != "" {
				t.Hostnames = append(t.Hostnames, r.Hostname)
			}
		}

		t.IngressListed = true
	}
}

// autoPager is what cloudflare-go's ListAutoPaging returns.
type autoPager[T any] interface {
	Next() bool
	Current() T
	Err() error
}

// collect drains a pager and checks the listing is complete: no item
// twice (the listing shifted between pages, or the API ignores the page
// number, which would also never end), and the totals agree.
func collect[T any](it autoPager[T], pages *pageLog, id func(T) string) ([]T, error) {
	var out []T
	seen := map[string]bool{}
	for it.Next() {
		item := it.Current()
		k := id(item)
		if seen[k] {
			return nil, fmt.Errorf("incomplete listing: %s came twice", k)
		}
		seen[k] = true
		out = append(out, item)
	}

	if err := it.Err(); err != nil {
		return nil, err
	}
	if err := pages.check(len(out)); err != nil {
		return nil, fmt.Errorf("incomplete listing: %w", err)
	}
	return out, nil
}
