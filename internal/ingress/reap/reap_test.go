package reap

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

const (
	env    = "pr-7"
	domain = "d.example"
)

func ago(d time.Duration) time.Time { return now.Add(-d) }

func tunnel(id, name string, age time.Duration) ingress.TunnelInfo {
	return ingress.TunnelInfo{ID: id, Name: name, CreatedAt: ago(age)}
}

func cname(id, name, tunnelID string, age time.Duration) ingress.Record {
	return ingress.Record{ID: id, Name: name, Type: "CNAME", Content: tunnelID +
		".cfargotunnel.com", Proxied: true, CreatedAt: ago(age)}
}

const (
	knownHost = "dd-pr-7-agent-aaaa0001.d.example"
	knownAPI  = "dd-pr-7-api-aaaa0001.d.example"
)

// baseInput is a fleet with one registered agent (tunnel "known"), an
// orphan tunnel that qualifies for reaping, and every kind of neighbour
// a rule must protect.
func baseInput() Input {
	failing := Probe{Failures: 3, FirstFailure: ago(30 * time.Minute)}
	return Input{
		Env: env, Domain: domain, Now: now, Grace: 15 * time.Minute, MinFailures: 3,
		KnownTunnels:   []string{"known"},
		KnownHostnames: []string{knownHost, knownAPI, "dd-pr-7-agent-aaaa0001-web.d.example"},
		Probes: map[string]Probe{
			"orphan":  failing,
			"young":   {Failures: 9, FirstFailure: ago(time.Hour)},
			"few":     {Failures: 2, FirstFailure: ago(time.Hour)},
			"recent":  {Failures: 5, FirstFailure: ago(5 * time.Minute)},
			"hijack":  failing,
			"other":   failing,
			"cp-old":  failing,
			"unnamed": failing,
		},
		View: ingress.View{Complete: true, FetchedAt: now,
			Tunnels: []ingress.TunnelInfo{
				tunnel("known", "dd-pr-7-agent-aaaa0001", 2*time.Hour),
				tunnel("orphan", "dd-pr-7-agent-bbbb0002", 2*time.Hour),
				tunnel("young", "dd-pr-7-agent-cccc0003", 5*time.Minute),
				tunnel("few", "dd-pr-7-agent-dddd0004", 2*time.Hour),
				tunnel("recent", "dd-pr-7-agent-eeee0005", 2*time.Hour),
				tunnel("hijack", "dd-pr-7-agent-ffff0006", 2*time.Hour),
				tunnel("other", "dd-pr-8-agent-abab0007", 2*time.Hour),
				tunnel("cp-old", "dd-pr-7-cp-acac0008", 2*time.Hour),
				tunnel("unnamed", "someone-elses-tunnel", 2*time.Hour),
				{ID: "no-date", Name: "dd-pr-7-agent-adad0009"},
			},
			Records: []ingress.Record{
				cname("r-known", knownHost, "known", 2*time.Hour),
				cname("r-known-api", knownAPI, "known", 2*time.Hour),
				cname("r-orphan", "dd-pr-7-agent-bbbb0002.d.example", "orphan", 2*time.Hour),
				cname("r-orphan-web", "dd-pr-7-agent-bbbb0002-web.d.example", "orphan", time.Hour),
				// A registered agent's hostname that points at an
				// unknown tunnel: that tunnel must stay.
				cname("r-hijack", "dd-pr-7-agent-aaaa0001-web.d.example", "hijack", time.Hour),
				// Records whose tunnel is gone.
				cname("r-dangling", "dd-pr-7-agent-9999-shop.d.example", "gone", time.Hour),
				cname("r-dangling-api", "dd-pr-7-api-9999.d.example", "gone", time.Hour),
				cname("r-dangling-young", "dd-pr-7-agent-8888.d.example", "gone2", time.Minute),
				cname("r-dangling-other-env", "dd-pr-8-agent-7777.d.example", "gone", time.Hour),
				cname("r-dangling-cp", "pr-7.d.example", "gone", time.Hour),
				cname("r-dangling-outside", "dd-pr-7-agent-6666.other.example", "gone", time.Hour),
				cname("r-dangling-known", knownHost, "gone", time.Hour),
				{ID: "r-not-tunnel", Name: "dd-pr-7-agent-5555.d.example", Type: "CNAME",
					Content: "example.net", CreatedAt: ago(time.Hour)},
			},
		},
	}
}

func names(as []Action) []string {
	out := []string{}
	for _, a := range as {
		out = append(out, a.Name)
	}
	slices.Sort(out)
	return out
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name        string
		edit        func(in *Input)
		wantTunnels []string
		wantRecords []string
		wantRefused string
	}{
		{"base", nil,
			[]string{"dd-pr-7-agent-bbbb0002"},
			[]string{"dd-pr-7-agent-9999-shop.d.example", "dd-pr-7-api-9999.d.example"}, ""},
		{"degraded: a list failed", func(in *Input) {
			in.View.Errors = []ingress.FetchError{{What: "dns", Err: "500"}}
			in.View.Complete = false
		}, nil, nil, "degraded"},
		{"degraded: never marked complete", func(in *Input) { in.View.Complete = false },
			nil, nil, "degraded"},
		{"the zero view", func(in *Input) { in.View = ingress.View{} }, nil, nil, "degraded"},
		{"no env", func(in *Input) { in.Env = "" }, nil, nil, "required"},
		{"no clock", func(in *Input) { in.Now = time.Time{} }, nil, nil, "required"},
		{"orphan becomes known", func(in *Input) {
			in.KnownTunnels = append(in.KnownTunnels, "orphan")
		}, []string{}, []string{"dd-pr-7-agent-9999-shop.d.example",
			"dd-pr-7-api-9999.d.example"}, ""},
		{"a probe succeeded since", func(in *Input) { delete(in.Probes, "orphan") },
			[]string{}, []string{"dd-pr-7-agent-9999-shop.d.example",
				"dd-pr-7-api-9999.d.example"}, ""},
		{"more failures required", func(in *Input) { in.MinFailures = 4 },
			[]string{},
			[]string{"dd-pr-7-agent-9999-shop.d.example", "dd-pr-7-api-9999.d.example"}, ""},
		{"a longer grace", func(in *Input) { in.Grace = 3 * time.Hour }, []string{}, []string{}, ""},
		{"zero grace and failures use the defaults", func(in *Input) {
			in.Grace, in.MinFailures = 0, 0
		}, []string{"dd-pr-7-agent-bbbb0002"},
			[]string{"dd-pr-7-agent-9999-shop.d.example", "dd-pr-7-api-9999.d.example"}, ""},
		{"another env's view", func(in *Input) { in.Env = "pr-8" },
			[]string{"dd-pr-8-agent-abab0007"}, []string{"dd-pr-8-agent-7777.d.example"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := baseInput()
			if tt.edit != nil {
				tt.edit(&in)
			}
			d := Decide(in)

			if tt.wantRefused != "" {
				if !strings.Contains(d.Refused, tt.wantRefused) {
					t.Errorf("Refused = %q, want it to mention %q", d.Refused, tt.wantRefused)
				}
				if len(d.Tunnels)+len(d.Records) != 0 {
					t.Errorf("refused decision deletes %v %v", d.Tunnels, d.Records)
				}
				return
			}

			if d.Refused != "" {
				t.Fatalf("Refused = %q", d.Refused)
			}

			if diff := cmp.Diff(tt.wantTunnels, names(d.Tunnels)); diff != "" {
				t.Errorf("tunnels (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantRecords, names(d.Records)); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecideExplains(t *testing.T) {
	d := Decide(baseInput())
	want := map[string]string{
		"dd-pr-7-agent-cccc0003":       "within the grace period",
		"dd-pr-7-agent-dddd0004":       "2 of 3 probes failed",
		"dd-pr-7-agent-eeee0005":       "probes failing for 5m0s",
		"dd-pr-7-agent-ffff0006":       "serves a registered agent",
		"dd-pr-7-agent-adad0009":       "created_at unknown",
		"dd-pr-7-agent-8888.d.example": "within the grace period",
	}

	got := map[string]string{}
	for _, a := range d.Kept {
		got[a.Name] = a.Reason
	}

	for name, reason := range want {
		if !strings.Contains(got[name], reason) {
			t.Errorf("kept %s: reason %q, want it to mention %q", name, got[name], reason)
		}
	}

	if len(got) != len(want) {
		t.Errorf("kept %v, want exactly %v", got, want)
	}
	if len(d.Tunnels) != 1 || !slices.Equal(d.Tunnels[0].Records,
		[]string{"dd-pr-7-agent-bbbb0002.d.example", "dd-pr-7-agent-bbbb0002-web.d.example"}) {
		t.Errorf("reaped tunnel's records = %+v", d.Tunnels)
	}
}

func TestProbes(t *testing.T) {
	p := Probes{}
	p.Observe("a", false, ago(3*time.Minute))
	p.Observe("a", false, ago(2*time.Minute))
	p.Observe("b", false, ago(time.Minute))
	if want := (Probe{Failures: 2, FirstFailure: ago(3 * time.Minute)}); p["a"] != want {
		t.Errorf("a = %+v, want %+v", p["a"], want)
	}

	p.Observe("a", true, now)
	if _, ok := p["a"]; ok {
		t.Error("a success did not reset the history")
	}
	p.Observe("c", false, now)
	p.Retain([]string{"c"})
	if _, ok := p["b"]; ok || len(p) != 1 {
		t.Errorf("Retain kept %v", p)
	}
}

func TestPredecessors(t *testing.T) {
	const host = "pr-7.d.example"
	cp := func(id string, age time.Duration, hosts ...string) ingress.TunnelInfo {
		t := tunnel(id, "dd-pr-7-cp-"+id, age)
		t.Hostnames, t.IngressListed = hosts, true
		return t
	}

	base := ingress.View{Complete: true, Tunnels: []ingress.TunnelInfo{
		cp("0001", 3*time.Hour, "pr-7-shell.d.example", host),
		cp("0002", 2*time.Hour, host),
		cp("0003", 2*time.Hour, "staging-copy.d.example"), // another hostname
		cp("00ff", time.Minute, host),                     // newer than us
		cp("0004", time.Hour, host),                       // self
		tunnel("a", "dd-pr-7-agent-0005", 3*time.Hour),
		func() ingress.TunnelInfo {
			t := tunnel("b", "dd-pr-8-cp-0006", 3*time.Hour)
			t.Hostnames, t.IngressListed = []string{host}, true
			return t
		}(),
	}}

	got, err := Predecessors(base, env, "0004", host)
	if err != nil {
		t.Fatal(err)
	}

	var ids []string
	for _, t := range got {
		ids = append(ids, t.ID)
	}

	if want := []string{"0001", "0002"}; !slices.Equal(ids, want) {
		t.Errorf("Predecessors = %v, want %v", ids, want)
	}

	errCases := map[string]func(v *ingress.View) string{
		"degraded":     func(v *ingress.View) string { v.Complete = false; return "0004" },
		"self unknown": func(v *ingress.View) string { return "nope" },
		"ingress not read": func(v *ingress.View) string {
			v.Tunnels[1].IngressListed = false
			return "0004"
		},
	}
	for name, edit := range errCases {
		v := base
		v.Tunnels = slices.Clone(base.Tunnels)
		self := edit(&v)
		if _, err := Predecessors(v, env, self, host); err == nil {
			t.Errorf("%s: Predecessors succeeded", name)
		}
	}
}

// fakeProvider records deletions and answers Tunnel from a set.
type fakeProvider struct {
	ingress.Provider // unused methods panic
	exists           map[string]bool
	deletedTunnels   []string
	deletedRecords   []string
}

func (f *fakeProvider) DeleteTunnel(_ context.Context, id string) error {
	f.deletedTunnels = append(f.deletedTunnels, id)
	return nil
}

func (f *fakeProvider) DeleteRecord(_ context.Context, id string) error {
	f.deletedRecords = append(f.deletedRecords, id)
	return nil
}

func (f *fakeProvider) Tunnel(_ context.Context, id string) (ingress.TunnelInfo, error) {
	if f.exists[id] {
		return ingress.TunnelInfo{ID: id}, nil
	}
	return ingress.TunnelInfo{}, ingress.ErrNotFound
}

func TestApply(t *testing.T) {
	d := Decision{
		Tunnels: []Action{{ID: "t1", Name: "dd-pr-7-agent-1"}},
		Records: []Action{{ID: "r1", TunnelID: "gone"}, {ID: "r2", TunnelID: "back"}},
	}
	p := &fakeProvider{exists: map[string]bool{"back": true}}
	if err := Apply(context.Background(), p, d, nil); err != nil {
		t.Fatal(err)
	}

	if !slices.Equal(p.deletedTunnels, []string{"t1"}) ||
		!slices.Equal(p.deletedRecords, []string{"r1"}) {
		t.Errorf("deleted tunnels %v records %v; want [t1] [r1]", p.deletedTunnels,
			p.deletedRecords)
	}

	p = &fakeProvider{}
	d.Refused = "degraded"
	if err := Apply(context.Background(), p, d, nil); err != nil || len(p.deletedTunnels) != 0 {
		t.Errorf("Apply of a refused decision: %v, deleted %v", err, p.deletedTunnels)
	}
}
