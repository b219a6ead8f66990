package cloudflare

import (
	"context"
	"errors"
	"fmt"

	"github.com/cloudflare/cloudflare-go/v6/dns"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// recordsPerPage is the page size of DNS lists; every page is read
// whatever the size.
const recordsPerPage = 500

// heldName is a hostname with the CNAME that holds it, nil for none.
type heldName struct {
	name string
	rec  *ingress.Record
}

// lookupRecords finds the record of each hostname and checks that the
// tunnel may take it ([Provider.mayTake]) before anything is written, so
// that a refused name leaves every record, and the tunnel's rules, as
// they were. tunnelID is "" for a tunnel about to be created.
func (p *Provider) lookupRecords(ctx context.Context, tunnelID string,
	hostnames []string) ([]heldName, error) {
	held := make([]heldName, 0, len(hostnames))
	for _, h := range hostnames {
		rec, err := p.findCNAME(ctx, h)
		if err == nil {
			err = p.mayTake(ctx, rec, tunnelID)
		}
		if err != nil {
			return nil, fmt.Errorf("pointing %s at the tunnel: %w", h, err)
		}
		held = append(held, heldName{name: h, rec: rec})
	}

	return held, nil
}

// upsertRecords points a proxied CNAME for each name looked up by
// [Provider.lookupRecords] at the tunnel, in order (cf.md §3).
func (p *Provider) upsertRecords(ctx context.Context, tunnelID string, held []heldName) error {
	for _, h := range held {
		if err := p.upsertRecord(ctx, h.name, h.rec, tunnelID); err != nil {
			return fmt.Errorf("pointing %s at the tunnel: %w", h.name, err)
		}
	}
	return nil
}

// upsertRecord makes name a proxied CNAME to the tunnel: it updates rec
// if there is one (which moves a hostname from an old tunnel of this
// environment to a new one, the control-plane cutover of cf.md §2.4), and
// creates it otherwise. If the create races with another writer (or an
// earlier attempt that did succeed) and Cloudflare answers "already
// exists", the record is looked up and checked again, so a name never
// gets two records and a record another environment wrote in between is
// not taken. A name held by an A or AAAA record fails with
// [ingress.ErrHostnameTaken].
func (p *Provider) upsertRecord(ctx context.Context, name string, rec *ingress.Record,
	tunnelID string) error {
	target := ingress.TunnelTarget(tunnelID)
	if rec == nil {
		err := p.createRecord(ctx, name, target)
		apiErr, ok := asAPIError(err)
		if !ok || !apiErr.Exists() {
			return err
		}
		if rec, err = p.findCNAME(ctx, name); err != nil {
			return err
		}

		if rec == nil {
			return fmt.Errorf("a record that is not a CNAME holds the name (%w): %w",
				ingress.ErrHostnameTaken, apiErr)
		}
		if err := p.mayTake(ctx, rec, tunnelID); err != nil {
			return err
		}
	}

	if rec.Content == target && rec.Proxied {
		return nil
	}
	return p.updateRecord(ctx, rec.ID, name, target)
}

// mayTake checks that the tunnel may take rec over: a record pointing at
// the tunnel already, or at a tunnel (live or soft-deleted) whose name
// says it belongs to this provider's environment. Anything else fails
// with [ingress.ErrHostnameTaken] and is never overwritten: a record that
// points at no tunnel (somebody's own CNAME), a tunnel of another
// environment sharing the zone (a preview taking production's name), or a
// tunnel this account cannot read. A nil rec is free.
func (p *Provider) mayTake(ctx context.Context, rec *ingress.Record, tunnelID string) error {
	if rec == nil {
		return nil
	}

	holder := rec.TunnelID()
	switch {
	case holder == "":
		return fmt.Errorf("%w: the record points at %q, not at a tunnel",
			ingress.ErrHostnameTaken, rec.Content)
	case holder == tunnelID:
		return nil
	}

	t, err := p.Tunnel(ctx, holder)
	if errors.Is(err, ingress.ErrNotFound) {
		return fmt.Errorf("%w: the record points at tunnel %s, which this account does not "+
			"have", ingress.ErrHostnameTaken, holder)
	}

	if err != nil {
		return err
	}
	if n, ok := ingress.ParseResourceName(t.Name); !ok || n.Env != p.opts.Env {
		return fmt.Errorf("%w: the record points at tunnel %s (%q), which is not of "+
			"environment %q", ingress.ErrHostnameTaken, holder, t.Name, p.opts.Env)
	}
	return nil
}

// findCNAME returns the CNAME named name, or nil.
func (p *Provider) findCNAME(ctx context.Context, name string) (*ingress.Record, error) {
	var byName dns.RecordListParamsName
	set(&byName.Exact, name)
	var params dns.RecordListParams
	set(&params.Name, byName)

	recs, err := p.listRecords(ctx, params)
	if err != nil {
		return nil, fmt.Errorf("looking up %s: %w", name, err)
	}
	if len(recs) == 0 {
		return nil, nil
	}
	return &recs[0], nil
}

func (p *Provider) cnameBody(name, target string) dns.CNAMERecordParam {
	var body dns.CNAMERecordParam
	set(&body.Name, name)
	set(&body.Type, dns.CNAMERecordTypeCNAME)
	set(&body.Content, target)
	set(&body.Proxied, true)
	set(&body.TTL, dns.TTL1) // automatic; proxied records ignore TTL
	return body
}

func (p *Provider) createRecord(ctx context.Context, name, target string) error {
	var params dns.RecordNewParams
	set(&params.ZoneID, p.opts.ZoneID)
	params.Body = p.cnameBody(name, target)
	if _, err := p.records.New(ctx, params, p.call(ctx, nil)...); err != nil {
		return fmt.Errorf("creating %s: %w", name, err)
	}
	return nil
}

func (p *Provider) updateRecord(ctx context.Context, id, name, target string) error {
	var params dns.RecordUpdateParams
	set(&params.ZoneID, p.opts.ZoneID)
	params.Body = p.cnameBody(name, target)
	if _, err := p.records.Update(ctx, id, params, p.call(ctx, nil)...); err != nil {
		return fmt.Errorf("updating %s: %w", name, err)
	}
	return nil
}

// DeleteRecord implements [ingress.Provider].
func (p *Provider) DeleteRecord(ctx context.Context, recordID string) error {
	if recordID == "" {
		return errors.New("cloudflare: record id is required")
	}

	var params dns.RecordDeleteParams
	set(&params.ZoneID, p.opts.ZoneID)
	_, err := p.records.Delete(ctx, recordID, params, p.call(ctx, nil)...)
	if err != nil && !errors.Is(err, ingress.ErrNotFound) {
		return fmt.Errorf("cloudflare: deleting record %s: %w", recordID, err)
	}
	return nil
}

// dropRecords deletes the CNAMEs of names that still point at the tunnel.
func (p *Provider) dropRecords(ctx context.Context, tunnelID string, names []string) error {
	var errs []error
	for _, name := range names {
		rec, err := p.findCNAME(ctx, name)
		if err == nil && rec != nil && rec.TunnelID() == tunnelID {
			err = p.DeleteRecord(ctx, rec.ID)
		}
		errs = append(errs, err)
	}

	return errors.Join(errs...)
}

// deleteRecordsOf deletes every CNAME pointing at the tunnel, found by
// content, so that records of hostnames nobody remembers (workload
// hostnames of an agent the control plane never knew, cf.md §9 item 7) go
// too. A record another tunnel took over has other content and stays.
func (p *Provider) deleteRecordsOf(ctx context.Context, tunnelID string) error {
	var byContent dns.RecordListParamsContent
	set(&byContent.Exact, ingress.TunnelTarget(tunnelID))
	var params dns.RecordListParams
	set(&params.Content, byContent)
	recs, err := p.listRecords(ctx, params)
	if err != nil {
		return fmt.Errorf("listing records: %w", err)
	}

	var errs []error
	for _, r := range recs {
		if r.TunnelID() == tunnelID {
			errs = append(errs, p.DeleteRecord(ctx, r.ID))
		}
	}

	return errors.Join(errs...)
}

// listRecords reads every CNAME matching params, all pages, and checks
// the listing is complete.
func (p *Provider) listRecords(ctx context.Context,
	params dns.RecordListParams) ([]ingress.Record, error) {
	set(&params.ZoneID, p.opts.ZoneID)
	set(&params.Type, dns.RecordListParamsTypeCNAME)
	set(&params.PerPage, float64(recordsPerPage))
	pages := &pageLog{}
	it := p.records.ListAutoPaging(ctx, params, p.call(ctx, pages)...)
	recs, err := collect(it, pages, func(r dns.RecordResponse) string { return r.ID })
	if err != nil {
		return nil, err
	}

	out := make([]ingress.Record, 0, len(recs))
	for _, r := range recs {
		out = append(out, ingress.Record{ID: r.ID, Name: r.Name, Type: string(r.Type),
			Content: r.Content, Proxied: r.Proxied, CreatedAt: r.CreatedOn})
	}

	return out, nil
}
