package localedge

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/reap"
)

func newProvider(t *testing.T) (*Provider, *httptest.Server) {
	t.Helper()
	e, srv := newEdge(t)
	p, err := NewProvider(e, ProviderOptions{})
	if err != nil {
		t.Fatal(err)
	}

	if _, err := NewProvider(e, ProviderOptions{}); err == nil {
		t.Error("a second provider on one edge was accepted")
	}
	return p, srv
}

// origin answers with its name and the request's host and path.
func origin(t *testing.T, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name+" "+r.Host+" "+r.URL.Path)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestProviderRoutesThroughConnectors(t *testing.T) {
	p, srv := newProvider(t)
	ctx := context.Background()
	dash, api, work := origin(t, "dash"), origin(t, "api"), origin(t, "work")
	dead := httptest.NewServer(nil)
	dead.Close()

	in := ingress.AgentIngress("vm-1.localhost", []ingress.Claim{
		{App: "web", Label: "web", Port: 9000}, {App: "gone", Label: "gone", Port: 9001}})
	tun, err := p.CreateTunnel(ctx, "dd-dev-agent-0a1b", in)
	if err != nil {
		t.Fatal(err)
	}
	if tun.Token == "" || tun.ID == "" {
		t.Fatalf("tunnel %+v has no id or token", tun)
	}

	// Before a connector holds the tunnel, its hostnames answer 530.
	if code, _ := get(t, srv, "vm-1.localhost"); code != StatusTunnelDown {
		t.Errorf("unconnected tunnel = %d, want %d", code, StatusTunnelDown)
	}

	conn, err := p.Connect(tun.Token, map[string]string{
		"http://localhost:8080": dash.URL, "http://localhost:8081": api.URL,
		"http://localhost:9000": work.URL, "http://localhost:9001": dead.URL})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		host     string
		wantCode int
		wantBody string
	}{
		{"vm-1.localhost", 200, "dash vm-1.localhost /path"},
		{"vm-1-agent-api.localhost", 200, "api vm-1-agent-api.localhost /path"},
		{"vm-1-web.localhost", 200, "work vm-1-web.localhost /path"},
		{"vm-1-gone.localhost", 502, `"code":"UPSTREAM"`},
		{"nobody.localhost", 404, `"code":"NOT_FOUND"`},
	}
	for _, tt := range tests {
		code, body := get(t, srv, tt.host)
		if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tt.host, code, body,
				tt.wantCode, tt.wantBody)
		}
	}

	// Deleting the tunnel ends its connection and its records.
	if err := p.DeleteTunnel(ctx, tun.ID); err != nil {
		t.Fatal(err)
	}

	select {
	case <-conn.Done():
	default:
		t.Error("the connection survived the tunnel's deletion")
	}

	if code, _ := get(t, srv, "vm-1.localhost"); code != 404 {
		t.Errorf("deleted tunnel's hostname = %d, want 404", code)
	}
	info, err := p.Tunnel(ctx, tun.ID)
	if err != nil || !info.Deleted() {
		t.Errorf("Tunnel after delete = %+v, %v; want soft-deleted", info, err)
	}

	if _, err := p.Connect(tun.Token, nil); err == nil {
		t.Error("a deleted tunnel's token still connects")
	}
	if _, err := p.Tunnel(ctx, "no-such-id"); !errors.Is(err, ingress.ErrNotFound) {
		t.Errorf("unknown tunnel: %v, want ErrNotFound", err)
	}
	if err := p.DeleteTunnel(ctx, tun.ID); err != nil {
		t.Errorf("deleting again: %v", err)
	}
}

func TestProviderReplaceAndCutover(t *testing.T) {
	p, _ := newProvider(t)
	ctx := context.Background()
	first, err := p.CreateTunnel(ctx, "dd-dev-cp-01", ingress.ControlPlaneIngress("app.localhost"))
	if err != nil {
		t.Fatal(err)
	}

	in := ingress.AgentIngress("vm.localhost", []ingress.Claim{{App: "a", Label: "a", Port: 1}})
	agent, err := p.CreateTunnel(ctx, "dd-dev-agent-02", in)
	if err != nil {
		t.Fatal(err)
	}

	// A second control plane takes the hostname over.
	second, err := p.CreateTunnel(ctx, "dd-dev-cp-03", ingress.ControlPlaneIngress("app.localhost"))
	if err != nil {
		t.Fatal(err)
	}

	// The agent drops its claim: its record goes, the others stay.
	if err := p.ReplaceIngress(ctx, agent.ID, ingress.AgentIngress("vm.localhost", nil)); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{
		"app.localhost": second.ID, "app-shell.localhost": second.ID,
		"vm.localhost": agent.ID, "vm-agent-api.localhost": agent.ID,
	}
	if diff := cmp.Diff(want, p.Hostnames()); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}

	if err := p.ReplaceIngress(ctx, "nope", in); !errors.Is(err, ingress.ErrNotFound) {
		t.Errorf("ReplaceIngress of an unknown tunnel: %v", err)
	}
	bad := ingress.Ingress{Hostname: "vm.example.com"}
	if _, err := p.CreateTunnel(ctx, "dd-dev-agent-04", bad); err == nil {
		t.Error("a hostname outside the domain was accepted")
	}

	// The new control plane finds the old one by the hostname it serves.
	v := p.List(ctx, ingress.ListOptions{IngressPrefix: ingress.TunnelPrefix("dev", ingress.RoleCP)})
	if v.Degraded() || len(v.Tunnels) != 3 || len(v.Records) != 4 {
		t.Fatalf("view = %+v", v)
	}

	preds, err := reap.Predecessors(v, "dev", second.ID, "app.localhost")
	if err != nil || len(preds) != 1 || preds[0].ID != first.ID {
		t.Errorf("Predecessors = %+v, %v; want the first control plane", preds, err)
	}

	p.FailList("tunnels", errors.New("injected"))
	if v := p.List(ctx, ingress.ListOptions{}); !v.Degraded() || !v.Failed("tunnels") {
		t.Errorf("view with a failed list = %+v, want degraded", v)
	}
	p.FailList("tunnels", nil)
	if v := p.List(ctx, ingress.ListOptions{}); v.Degraded() {
		t.Errorf("view after the fault = %+v, want complete", v)
	}
}

func TestConnectorExitsWhenItsTunnelIsDeleted(t *testing.T) {
	p, srv := newProvider(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dash := origin(t, "cp")
	tun, err := p.CreateTunnel(ctx, "dd-dev-cp-01", ingress.ControlPlaneIngress("app.localhost"))
	if err != nil {
		t.Fatal(err)
	}

	exits := make(chan cloudflared.Exit, 10)
	c, err := NewConnector(ConnectorOptions{Provider: p, Token: tun.Token,
		Services: map[string]string{"http://localhost:8080": dash.URL},
		OnExit:   func(e cloudflared.Exit) { exits <- e }, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	wg.Go(func() { c.Run(ctx) })
	waitFor(t, func() bool { return c.Status().State == cloudflared.StateRunning })
	if code, body := get(t, srv, "app.localhost"); code != 200 || !strings.HasPrefix(body, "cp ") {
		t.Errorf("through the connector: %d %q", code, body)
	}

	if err := p.DeleteTunnel(ctx, tun.ID); err != nil {
		t.Fatal(err)
	}

	select {
	case e := <-exits:
		if e.Code == 0 || e.Err == "" {
			t.Errorf("exit = %+v, want a failure", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connector did not exit after its tunnel was deleted")
	}

	cancel()
	wg.Wait()
	if st := c.Status(); st.State != cloudflared.StateStopped || st.LastExit == nil {
		t.Errorf("status after stop = %+v", st)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before the deadline")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
