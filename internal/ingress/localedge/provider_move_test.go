package localedge

import (
	"context"
	"errors"
	"maps"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// A record moves between tunnels only within one environment, as in the
// Cloudflare provider: the dev fleet's cutovers and re-registrations
// work, and a preview's tunnel never takes production's hostname.
func TestProviderMovesOnlyWithinEnvironment(t *testing.T) {
	tests := []struct {
		name   string
		holder string // the tunnel holding app.localhost
		taker  string // the tunnel asking for it
		moves  bool
	}{
		{"control plane cutover", "dd-dev-cp-01", "dd-dev-cp-02", true},
		{"agent of the same environment", "dd-dev-cp-01", "dd-dev-agent-02", true},
		{"preview agent takes production", "dd-production-cp-01", "dd-pr-7-agent-02", false},
		{"tunnel not named by DevOps Defender", "office", "dd-dev-cp-02", false},
		{"unnamed taker", "dd-dev-cp-01", "office", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := newProvider(t)
			ctx := context.Background()
			holder, err := p.CreateTunnel(ctx, tt.holder,
				ingress.ControlPlaneIngress("app.localhost"))
			if err != nil {
				t.Fatal(err)
			}

			before := maps.Clone(p.Hostnames())
			taker, err := p.CreateTunnel(ctx, tt.taker, ingress.Ingress{Hostname: "app.localhost"})

			if tt.moves {
				if err != nil {
					t.Fatalf("CreateTunnel: %v", err)
				}
				if got := p.Hostnames()["app.localhost"]; got != taker.ID {
					t.Errorf("app.localhost routes to %q, want %q", got, taker.ID)
				}
				return
			}

			if !errors.Is(err, ingress.ErrHostnameTaken) {
				t.Fatalf("CreateTunnel = %v, want ErrHostnameTaken", err)
			}

			if diff := cmp.Diff(before, p.Hostnames()); diff != "" {
				t.Errorf("records changed (-before +after):\n%s", diff)
			}
			v := p.List(ctx, ingress.ListOptions{})
			if len(v.Tunnels) != 1 || v.Tunnels[0].ID != holder.ID {
				t.Errorf("tunnels = %+v, want only the holder", v.Tunnels)
			}
		})
	}
}

// An ingress change claiming another environment's hostname changes
// neither the records nor the tunnel's rules.
func TestProviderReplaceRefusesForeignRecord(t *testing.T) {
	p, _ := newProvider(t)
	ctx := context.Background()
	if _, err := p.CreateTunnel(ctx, "dd-production-agent-01",
		ingress.AgentIngress("web-shop.localhost", nil)); err != nil {
		t.Fatal(err)
	}

	in := ingress.AgentIngress("web.localhost", nil)
	agent, err := p.CreateTunnel(ctx, "dd-pr-7-agent-02", in)
	if err != nil {
		t.Fatal(err)
	}

	before := maps.Clone(p.Hostnames())
	err = p.ReplaceIngress(ctx, agent.ID, ingress.AgentIngress("web.localhost",
		[]ingress.Claim{{App: "x", Label: "shop", Port: 9000}}))
	if !errors.Is(err, ingress.ErrHostnameTaken) {
		t.Fatalf("ReplaceIngress = %v, want ErrHostnameTaken", err)
	}

	if diff := cmp.Diff(before, p.Hostnames()); diff != "" {
		t.Errorf("records changed (-before +after):\n%s", diff)
	}
	rules, err := p.TunnelIngress(ctx, agent.ID)
	if err != nil {
		t.Fatal(err)
	}

	if diff := cmp.Diff(in.Rules(), rules); diff != "" {
		t.Errorf("rules changed (-want +got):\n%s", diff)
	}
}
