package cloudflare

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/cloudflare/cftest"
)

// cpHost is the hostname both control planes and agents fight over in
// the record-move tests.
const cpHost = "app." + testDomain

// seedHolder makes a tunnel named name (none when name is "") and points
// cpHost at target(tunnel id), returning the record's content.
func seedHolder(t *testing.T, f *fixture, name string, target func(id string) string) string {
	t.Helper()
	id := ""
	if name != "" {
		id = f.fake.AddTunnel(name, time.Now()).ID
	}
	return f.fake.AddRecord(cpHost, target(id), time.Now()).Content
}

func toTunnel(id string) string { return ingress.TunnelTarget(id) }

// A record moves to a new tunnel only from a tunnel of the provider's
// own environment (pr-7 here): that is the control plane's cutover and an
// agent's re-registration. A record of another environment's tunnel, of
// a tunnel the account does not have, or that points at no tunnel at all
// is never overwritten, and no tunnel is left behind.
func TestCreateTunnelMovesOnlyOwnEnvironmentsRecords(t *testing.T) {
	tests := []struct {
		name   string
		holder string                 // holding tunnel's name; "" for none
		target func(id string) string // the seeded record's content
		moves  bool
	}{
		{"older tunnel of the same environment", "dd-pr-7-cp-1111", toTunnel, true},
		{"agent tunnel of the same environment", "dd-pr-7-agent-0a0b", toTunnel, true},
		{"another environment's tunnel", "dd-production-cp-00aa", toTunnel, false},
		{"an environment named like a prefix of ours", "dd-pr-cp-1111", toTunnel, false},
		{"a tunnel not named by DevOps Defender", "office-vpn", toTunnel, false},
		{"a tunnel the account does not have", "", func(string) string {
			return toTunnel("6f0c2a5e-0000-4000-8000-000000000001")
		}, false},
		{"a CNAME to another host", "", func(string) string { return "shop.example.net" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 0, nil)
			ctx := context.Background()
			content := seedHolder(t, f, tt.holder, tt.target)
			in := ingress.ControlPlaneIngress(cpHost)
			tun, err := f.p.CreateTunnel(ctx, "dd-pr-7-cp-2222", in)
			got := f.recordsByName(t)[cpHost]

			if tt.moves {
				if err != nil {
					t.Fatalf("CreateTunnel: %v", err)
				}
				if want := toTunnel(tun.ID); got != want {
					t.Errorf("%s points at %q, want the new tunnel %q", cpHost, got, want)
				}
				return
			}

			if !errors.Is(err, ingress.ErrHostnameTaken) {
				t.Fatalf("CreateTunnel = %v, want ErrHostnameTaken", err)
			}

			if got != content {
				t.Errorf("%s points at %q, want it left at %q", cpHost, got, content)
			}
			if n := len(f.fake.RequestsTo(cftest.RouteCreateTunnel)); n != 0 {
				t.Errorf("%d tunnels created, want none", n)
			}

			if n := len(f.fake.RequestsTo(cftest.RouteUpdateRecord)) +
				len(f.fake.RequestsTo(cftest.RouteCreateRecord)); n != 0 {
				t.Errorf("%d records written, want none", n)
			}
		})
	}
}

// A soft-deleted tunnel of the same environment still names its
// environment, so its leftover record may be taken.
func TestCreateTunnelMovesRecordOfDeletedTunnel(t *testing.T) {
	f := newFixture(t, 0, nil)
	ctx := context.Background()
	old := f.fake.AddTunnel("dd-pr-7-cp-1111", time.Now())
	if err := f.p.DeleteTunnel(ctx, old.ID); err != nil {
		t.Fatal(err)
	}

	f.fake.AddRecord(cpHost, toTunnel(old.ID), time.Now())
	tun, err := f.p.CreateTunnel(ctx, "dd-pr-7-cp-2222", ingress.ControlPlaneIngress(cpHost))
	if err != nil {
		t.Fatal(err)
	}

	if got, want := f.recordsByName(t)[cpHost], toTunnel(tun.ID); got != want {
		t.Errorf("%s points at %q, want %q", cpHost, got, want)
	}
}

// An agent's new claim of a name another environment holds fails before
// the tunnel's rules or any record change, and names the reason.
func TestReplaceIngressRefusesForeignRecord(t *testing.T) {
	f := newFixture(t, 0, nil)
	ctx := context.Background()
	in := agentIngress()
	tun, err := f.p.CreateTunnel(ctx, "dd-pr-7-agent-ab12cd34", in)
	if err != nil {
		t.Fatal(err)
	}

	prod := f.fake.AddTunnel("dd-production-agent-cd34", time.Now())
	claim := ingress.Claim{App: "shop", Label: "shop", Port: 9000}
	taken := ingress.ExtraHostname(agentHost, claim.Label)
	f.fake.AddRecord(taken, toTunnel(prod.ID), time.Now())
	before := f.recordsByName(t)
	f.fake.ResetRequests()

	err = f.p.ReplaceIngress(ctx, tun.ID, agentIngress(claim))
	if !errors.Is(err, ingress.ErrHostnameTaken) {
		t.Fatalf("ReplaceIngress = %v, want ErrHostnameTaken", err)
	}

	if diff := cmp.Diff(before, f.recordsByName(t)); diff != "" {
		t.Errorf("records changed (-before +after):\n%s", diff)
	}
	if n := len(f.fake.RequestsTo(cftest.RoutePutConfig)); n != 0 {
		t.Errorf("the tunnel's rules were written %d times, want never", n)
	}

	rules, err := f.p.TunnelIngress(ctx, tun.ID)
	if err != nil {
		t.Fatal(err)
	}

	if diff := cmp.Diff(in.Rules(), rules); diff != "" {
		t.Errorf("rules changed (-want +got):\n%s", diff)
	}
}

// A name held by an A record is refused as taken, not overwritten.
func TestCreateTunnelRefusesAddressRecord(t *testing.T) {
	f := newFixture(t, 0, nil)
	f.fake.AddRecordOfType("A", cpHost, "192.0.2.1")
	_, err := f.p.CreateTunnel(context.Background(), "dd-pr-7-cp-2222",
		ingress.ControlPlaneIngress(cpHost))
	if !errors.Is(err, ingress.ErrHostnameTaken) {
		t.Fatalf("CreateTunnel = %v, want ErrHostnameTaken", err)
	}

	if r, ok := f.fake.RecordByName(cpHost); !ok || r.Type != "A" || r.Content != "192.0.2.1" {
		t.Errorf("record = %+v, %v; want the A record untouched", r, ok)
	}
}
