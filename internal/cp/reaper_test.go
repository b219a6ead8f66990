package cp

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// reapEnv is a serving control plane with a manual clock, driven one
// reaping round at a time, and tunnels: an orphan of its env, a
// registered agent's, and another env's. None has a connector, so every
// probe of them fails.
type reapEnv struct {
	e                    *edgeEnv
	c                    *runningCP
	clock                *clock
	orphan, known, other ingress.Tunnel
}

func newReapEnv(t *testing.T) *reapEnv {
	t.Helper()
	r := &reapEnv{e: newEdgeEnv(t), clock: &clock{t: time.Now()}}
	r.c = r.e.newCP(t, func(o *Options) {
		o.Now, o.SelfCheckInterval = r.clock.Now, time.Hour
		o.ReapEvery, o.ReapGrace, o.ReapFailures = 1, time.Minute, 2
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	if err := r.c.srv.startSelf(ctx, &wg); err != nil {
		t.Fatal(err)
	}

	eventually(t, "serving", func() bool {
		r.c.srv.checkSelf(ctx, false)
		return r.c.srv.Serving()
	})

	r.orphan = r.tunnel(t, "dd-dev-agent-0badcafe", "ghost.localhost")
	r.known = r.tunnel(t, "dd-dev-agent-00000001", "known.localhost")
	r.other = r.tunnel(t, "dd-prod-agent-00000002", "far.localhost")
	a := fleet.Agent{ID: r.known.Name, VMName: "known", Hostname: "known.localhost",
		Status: fleet.StatusHealthy, RegisteredAt: r.clock.Now(), TunnelID: r.known.ID,
		TokenHash: fleet.HashToken("tok")}
	if _, err := r.c.store.Register(context.Background(), a, nil); err != nil {
		t.Fatal(err)
	}

	return r
}

func (r *reapEnv) tunnel(t *testing.T, name, host string) ingress.Tunnel {
	t.Helper()
	tun, err := r.e.provider.CreateTunnel(context.Background(), name,
		ingress.AgentIngress(host, nil))
	if err != nil {
		t.Fatal(err)
	}

	return tun
}

func (r *reapEnv) live(t *testing.T, tun ingress.Tunnel) bool {
	t.Helper()
	info, err := r.e.provider.Tunnel(context.Background(), tun.ID)
	if err != nil {
		t.Fatal(err)
	}
	return !info.Deleted()
}

func TestReapingNeedsACompleteViewGraceAndFailedProbes(t *testing.T) {
	r := newReapEnv(t)
	ctx := context.Background()
	steps := []struct {
		name    string
		advance time.Duration
		fault   error
		reaped  bool
	}{
		// Old enough, but the listing failed: nothing may go.
		{"degraded view", 10 * time.Minute, errors.New("injected"), false},
		{"degraded again", time.Minute, errors.New("injected"), false},
		// The first failed probe.
		{"one failed probe", 0, nil, false},
		// Two failures, but not yet failing for the grace period.
		{"failing briefly", 0, nil, false},
		{"failing for longer than the grace period", 2 * time.Minute, nil, true},
	}
	for _, st := range steps {
		r.clock.Advance(st.advance)
		r.e.provider.FailList("dns", st.fault)
		r.c.srv.reapRound(ctx)
		if got := !r.live(t, r.orphan); got != st.reaped {
			t.Fatalf("%s: orphan reaped = %v, want %v", st.name, got, st.reaped)
		}
		if !r.live(t, r.known) || !r.live(t, r.other) {
			t.Fatalf("%s: a registered agent's or another env's tunnel was reaped", st.name)
		}
	}

	if !strings.Contains(r.c.logs.String(), "reaping refused") {
		t.Error("the degraded view was not logged as refused")
	}
	entries := auditEntries(t, r.c.store, ActionIngressReaped)
	if len(entries) != 1 || entries[0].Target != r.orphan.Name ||
		entries[0].Actor.Name != "cp:"+r.c.srv.TunnelID() {
		t.Errorf("reaping audit entries = %+v, want the orphan by this control plane", entries)
	}
}

func TestFencedControlPlaneNeverReaps(t *testing.T) {
	r := newReapEnv(t)
	ctx := context.Background()
	// Probes fail long enough for the orphan to be reapable...
	r.clock.Advance(10 * time.Minute)
	r.c.srv.reapRound(ctx)
	r.c.srv.reapRound(ctx)
	r.clock.Advance(2 * time.Minute)
	// ...but the control plane is fenced first.
	r.c.srv.fence(ctx, "test")

	for range 3 {
		r.c.srv.reapRound(ctx)
	}

	if !r.live(t, r.orphan) {
		t.Error("a fenced control plane reaped")
	}
	if n := len(auditEntries(t, r.c.store, ActionIngressReaped)); n != 0 {
		t.Errorf("%d reaping entries, want none", n)
	}
}

func TestControlPlaneWithoutItsHostnameNeverReaps(t *testing.T) {
	r := newReapEnv(t)
	ctx := context.Background()
	r.clock.Advance(10 * time.Minute)
	r.c.srv.reapRound(ctx)
	r.c.srv.reapRound(ctx)
	r.clock.Advance(2 * time.Minute)
	// Another tunnel takes the hostname over, as a newer control plane's
	// would; the next deletion is refused by the re-check.
	if _, err := r.e.provider.CreateTunnel(ctx, "dd-dev-cp-99",
		ingress.ControlPlaneIngress("app.localhost")); err != nil {
		t.Fatal(err)
	}

	r.c.srv.reapRound(ctx)
	if !r.live(t, r.orphan) {
		t.Error("a control plane whose hostname no longer reaches it reaped")
	}
}
