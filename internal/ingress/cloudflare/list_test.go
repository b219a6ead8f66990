package cloudflare

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/cloudflare/cftest"
)

// seed fills the fake with n agent tunnels, each with a record, plus one
// soft-deleted tunnel, and returns the live tunnels' ids.
func seed(t *testing.T, f *fixture, n int) []string {
	t.Helper()
	created := time.Now().Add(-time.Hour)
	var ids []string
	for i := range n {
		tun := f.fake.AddTunnel(fmt.Sprintf("dd-pr-7-agent-%04x", i), created)
		f.fake.AddRecord(fmt.Sprintf("dd-pr-7-agent-%04x.%s", i, testDomain),
			tun.ID+".cfargotunnel.com", created)
		ids = append(ids, tun.ID)
	}

	gone := f.fake.AddTunnel("dd-pr-7-agent-dead", created)
	if err := f.p.DeleteTunnel(context.Background(), gone.ID); err != nil {
		t.Fatal(err)
	}

	f.fake.ResetRequests()
	return ids
}

func TestListReadsEveryPage(t *testing.T) {
	f := newFixture(t, 3, nil)
	ids := seed(t, f, 7)
	v := f.p.List(context.Background(), ingress.ListOptions{})
	if v.Degraded() {
		t.Fatalf("view degraded: %v", v.Errors)
	}

	var got []string
	for _, tun := range v.Tunnels {
		got = append(got, tun.ID)
	}

	if !slices.Equal(got, ids) {
		t.Errorf("tunnels = %v, want %v (soft-deleted one left out)", got, ids)
	}
	if len(v.Records) != 7 {
		t.Errorf("%d records, want 7", len(v.Records))
	}

	for _, route := range []string{cftest.RouteListTunnels, cftest.RouteListRecords} {
		var pages []string
		for _, r := range f.fake.RequestsTo(route) {
			pages = append(pages, r.Query.Get("page"))
		}
		// Pages 1-3 hold the items; the pager stops at the empty page 4.
		if want := []string{"", "2", "3", "4"}; !slices.Equal(pages, want) {
			t.Errorf("%s pages = %q, want %q", route, pages, want)
		}
	}

	for _, r := range f.fake.RequestsTo(cftest.RouteListTunnels) {
		if r.Query.Get("is_deleted") != "false" {
			t.Errorf("tunnel list without is_deleted=false: %v", r.Query)
		}
	}
}

// Any list that fails or comes back short leaves the view degraded, and
// says which list.
func TestListDegraded(t *testing.T) {
	tests := []struct {
		name  string
		route string
		fault cftest.Fault
		opts  ingress.ListOptions
		what  string
	}{
		{"tunnels page 2 keeps failing", cftest.RouteListTunnels,
			cftest.Fault{Status: http.StatusInternalServerError, Page: 2}, ingress.ListOptions{},
			"tunnels"},
		{"tunnels page 2 short", cftest.RouteListTunnels,
			cftest.Fault{ShortPage: 1, Page: 2}, ingress.ListOptions{}, "tunnels"},
		{"tunnels page 2 empty", cftest.RouteListTunnels,
			cftest.Fault{ShortPage: 3, Page: 2}, ingress.ListOptions{}, "tunnels"},
		{"dns page 3 short", cftest.RouteListRecords,
			cftest.Fault{ShortPage: 1, Page: 3}, ingress.ListOptions{}, "dns"},
		{"dns success false", cftest.RouteListRecords,
			cftest.Fault{SuccessFalse: true, Code: 1000}, ingress.ListOptions{}, "dns"},
		{"dns forbidden", cftest.RouteListRecords,
			cftest.Fault{Status: http.StatusForbidden, Code: cftest.CodeAuth},
			ingress.ListOptions{}, "dns"},
		{"dns hangs", cftest.RouteListRecords, cftest.Fault{Hang: true},
			ingress.ListOptions{}, "dns"},
		{"ingress unreadable", cftest.RouteGetConfig,
			cftest.Fault{Status: http.StatusForbidden, Times: 1},
			ingress.ListOptions{IngressPrefix: "dd-pr-7-"}, "ingress"},
		{"apps forbidden", cftest.RouteListApps, cftest.Fault{Status: http.StatusForbidden},
			ingress.ListOptions{Apps: true}, "apps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 3, func(o *Options) {
				o.MaxAttempts = 2
				o.RequestTimeout = 50 * time.Millisecond
			})
			seed(t, f, 7)

			f.fake.Inject(tt.route, tt.fault)
			v := f.p.List(context.Background(), tt.opts)
			if !v.Degraded() || v.Complete {
				t.Fatalf("view not degraded: complete=%v errors=%v", v.Complete, v.Errors)
			}

			if !v.Failed(tt.what) || len(v.Errors) != 1 {
				t.Errorf("errors = %v, want one %q error", v.Errors, tt.what)
			}
		})
	}
}

// Apps are not read unless asked for, so a token without Access scope
// does not degrade the view reaping uses.
func TestListWithoutAppsIgnoresAccess(t *testing.T) {
	f := newFixture(t, 0, nil)
	f.fake.Inject(cftest.RouteListApps, cftest.Fault{Status: http.StatusForbidden})
	v := f.p.List(context.Background(), ingress.ListOptions{})
	if v.Degraded() {
		t.Errorf("view degraded: %v", v.Errors)
	}
	if n := len(f.fake.RequestsTo(cftest.RouteListApps)); n != 0 {
		t.Errorf("%d app list requests, want none", n)
	}
}

func TestListReadsIngressOfPrefix(t *testing.T) {
	f := newFixture(t, 2, nil)
	ctx := context.Background()
	cp, err := f.p.CreateTunnel(ctx, "dd-pr-7-cp-1111", ingress.ControlPlaneIngress("pr-7."+testDomain))
	if err != nil {
		t.Fatal(err)
	}

	agent := f.fake.AddTunnel("dd-pr-7-agent-aa", time.Now())
	v := f.p.List(ctx, ingress.ListOptions{IngressPrefix: "dd-pr-7-cp-"})
	if v.Degraded() {
		t.Fatalf("view degraded: %v", v.Errors)
	}

	for _, tun := range v.Tunnels {
		switch tun.ID {
		case cp.ID:
			want := []string{"pr-7-shell." + testDomain, "pr-7." + testDomain}
			if !tun.IngressListed || !slices.Equal(tun.Hostnames, want) {
				t.Errorf("cp tunnel hostnames = %v (listed %v), want %v", tun.Hostnames,
					tun.IngressListed, want)
			}

		case agent.ID:
			if tun.IngressListed {
				t.Errorf("agent tunnel ingress read though not asked for")
			}
		}
	}
}

func TestCleanupAccess(t *testing.T) {
	f := newFixture(t, 2, nil)
	host := agentHost
	api := "dd-pr-7-api-ab12cd34." + testDomain
	mk := func(name, domain string, dest []cftest.Destination, self []string) cftest.App {
		return f.fake.AddApp(cftest.App{Name: name, Domain: domain, Destinations: dest,
			SelfHostedDomains: self})
	}

	del := []cftest.App{
		mk("exact", host, nil, nil),
		mk("path", host+"/deploy", nil, nil),
		mk("destination", "", []cftest.Destination{{Type: "public", URI: api + "/health"}}, nil),
		mk("self-hosted", "", nil, []string{"x." + testDomain, host}),
	}

	keep := []cftest.App{
		mk("wildcard", "*."+testDomain, nil, nil),
		mk("private", "", []cftest.Destination{{Type: "private", URI: host}}, nil),
		mk("other", "other."+testDomain, nil, nil),
		mk("prefix", "dd-pr-7-agent-ab12cd345."+testDomain, nil, nil),
	}

	deleted, err := f.p.CleanupAccess(context.Background(), []string{host, api})
	if err != nil {
		t.Fatal(err)
	}

	var want []string
	for _, a := range del {
		want = append(want, a.ID)
	}

	if !slices.Equal(deleted, want) {
		t.Errorf("deleted %v, want %v", deleted, want)
	}
	var left []string
	for _, a := range f.fake.Apps() {
		left = append(left, a.Name)
	}

	var wantLeft []string
	for _, a := range keep {
		wantLeft = append(wantLeft, a.Name)
	}

	if !slices.Equal(left, wantLeft) {
		t.Errorf("apps left %v, want %v", left, wantLeft)
	}
}

func TestAccessCleanupFailureDoesNotFailCreate(t *testing.T) {
	f := newFixture(t, 0, nil)
	f.fake.Inject(cftest.RouteListApps, cftest.Fault{Status: http.StatusForbidden})
	if _, err := f.p.CreateTunnel(context.Background(), "dd-pr-7-agent-ab12cd34",
		agentIngress()); err != nil {
		t.Fatalf("CreateTunnel = %v, want success despite Access errors", err)
	}
}

func TestPolicyKind(t *testing.T) {
	tests := []struct{ policies, want string }{
		{`[]`, "unknown"},
		{`[{"decision":"bypass"}]`, "bypass"},
		{`[{"decision":"allow","include":[{"github-organization":{"name":"x"}}]}]`, "human"},
		{`[{"decision":"allow","include":[{"email":{"email":"a@b"}}]}]`, "unknown"},
		{`[{"decision":"allow","include":[{"emails":["a@b"]}]}]`, "human"},
	}
	for _, tt := range tests {
		got := appFromJSON("id", `{"policies":`+tt.policies+`}`).PolicyKind
		if got != tt.want {
			t.Errorf("policyKind(%s) = %q, want %q", tt.policies, got, tt.want)
		}
	}

	raw := `{"self_hosted_domains":[{"uri":"a.b/c"},"d.e",{"domain":"f.g"}]}`
	if got := appFromJSON("id", raw).Targets; !slices.Equal(got, []string{"a.b/c", "d.e", "f.g"}) {
		t.Errorf("self-hosted targets = %v", got)
	}
}
