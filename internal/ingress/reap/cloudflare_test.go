package reap

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/cloudflare"
	"github.com/devopsdefender/devopsdefender/internal/ingress/cloudflare/cftest"
)

// A fleet spread over several pages of tunnels and records, read from the
// fake Cloudflare API through the real provider, decided on and applied:
// the registered agent's tunnel and records sit on the last pages, where
// a reader of only the first page would have missed them (cf.md §9 item
// 3).
type pagedFleet struct {
	fake   *cftest.Server
	p      *cloudflare.Provider
	in     Input
	orphan string // tunnel id that qualifies for reaping
	known  string // the registered agent's tunnel id
}

func newPagedFleet(t *testing.T) *pagedFleet {
	t.Helper()
	fake := cftest.New(t, cftest.Options{MaxPerPage: 2, Now: func() time.Time { return now }})
	p, err := cloudflare.New(cloudflare.Options{APIToken: "t", AccountID: fake.AccountID(),
		ZoneID: fake.ZoneID(), Domain: domain, Env: env, BaseURL: fake.URL(), MaxAttempts: 1,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}

	f := &pagedFleet{fake: fake, p: p}
	old := ago(2 * time.Hour)
	orphan := fake.AddTunnel("dd-pr-7-agent-bbbb0002", old)
	fake.AddRecord("dd-pr-7-agent-bbbb0002.d.example", orphan.ID+".cfargotunnel.com", old)

	for i := range 3 { // other environments' tunnels fill the first pages
		other := fake.AddTunnel(fmt.Sprintf("dd-pr-8-agent-%04x", i), old)
		fake.AddRecord(fmt.Sprintf("dd-pr-8-agent-%04x.d.example", i),
			other.ID+".cfargotunnel.com", old)
	}

	known := fake.AddTunnel("dd-pr-7-agent-aaaa0001", old)
	for _, h := range []string{knownHost, knownAPI, "dd-pr-7-agent-aaaa0001-web.d.example"} {
		fake.AddRecord(h, known.ID+".cfargotunnel.com", old)
	}

	f.orphan, f.known = orphan.ID, known.ID
	f.in = Input{Env: env, Domain: domain, Now: now,
		// The registry knows the agent by tunnel id only: its hostnames
		// are protected because the tunnel is on the list.
		KnownTunnels: []string{known.ID},
		Probes: map[string]Probe{
			orphan.ID: {Failures: 3, FirstFailure: ago(time.Hour)},
			// Even a known agent failing its probes is not reaped here.
			known.ID: {Failures: 9, FirstFailure: ago(time.Hour)},
		}}

	return f
}

func (f *pagedFleet) liveRecords() []string {
	var out []string
	for _, r := range f.fake.Records() {
		out = append(out, r.Name)
	}
	slices.Sort(out)
	return out
}

func TestReapAcrossPages(t *testing.T) {
	f := newPagedFleet(t)
	ctx := context.Background()
	f.in.View = f.p.List(ctx, ingress.ListOptions{})
	if f.in.View.Degraded() {
		t.Fatalf("view degraded: %v", f.in.View.Errors)
	}
	if pages := len(f.fake.RequestsTo(cftest.RouteListRecords)); pages < 4 {
		t.Fatalf("records were read in %d requests; the fixture must span pages", pages)
	}

	d := Decide(f.in)
	if err := Apply(ctx, f.p, d, nil); err != nil {
		t.Fatal(err)
	}

	if got := names(d.Tunnels); !slices.Equal(got, []string{"dd-pr-7-agent-bbbb0002"}) {
		t.Errorf("reaped tunnels %v", got)
	}
	want := []string{knownHost, "dd-pr-7-agent-aaaa0001-web.d.example",
		"dd-pr-8-agent-0000.d.example", "dd-pr-8-agent-0001.d.example",
		"dd-pr-8-agent-0002.d.example", knownAPI}

	slices.Sort(want)
	if got := f.liveRecords(); !slices.Equal(got, want) {
		t.Errorf("records left %v, want %v", got, want)
	}
	if tun, _ := f.fake.Tunnel(f.known); !tun.DeletedAt.IsZero() {
		t.Error("the registered agent's tunnel was deleted")
	}
}

// A page that fails or comes back short makes the view degraded, and a
// degraded view deletes nothing, whichever list it hit. The registry here
// is empty (a control plane whose state was lost), so the completeness
// check is all that protects the live agent: a reader that took the short
// tunnel list at its word would delete the agent's records as dangling.
func TestReapNothingFromDegradedView(t *testing.T) {
	tests := []struct {
		name  string
		route string
		fault cftest.Fault
		// naiveDeletes says a reader ignoring the degradation would
		// delete live records.
		naiveDeletes bool
	}{
		{"tunnels short page", cftest.RouteListTunnels, cftest.Fault{ShortPage: 1, Page: 3}, true},
		{"tunnels page fails", cftest.RouteListTunnels,
			cftest.Fault{Status: http.StatusInternalServerError, Page: 2}, true},
		{"tunnels rate limited", cftest.RouteListTunnels,
			cftest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "1"}, true},
		{"records short page", cftest.RouteListRecords, cftest.Fault{ShortPage: 1, Page: 4}, false},
		{"records last page empty", cftest.RouteListRecords,
			cftest.Fault{ShortPage: 2, Page: 3}, false},
		{"records page fails", cftest.RouteListRecords,
			cftest.Fault{Status: http.StatusBadGateway, Page: 3}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newPagedFleet(t)
			f.in.KnownTunnels = nil
			before := f.liveRecords()
			f.fake.Inject(tt.route, tt.fault)
			f.in.View = f.p.List(context.Background(), ingress.ListOptions{})

			naive := f.in
			naive.View.Complete, naive.View.Errors = true, nil
			if n := len(Decide(naive).Records); (n > 0) != tt.naiveDeletes {
				t.Errorf("a naive reader would delete %d records, want deletions: %v", n,
					tt.naiveDeletes)
			}

			d := Decide(f.in)
			if d.Refused == "" || len(d.Tunnels)+len(d.Records) > 0 {
				t.Fatalf("decision on a degraded view: %+v", d)
			}
			if err := Apply(context.Background(), f.p, d, nil); err != nil {
				t.Fatal(err)
			}

			if got := f.liveRecords(); !slices.Equal(got, before) {
				t.Errorf("records changed from %v to %v", before, got)
			}

			for _, tun := range f.fake.Tunnels() {
				if !tun.DeletedAt.IsZero() {
					t.Errorf("tunnel %s deleted", tun.Name)
				}
			}
		})
	}
}
