package cp

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
)

// fakeAgent serves an agent's /health; tests switch it between healthy,
// failing and impersonating another agent.
type fakeAgent struct {
	mu      sync.Mutex
	health  agentapi.Health
	status  int
	scrapes atomic.Int32
	// id, when set, names the agent in each answer, e.g. one registered
	// after the fake started.
	id func() string
}

func newFakeAgent(t *testing.T) (*fakeAgent, *httptest.Server) {
	f := &fakeAgent{status: http.StatusOK, health: agentapi.Health{OK: true, Service: "agent"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			http.NotFound(w, r)
			return
		}

		f.scrapes.Add(1)
		f.mu.Lock()
		defer f.mu.Unlock()

		h := f.health
		if f.id != nil {
			h.AgentID = f.id()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.status)
		json.NewEncoder(w).Encode(h)
	}))
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeAgent) set(status int, mutate func(h *agentapi.Health)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = status
	if mutate != nil {
		mutate(&f.health)
	}
}

// agentOf returns the id of the agent registered as vm, or "".
func (e *testEnv) agentOf(t *testing.T, vm string) string {
	a, err := e.store.ByVMName(context.Background(), vm)
	if err != nil {
		return ""
	}
	return a.ID
}

func (e *testEnv) agent(t *testing.T, id string) fleet.Agent {
	t.Helper()
	a, err := e.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestCollectorLifecycle(t *testing.T) {
	e := newTestEnv(t, nil)
	fa, srv := newFakeAgent(t)
	e.ingress.setURL("web.localhost", srv.URL)
	id := e.register(t, "web").AgentID
	ctx := context.Background()

	exit := 0
	units := []agentapi.Unit{
		{ID: "u1", AppName: "hello", Kind: "workload", Status: "running"},
		{ID: "u2", AppName: "setup", Kind: "workload", Status: "exited", ExitCode: &exit},
	}
	fa.set(http.StatusOK, func(h *agentapi.Health) { h.AgentID = id; h.Units = units })

	// A good scrape: healthy, units stored, last_seen is the scrape time.
	e.clock.Advance(time.Second)
	e.srv.collect(ctx)
	a := e.agent(t, id)
	if a.Status != fleet.StatusHealthy || !a.LastSeen.Equal(t0.Add(time.Second)) {
		t.Fatalf("after good scrape: %s, last seen %v", a.Status, a.LastSeen)
	}
	if diff := cmp.Diff(units, a.Units); diff != "" {
		t.Errorf("units (-want +got):\n%s", diff)
	}

	lastSeen := a.LastSeen

	// Failures shorter than StaleAfter keep it healthy but record the error.
	fa.set(http.StatusServiceUnavailable, nil)
	steps := []struct {
		advance time.Duration
		want    fleet.Status
	}{
		{10 * time.Second, fleet.StatusHealthy},
		{20 * time.Second, fleet.StatusStale}, // 30s since last good scrape
		{4 * time.Minute, fleet.StatusStale},  // 4m30s
		{30 * time.Second, fleet.StatusDead},  // 5m
		{time.Hour, fleet.StatusDead},         // kept, not deleted
	}
	for _, st := range steps {
		e.clock.Advance(st.advance)
		e.srv.collect(ctx)
		a := e.agent(t, id)
		if a.Status != st.want {
			t.Fatalf("at %v: status %s, want %s", e.clock.Now().Sub(lastSeen), a.Status, st.want)
		}
		if !a.LastSeen.Equal(lastSeen) || a.LastError != "GET /health: status 503" {
			t.Errorf("at %v: last seen %v, last error %q", e.clock.Now().Sub(lastSeen),
				a.LastSeen, a.LastError)
		}
		if diff := cmp.Diff(units, a.Units); diff != "" {
			t.Errorf("failed scrape changed the units:\n%s", diff)
		}
	}

	// The agent comes back.
	fa.set(http.StatusOK, nil)
	e.srv.collect(ctx)
	if a := e.agent(t, id); a.Status != fleet.StatusHealthy || a.LastError != "" {
		t.Errorf("after recovery: %s, %q", a.Status, a.LastError)
	}
}

func TestCollectorRefusesBadReports(t *testing.T) {
	tests := map[string]func(h *agentapi.Health){
		"another agent":    func(h *agentapi.Health) { h.AgentID = "dd-dev-agent-ffffffff" },
		"not an agent":     func(h *agentapi.Health) { h.Service = "cp" },
		"agent not ok":     func(h *agentapi.Health) { h.OK = false },
		"unregistered yet": func(h *agentapi.Health) { h.AgentID = "" },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			fa, srv := newFakeAgent(t)
			e.ingress.setURL("web.localhost", srv.URL)
			id := e.register(t, "web").AgentID
			fa.set(http.StatusOK, mutate)
			e.srv.collect(context.Background())
			a := e.agent(t, id)
			wantHealthy := mutate == nil
			if (a.Status == fleet.StatusHealthy) != wantHealthy {
				t.Errorf("status %s (last error %q), want healthy=%v", a.Status, a.LastError,
					wantHealthy)
			}
		})
	}
}

func TestCollectorNotJSON(t *testing.T) {
	e := newTestEnv(t, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("<html>interstitial</html>"))
	}))
	t.Cleanup(srv.Close)
	e.ingress.setURL("web.localhost", srv.URL)
	id := e.register(t, "web").AgentID
	e.clock.Advance(time.Minute)
	e.srv.collect(context.Background())
	// A 200 that is not an agent report is a failure (cp.md §10.9).
	if a := e.agent(t, id); a.Status != fleet.StatusStale || a.LastError == "" {
		t.Errorf("status %s, last error %q; want stale with an error", a.Status, a.LastError)
	}
}

func TestCollectorUnreachableStaysRegistering(t *testing.T) {
	e := newTestEnv(t, nil)
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens there any more
	e.ingress.setURL("web.localhost", srv.URL)
	id := e.register(t, "web").AgentID
	e.srv.collect(context.Background())
	if a := e.agent(t, id); a.Status != fleet.StatusRegistering || a.LastError == "" {
		t.Errorf("status %s, last error %q; want registering with an error", a.Status, a.LastError)
	}
}

func TestRunScrapesOnWakeAndStops(t *testing.T) {
	// An interval far beyond the test's life: only the first round and the
	// wake-up after registration can scrape.
	e := newTestEnv(t, func(o *Options) { o.ScrapeInterval = time.Hour })
	fa, srv := newFakeAgent(t)
	e.ingress.setURL("web.localhost", srv.URL)
	fa.mu.Lock()
	fa.id = func() string { return e.agentOf(t, "web") }
	fa.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx) }()

	id := e.register(t, "web").AgentID
	deadline := time.Now().Add(10 * time.Second)
	for e.agent(t, id).Status != fleet.StatusHealthy {
		if time.Now().After(deadline) {
			t.Fatalf("agent not scraped after registration (%d scrapes)", fa.scrapes.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}

	if err := e.srv.Run(ctx); err == nil {
		t.Error("a second concurrent Run succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v, want nil", err)
	}
}

func TestCollectBoundsConcurrency(t *testing.T) {
	const agents, limit = 6, 2
	e := newTestEnv(t, func(o *Options) { o.ScrapeConcurrency = limit })
	var inFlight, peak atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)

		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}

		<-release
		vm, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		json.NewEncoder(w).Encode(agentapi.Health{OK: true, Service: "agent",
			AgentID: e.agentOf(t, vm)})
	}))
	t.Cleanup(srv.Close)

	for i := range agents {
		vm := string(rune('a' + i))
		e.ingress.setURL(vm+".localhost", srv.URL+"/"+vm)
		e.register(t, vm)
	}

	done := make(chan struct{})
	go func() { e.srv.collect(context.Background()); close(done) }()
	// Let requests through one at a time while the collector runs.
	for {
		select {
		case release <- struct{}{}:
			continue
		case <-done:
		}
		break
	}

	if p := peak.Load(); p > limit {
		t.Errorf("%d scrapes in flight, limit %d", p, limit)
	}
	list, _ := e.store.List(context.Background())
	for _, a := range list {
		if a.Status != fleet.StatusHealthy {
			t.Errorf("%s is %s", a.VMName, a.Status)
		}
	}
}
