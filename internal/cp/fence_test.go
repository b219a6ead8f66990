package cp

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
)

// edgeEnv is a served local edge with its provider, and a registry file
// that several control planes share, as in the dev fleet.
type edgeEnv struct {
	edge     *localedge.Edge
	provider *localedge.Provider
	dbPath   string
}

func newEdgeEnv(t *testing.T) *edgeEnv {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	edge, err := localedge.New(localedge.Options{Port: srv.Listener.Addr().(*net.TCPAddr).Port})
	if err != nil {
		t.Fatal(err)
	}

	p, err := localedge.NewProvider(edge, localedge.ProviderOptions{})
	if err != nil {
		t.Fatal(err)
	}

	srv.Config.Handler = edge
	srv.Start()
	t.Cleanup(srv.Close)
	return &edgeEnv{edge: edge, provider: p, dbPath: filepath.Join(t.TempDir(), "fleet.db")}
}

// runningCP is one control plane on the edge env.
type runningCP struct {
	srv      *Server
	store    *fleet.Store
	http     *httptest.Server
	logs     *syncBuffer
	poweroff atomic.Int32
	cancel   context.CancelFunc
	done     chan struct{}
	err      error // Run's result, once done is closed
}

// newCP builds a control plane whose tunnel's dashboard service is its
// own test server; mutate may change its options.
func (e *edgeEnv) newCP(t *testing.T, mutate func(*Options)) *runningCP {
	t.Helper()
	store, err := fleet.Open(context.Background(), e.dbPath, fleet.Options{})
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { store.Close() })
	c := &runningCP{store: store, logs: &syncBuffer{}, done: make(chan struct{})}
	c.http = httptest.NewUnstartedServer(nil)
	t.Cleanup(c.http.Close)
	services := map[string]string{ingress.DefaultService: "http://" + c.http.Listener.Addr().String()}
	opts := Options{
		Store: store, Env: "dev", Hostname: "app.localhost", Domain: "localhost",
		AdminToken: testAdminToken, Ingress: e.provider, PublicURL: e.edge.URL,
		HTTPClient: localedge.HTTPClient(), Appraiser: fakeAppraiser{},
		Logger:            slog.New(slog.NewTextHandler(c.logs, nil)),
		ScrapeInterval:    20 * time.Millisecond,
		SelfCheckInterval: 20 * time.Millisecond,
		FenceGrace:        10 * time.Millisecond,
		PowerOff: func(context.Context) error {
			c.poweroff.Add(1)
			return nil
		},
		Connect: func(token string, onExit func(cloudflared.Exit)) (Connector, error) {
			return localedge.NewConnector(localedge.ConnectorOptions{Provider: e.provider,
				Token: token, Services: services, OnExit: onExit, MinBackoff: time.Millisecond})
		},
	}
	if mutate != nil {
		mutate(&opts)
	}

	if c.srv, err = New(opts); err != nil {
		t.Fatal(err)
	}
	c.http.Config.Handler = c.srv.Handler()
	c.http.Start()
	return c
}

// run runs the control plane's background work until the test ends.
func (c *runningCP) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() {
		defer close(c.done)
		c.err = c.srv.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-c.done })
}

// eventually polls cond until it holds, failing after a generous deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within the deadline", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (c *runningCP) post(t *testing.T, path string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.http.URL+path, strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	var body map[string]any
	if json.NewDecoder(resp.Body).Decode(&body) != nil && resp.StatusCode >= 400 {
		t.Errorf("POST %s = %d without a JSON body", path, resp.StatusCode)
	}
	return resp.StatusCode
}

func (c *runningCP) health(t *testing.T) cpapi.Health {
	t.Helper()
	resp, err := http.Get(c.http.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	var h cpapi.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestSecondControlPlaneFencesTheFirst(t *testing.T) {
	e := newEdgeEnv(t)
	first := e.newCP(t, nil)
	first.run(t)
	eventually(t, "the first control plane serves", first.srv.Serving)
	if code := first.post(t, "/register/nonce"); code != http.StatusOK {
		t.Fatalf("a write on the serving control plane = %d", code)
	}

	h := first.health(t)
	if h.Ingress == nil || h.Ingress.TunnelID != first.srv.TunnelID() || !h.Ingress.Serving ||
		h.Ingress.Connector == nil || h.Ingress.Connector.State != cloudflared.StateRunning {
		t.Errorf("health ingress = %+v, want the serving tunnel and a running connector",
			h.Ingress)
	}

	page := first.srv.Handler()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	page.ServeHTTP(rec, req)
	if want := "tunnel " + first.srv.TunnelID(); !strings.Contains(rec.Body.String(), want) ||
		!strings.Contains(rec.Body.String(), "serving app.localhost") {
		t.Errorf("fleet page lacks %q and the serving state", want)
	}

	second := e.newCP(t, nil)
	second.run(t)
	select {
	case <-first.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the first control plane did not stop after the second took over")
	}

	if !errors.Is(first.err, ErrFenced) || first.poweroff.Load() != 1 {
		t.Errorf("first Run = %v, power-offs %d; want ErrFenced and one", first.err,
			first.poweroff.Load())
	}

	eventually(t, "the second control plane serves", second.srv.Serving)

	// The fenced control plane refuses writes with a JSON 503 and still
	// answers reads.
	if code := first.post(t, "/register/nonce"); code != http.StatusServiceUnavailable {
		t.Errorf("a write on the fenced control plane = %d, want 503", code)
	}
	if h := first.health(t); h.Ingress == nil || !h.Ingress.Fenced || h.Ingress.Serving {
		t.Errorf("fenced health ingress = %+v", h.Ingress)
	}
	if code := second.post(t, "/register/nonce"); code != http.StatusOK {
		t.Errorf("a write on the new control plane = %d", code)
	}

	// The first tunnel is gone and the hostname is the second's.
	ctx := context.Background()
	if info, err := e.provider.Tunnel(ctx, first.srv.TunnelID()); err != nil || !info.Deleted() {
		t.Errorf("first tunnel = %+v, %v; want deleted", info, err)
	}
	if got := e.provider.Hostnames()["app.localhost"]; got != second.srv.TunnelID() {
		t.Errorf("app.localhost routes to %q, want the second tunnel", got)
	}

	entries := auditEntries(t, second.store, audit.ActionStonith)
	if len(entries) != 1 || entries[0].Actor.Name != "cp:"+second.srv.TunnelID() ||
		!strings.HasPrefix(entries[0].Target, "dd-dev-cp-") {
		t.Errorf("stonith audit entries = %+v, want one by the second control plane", entries)
	}
}

func auditEntries(t *testing.T, store *fleet.Store, action audit.Action) []audit.Entry {
	t.Helper()
	page, err := store.Audit().List(context.Background(), audit.Filter{Action: action})
	if err != nil {
		t.Fatal(err)
	}
	return page.Entries
}

// TestSelfCheckStrikes drives checkSelf through its cases with a fake
// provider state: only evidence that another control plane took over,
// seen FenceAfter times in a row, fences.
func TestSelfCheckStrikes(t *testing.T) {
	e := newEdgeEnv(t)
	// The checks are driven by hand: no self-check loop runs, so that
	// each strike is the test's own.
	slow := func(o *Options) { o.FenceAfter, o.SelfCheckInterval = 2, time.Hour }
	c := e.newCP(t, slow)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	open := func(cp *runningCP) {
		conn, err := cp.srv.openSelf(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { conn.Run(ctx) })
	}
	open(c)
	eventually(t, "serving", func() bool {
		c.srv.checkSelf(ctx, false)
		return c.srv.Serving()
	})

	// A newcomer's tunnel takes the hostname over; it does not fence the
	// first control plane itself here (its STONITH counts as done).
	other := e.newCP(t, slow)
	other.srv.self.stonithd = true
	open(other)
	eventually(t, "the hostname reaches the newcomer", func() bool {
		p, _ := c.srv.probeSelf(ctx, c.srv.TunnelID())
		return p == probeOther
	})
	c.srv.checkSelf(ctx, false)
	if c.srv.Fenced() || c.srv.Serving() {
		t.Fatalf("after one strike: fenced %v serving %v; want neither", c.srv.Fenced(),
			c.srv.Serving())
	}

	c.srv.checkSelf(ctx, false)
	if !c.srv.Fenced() {
		t.Fatal("two strikes in a row did not fence")
	}
	if code := c.post(t, "/register/nonce"); code != http.StatusServiceUnavailable {
		t.Errorf("a write after fencing = %d, want 503", code)
	}
}
