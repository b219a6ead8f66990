package localedge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

const testAPIToken = "test-api-token-0123456789"

// apiFixture is a provider on an edge, served by the API to a client.
type apiFixture struct {
	p    *Provider
	edge *httptest.Server // serves the edge, for requests by Host
	api  *httptest.Server
	c    *Client
}

// secretRE matches the secrets no log line may hold: tunnel tokens and
// the API token.
var secretRE = regexp.MustCompile(`ledge_[0-9a-f]{16,}|` + testAPIToken)

func newAPIFixture(t *testing.T) apiFixture {
	t.Helper()
	logs := &syncBuffer{}

	// Registered first, so it runs last, after every server has closed.
	t.Cleanup(func() {
		if s := secretRE.FindString(logs.String()); s != "" {
			t.Errorf("a secret was logged: %q", s)
		}
	})

	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e, edgeSrv := newEdge(t)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	p, err := NewProvider(e, ProviderOptions{Now: func() time.Time { return now }, Logger: log})
	if err != nil {
		t.Fatal(err)
	}

	h, err := NewAPI(p, APIOptions{Token: testAPIToken, Logger: log})
	if err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := NewClient(ClientOptions{URL: srv.URL, Token: testAPIToken, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return apiFixture{p: p, edge: edgeSrv, api: srv, c: c}
}

// syncBuffer is a log sink for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// state is what a refused request must not change.
type state struct {
	View      ingress.View
	Hostnames map[string]string
}

func snapshot(p *Provider) state {
	v := p.List(context.Background(), ingress.ListOptions{IngressPrefix: "dd-"})
	return state{View: v, Hostnames: p.Hostnames()}
}

func TestNewAPIOptions(t *testing.T) {
	e, err := New(Options{Port: 1})
	if err != nil {
		t.Fatal(err)
	}

	p, err := NewProvider(e, ProviderOptions{})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		p       *Provider
		token   string
		wantErr bool
	}{
		{"valid", p, testAPIToken, false},
		{"no provider", nil, testAPIToken, true},
		{"no token", p, "", true},
		{"short token", p, "fifteen-chars!!", true},
	}
	for _, tt := range tests {
		_, err := NewAPI(tt.p, APIOptions{Token: tt.token})
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: NewAPI error = %v, want error %v", tt.name, err, tt.wantErr)
		}
	}
}

func TestNewClientOptions(t *testing.T) {
	tests := []struct {
		url, token string
		wantErr    bool
		wantBase   string
	}{
		{"http://127.0.0.1:8079", testAPIToken, false, "http://127.0.0.1:8079"},
		{"https://edge.localhost/api/", testAPIToken, false, "https://edge.localhost/api"},
		{"", testAPIToken, true, ""},
		{"127.0.0.1:8079", testAPIToken, true, ""},
		{"ftp://127.0.0.1:8079", testAPIToken, true, ""},
		{"http://127.0.0.1:8079/?x=1", testAPIToken, true, ""},
		{"http://127.0.0.1:8079", "short", true, ""},
	}
	for _, tt := range tests {
		c, err := NewClient(ClientOptions{URL: tt.url, Token: tt.token})
		if (err != nil) != tt.wantErr {
			t.Errorf("NewClient(%q) error = %v, want error %v", tt.url, err, tt.wantErr)
			continue
		}
		if err == nil && c.base != tt.wantBase {
			t.Errorf("NewClient(%q) base = %q, want %q", tt.url, c.base, tt.wantBase)
		}
	}
}

// TestClientRoundTrips changes the provider through the client, checks
// the changes on the provider, and then reads through both: the client
// must answer exactly as the provider does.
func TestClientRoundTrips(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	cp, err := f.c.CreateTunnel(ctx, "dd-dev-cp-01", ingress.ControlPlaneIngress("app.localhost"))
	if err != nil {
		t.Fatal(err)
	}

	info, err := f.p.Tunnel(ctx, cp.ID)
	if err != nil {
		t.Fatal(err)
	}

	want := ingress.Tunnel{ID: info.ID, Name: info.Name, CreatedAt: info.CreatedAt, Token: cp.Token}
	if diff := cmp.Diff(want, cp); diff != "" {
		t.Errorf("CreateTunnel mismatch (-provider +client):\n%s", diff)
	}

	// The token came through intact if it connects.
	link, err := f.p.Link(ctx, cp.Token, nil)
	if err != nil {
		t.Fatalf("the created tunnel's token: %v", err)
	}
	defer link.Close()

	claims := []ingress.Claim{{App: "web", Label: "web", Port: 9000}}
	agent, err := f.c.CreateTunnel(ctx, "dd-dev-agent-02",
		ingress.AgentIngress("vm-1.localhost", claims))
	if err != nil {
		t.Fatal(err)
	}

	gone, err := f.c.CreateTunnel(ctx, "dd-dev-agent-03",
		ingress.AgentIngress("vm-2.localhost", nil))
	if err != nil {
		t.Fatal(err)
	}

	replaced := ingress.AgentIngress("vm-1.localhost", nil)
	if err := f.c.ReplaceIngress(ctx, agent.ID, replaced); err != nil {
		t.Fatal(err)
	}

	rules, err := f.p.TunnelIngress(ctx, agent.ID)
	if err != nil {
		t.Fatal(err)
	}

	if diff := cmp.Diff(replaced.Rules(), rules); diff != "" {
		t.Errorf("rules after ReplaceIngress (-want +got):\n%s", diff)
	}

	if err := f.c.DeleteTunnel(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}

	if info, err := f.p.Tunnel(ctx, gone.ID); err != nil || !info.Deleted() {
		t.Errorf("tunnel after DeleteTunnel = %+v, %v; want soft-deleted", info, err)
	}

	api := ingress.AgentAPIHostname("vm-1.localhost")
	if err := f.c.DeleteRecord(ctx, recordID(t, f.p, api)); err != nil {
		t.Fatal(err)
	}

	wantHosts := map[string]string{"app.localhost": cp.ID, "app-shell.localhost": cp.ID,
		"vm-1.localhost": agent.ID}
	if diff := cmp.Diff(wantHosts, f.p.Hostnames()); diff != "" {
		t.Errorf("records after the writes (-want +got):\n%s", diff)
	}

	reads := []struct {
		name string
		read func(ingress.Provider) (any, error)
	}{
		{"Tunnel connected", func(p ingress.Provider) (any, error) { return p.Tunnel(ctx, cp.ID) }},
		{"Tunnel idle", func(p ingress.Provider) (any, error) { return p.Tunnel(ctx, agent.ID) }},
		{"Tunnel deleted", func(p ingress.Provider) (any, error) { return p.Tunnel(ctx, gone.ID) }},
		{"Tunnel unknown", func(p ingress.Provider) (any, error) {
			return p.Tunnel(ctx, "no/such id") // escaped in the path
		}},
		{"TunnelIngress", func(p ingress.Provider) (any, error) {
			return p.TunnelIngress(ctx, cp.ID)
		}},
		{"TunnelIngress deleted", func(p ingress.Provider) (any, error) {
			return p.TunnelIngress(ctx, gone.ID)
		}},
		{"TunnelIngress unknown", func(p ingress.Provider) (any, error) {
			return p.TunnelIngress(ctx, "nope")
		}},
		{"List", func(p ingress.Provider) (any, error) {
			return p.List(ctx, ingress.ListOptions{}), nil
		}},
		{"List with ingress", func(p ingress.Provider) (any, error) {
			return p.List(ctx, ingress.ListOptions{IngressPrefix: "dd-dev-agent-"}), nil
		}},
		{"List with apps", func(p ingress.Provider) (any, error) {
			return p.List(ctx, ingress.ListOptions{Apps: true}), nil
		}},
	}
	for _, tt := range reads {
		t.Run(tt.name, func(t *testing.T) {
			want, wantErr := tt.read(f.p)
			got, err := tt.read(f.c)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("mismatch (-provider +client):\n%s", diff)
			}
			if (err != nil) != (wantErr != nil) ||
				errors.Is(err, ingress.ErrNotFound) != errors.Is(wantErr, ingress.ErrNotFound) {
				t.Errorf("error = %v, want like the provider's %v", err, wantErr)
			}
		})
	}
}

// recordID returns the id of hostname's record.
func recordID(t *testing.T, p *Provider, hostname string) string {
	t.Helper()
	for _, r := range p.List(context.Background(), ingress.ListOptions{}).Records {
		if r.Name == hostname {
			return r.ID
		}
	}

	t.Fatalf("no record for %s", hostname)
	return ""
}

// TestClientErrors checks that the client fails where the provider does,
// and that ErrNotFound survives the trip.
func TestClientErrors(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	live, err := f.p.CreateTunnel(ctx, "dd-dev-agent-01", ingress.AgentIngress("vm.localhost", nil))
	if err != nil {
		t.Fatal(err)
	}

	dead, err := f.p.CreateTunnel(ctx, "dd-dev-agent-02",
		ingress.AgentIngress("vm2.localhost", nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.p.DeleteTunnel(ctx, dead.ID); err != nil {
		t.Fatal(err)
	}

	valid := ingress.AgentIngress("vm.localhost", nil)
	outside := ingress.Ingress{Hostname: "vm.example.com"}

	tests := []struct {
		name       string
		call       func(ingress.Provider) error
		wantErr    bool
		notFound   bool
		wantStatus int // of the client's APIError; 0 when the client answers itself
	}{
		{"ReplaceIngress unknown", func(p ingress.Provider) error {
			return p.ReplaceIngress(ctx, "nope", valid)
		}, true, true, 404},
		{"ReplaceIngress deleted", func(p ingress.Provider) error {
			return p.ReplaceIngress(ctx, dead.ID, valid)
		}, true, true, 404},
		{"ReplaceIngress empty id", func(p ingress.Provider) error {
			return p.ReplaceIngress(ctx, "", valid)
		}, true, true, 0},
		{"ReplaceIngress outside the domain", func(p ingress.Provider) error {
			return p.ReplaceIngress(ctx, live.ID, outside)
		}, true, false, 400},
		{"CreateTunnel without a name", func(p ingress.Provider) error {
			_, err := p.CreateTunnel(ctx, "", valid)
			return err
		}, true, false, 400},
		{"CreateTunnel invalid ingress", func(p ingress.Provider) error {
			_, err := p.CreateTunnel(ctx, "dd-dev-agent-09", ingress.Ingress{Hostname: "A B"})
			return err
		}, true, false, 400},
		{"Tunnel empty id", func(p ingress.Provider) error {
			_, err := p.Tunnel(ctx, "")
			return err
		}, true, true, 0},
		{"DeleteTunnel empty id", func(p ingress.Provider) error {
			return p.DeleteTunnel(ctx, "")
		}, true, false, 0},
		{"DeleteTunnel unknown", func(p ingress.Provider) error {
			return p.DeleteTunnel(ctx, "nope")
		}, false, false, 0},
		{"DeleteRecord unknown", func(p ingress.Provider) error {
			return p.DeleteRecord(ctx, "nope")
		}, false, false, 0},
		{"DeleteRecord empty id", func(p ingress.Provider) error {
			return p.DeleteRecord(ctx, "")
		}, false, false, 0},
	}

	before := snapshot(f.p)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for name, p := range map[string]ingress.Provider{"provider": f.p, "client": f.c} {
				err := tt.call(p)
				notFound := errors.Is(err, ingress.ErrNotFound)
				if (err != nil) != tt.wantErr || notFound != tt.notFound {
					t.Errorf("%s: error = %v, want error %v, not found %v", name, err,
						tt.wantErr, tt.notFound)
				}
			}

			var ae *APIError
			if err := tt.call(f.c); errors.As(err, &ae) != (tt.wantStatus != 0) ||
				(ae != nil && ae.Status != tt.wantStatus) {
				t.Errorf("client error = %#v, want status %d", err, tt.wantStatus)
			}
		})
	}

	if diff := cmp.Diff(before, snapshot(f.p)); diff != "" {
		t.Errorf("failed calls changed the provider (-before +after):\n%s", diff)
	}
}

// do sends a raw request to the API with the Authorization header auth
// (none when empty) and returns the status and error body.
func do(t *testing.T, srv *httptest.Server, method, path, contentType, auth,
	body string) (int, httpapi.Body) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}

	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}

	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	var b httpapi.Body
	if resp.StatusCode >= 400 {
		if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
			t.Errorf("%s %s: error body: %v", method, path, err)
		}
	}
	return resp.StatusCode, b
}

func TestAPIRefusesWithoutToken(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	live, err := f.p.CreateTunnel(ctx, "dd-dev-agent-01", ingress.AgentIngress("vm.localhost", nil))
	if err != nil {
		t.Fatal(err)
	}

	rec := recordID(t, f.p, "vm.localhost")
	requests := []struct{ method, path, body string }{
		{"POST", "/tunnels", `{"name":"dd-dev-cp-09","ingress":{"hostname":"new.localhost"}}`},
		{"PUT", "/tunnels/" + live.ID + "/ingress", `{"hostname":"moved.localhost"}`},
		{"DELETE", "/tunnels/" + live.ID, ""},
		{"DELETE", "/records/" + rec, ""},
		{"GET", "/tunnels/" + live.ID, ""},
		{"GET", "/tunnels/" + live.ID + "/ingress", ""},
		{"GET", "/view", ""},
		{"POST", "/connections", `{"token":"` + live.Token + `"}`},
		{"GET", "/no-such-route", ""},
	}

	auths := map[string]string{
		"none":     "",
		"wrong":    "Bearer wrong-token-0123456789",
		"prefix":   "Bearer " + testAPIToken[:len(testAPIToken)-1],
		"longer":   "Bearer " + testAPIToken + "0",
		"basic":    "Basic " + testAPIToken,
		"no token": "Bearer ",
	}

	before := snapshot(f.p)
	for name, auth := range auths {
		for _, r := range requests {
			code, body := do(t, f.api, r.method, r.path, "application/json", auth, r.body)
			if code != http.StatusUnauthorized || body.Code != httpapi.CodeUnauthorized {
				t.Errorf("%s: %s %s = %d %+v, want 401", name, r.method, r.path, code, body)
			}
		}
	}

	if diff := cmp.Diff(before, snapshot(f.p)); diff != "" {
		t.Errorf("refused requests changed the provider (-before +after):\n%s", diff)
	}

	wrong, err := NewClient(ClientOptions{URL: f.api.URL, Token: "wrong-token-0123456789"})
	if err != nil {
		t.Fatal(err)
	}

	var ae *APIError
	if _, err := wrong.Tunnel(ctx, live.ID); !errors.As(err, &ae) || ae.Status != 401 ||
		errors.Is(err, ingress.ErrNotFound) {
		t.Errorf("Tunnel with the wrong token: %v, want a 401", err)
	}
	if v := wrong.List(ctx, ingress.ListOptions{}); !v.Degraded() {
		t.Errorf("List with the wrong token = %+v, want degraded", v)
	}
}

func TestAPIRefusesBadBodies(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	live, err := f.p.CreateTunnel(ctx, "dd-dev-agent-01", ingress.AgentIngress("vm.localhost", nil))
	if err != nil {
		t.Fatal(err)
	}

	ingressPath := "/tunnels/" + live.ID + "/ingress"
	tests := []struct {
		name, method, path, contentType, body string
		wantStatus                            int
		wantCode                              string
	}{
		{"malformed", "POST", "/tunnels", "", `{"name":`, 400, httpapi.CodeBadRequest},
		{"not an object", "POST", "/tunnels", "", `["dd-dev-cp-09"]`, 400, httpapi.CodeBadRequest},
		{"wrong type", "POST", "/tunnels", "", `{"name":7}`, 400, httpapi.CodeBadRequest},
		{"unknown field", "POST", "/tunnels", "",
			`{"name":"dd-dev-cp-09","ingress":{"hostname":"n.localhost"},"x":1}`,
			400, httpapi.CodeBadRequest},
		{"trailing data", "POST", "/tunnels", "",
			`{"name":"dd-dev-cp-09","ingress":{"hostname":"n.localhost"}} {}`,
			400, httpapi.CodeBadRequest},
		{"too large", "POST", "/tunnels", "",
			`{"name":"` + strings.Repeat("a", maxAPIBody) + `"}`, 413, httpapi.CodeTooLarge},
		{"not JSON", "POST", "/tunnels", "text/plain",
			`{"name":"dd-dev-cp-09","ingress":{"hostname":"n.localhost"}}`,
			415, httpapi.CodeUnsupported},
		{"ingress unknown field", "PUT", ingressPath, "", `{"hostname":"n.localhost","port":1}`,
			400, httpapi.CodeBadRequest},
		{"ingress malformed", "PUT", ingressPath, "", `{"hostname"`, 400, httpapi.CodeBadRequest},
		{"connection malformed", "POST", "/connections", "", `{"token":`,
			400, httpapi.CodeBadRequest},
		{"connection unknown field", "POST", "/connections", "",
			`{"token":"` + live.Token + `","x":1}`, 400, httpapi.CodeBadRequest},
		{"connection bad origin", "POST", "/connections", "",
			`{"token":"` + live.Token + `","services":{"http://localhost:8080":"not a url"}}`,
			400, httpapi.CodeBadRequest},
		{"connection bad token", "POST", "/connections", "", `{"token":"nope"}`,
			403, httpapi.CodeForbidden},
		{"apps not a bool", "GET", "/view?apps=maybe", "", "", 400, httpapi.CodeBadRequest},
	}

	before := snapshot(f.p)
	for _, tt := range tests {
		code, body := do(t, f.api, tt.method, tt.path, tt.contentType, "Bearer "+testAPIToken,
			tt.body)
		if code != tt.wantStatus || body.Code != tt.wantCode {
			t.Errorf("%s: %s %s = %d %+v, want %d %s", tt.name, tt.method, tt.path, code, body,
				tt.wantStatus, tt.wantCode)
		}
	}

	if diff := cmp.Diff(before, snapshot(f.p)); diff != "" {
		t.Errorf("refused requests changed the provider (-before +after):\n%s", diff)
	}
}

// TestConnectorThroughClient runs a connector in "another process": it
// holds its tunnel only through the API, and exits when the tunnel is
// deleted through the API.
func TestConnectorThroughClient(t *testing.T) {
	f := newAPIFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup

	// Deferred calls run before the servers close, which waits for
	// connection streams.
	defer wg.Wait()
	defer cancel()

	dash := origin(t, "cp")
	tun, err := f.c.CreateTunnel(ctx, "dd-dev-cp-01", ingress.ControlPlaneIngress("app.localhost"))
	if err != nil {
		t.Fatal(err)
	}

	exits := make(chan cloudflared.Exit, 1)
	c, err := NewConnector(ConnectorOptions{Provider: f.c, Token: tun.Token,
		Services: map[string]string{"http://localhost:8080": dash.URL},
		OnExit: func(e cloudflared.Exit) {
			select {
			case exits <- e: // the first exit is the one under test
			default:
			}
		},
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	wg.Go(func() { c.Run(ctx) })

	waitFor(t, func() bool {
		info, err := f.c.Tunnel(ctx, tun.ID)
		return err == nil && info.Status == "healthy"
	})
	if code, body := get(t, f.edge, "app.localhost"); code != 200 ||
		!strings.HasPrefix(body, "cp app.localhost") {
		t.Errorf("through the connector: %d %q, want the origin's answer", code, body)
	}

	if err := f.c.DeleteTunnel(ctx, tun.ID); err != nil {
		t.Fatal(err)
	}

	select {
	case e := <-exits:
		if e.Code == 0 || !strings.Contains(e.Err, tun.ID) {
			t.Errorf("exit = %+v, want a failure naming the tunnel", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connector did not exit after its tunnel was deleted")
	}

	if st := c.Status(); st.LastExit == nil || st.State == cloudflared.StateRunning {
		t.Errorf("status after the deletion = %+v, want not running with LastExit", st)
	}
	if code, _ := get(t, f.edge, "app.localhost"); code != http.StatusNotFound {
		t.Errorf("deleted tunnel's hostname = %d, want 404", code)
	}

	cancel()
	wg.Wait()
	if st := c.Status(); st.State != cloudflared.StateStopped || st.LastExit == nil {
		t.Errorf("status after stop = %+v", st)
	}
}

// linkEnder ends a link of a test's client in some way.
type linkEnder func(t *testing.T, f apiFixture, l Link)

func TestClientLinkEnds(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		end        linkEnder
		wantStatus string // the tunnel's afterwards
	}{
		{"closed by the connector", func(t *testing.T, f apiFixture, l Link) {
			l.Close()
		}, "inactive"},
		{"tunnel deleted", func(t *testing.T, f apiFixture, l Link) {
			if err := f.c.DeleteTunnel(ctx, l.TunnelID()); err != nil {
				t.Error(err)
			}
		}, "down"},
		{"API gone", func(t *testing.T, f apiFixture, l Link) {
			f.api.CloseClientConnections()
		}, "inactive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAPIFixture(t)
			tun, err := f.p.CreateTunnel(ctx, "dd-dev-cp-01",
				ingress.ControlPlaneIngress("app.localhost"))
			if err != nil {
				t.Fatal(err)
			}

			l, err := f.c.Link(ctx, tun.Token, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()

			if l.TunnelID() != tun.ID {
				t.Errorf("TunnelID = %q, want %q", l.TunnelID(), tun.ID)
			}
			if st := tunnelStatus(t, f.p, tun.ID); st != "healthy" {
				t.Errorf("status with a link = %q, want healthy", st)
			}
			tt.end(t, f, l)

			select {
			case <-l.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the link did not end")
			}

			waitFor(t, func() bool { return tunnelStatus(t, f.p, tun.ID) == tt.wantStatus })
			l.Close() // again: a no-op
		})
	}
}

func tunnelStatus(t *testing.T, p *Provider, id string) string {
	t.Helper()
	info, err := p.Tunnel(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return info.Status
}

func TestClientLinkRefused(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	dead, err := f.p.CreateTunnel(ctx, "dd-dev-cp-01", ingress.ControlPlaneIngress("app.localhost"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.p.DeleteTunnel(ctx, dead.ID); err != nil {
		t.Fatal(err)
	}

	live, err := f.p.CreateTunnel(ctx, "dd-dev-cp-02", ingress.ControlPlaneIngress("app.localhost"))
	if err != nil {
		t.Fatal(err)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()

	tests := []struct {
		name       string
		ctx        context.Context
		token      string
		wantStatus int // of the APIError; 0 for none
	}{
		{"unknown token", ctx, "ledge_nope", http.StatusForbidden},
		{"deleted tunnel", ctx, dead.Token, http.StatusForbidden},
		{"bad origin", ctx, live.Token, http.StatusBadRequest},
		{"cancelled", cancelled, live.Token, 0},
	}
	for _, tt := range tests {
		services := map[string]string{}
		if tt.name == "bad origin" {
			services["http://localhost:8080"] = "ftp://127.0.0.1/"
		}
		l, err := f.c.Link(tt.ctx, tt.token, services)

		var ae *APIError
		if err == nil || l != nil || errors.As(err, &ae) != (tt.wantStatus != 0) ||
			(ae != nil && ae.Status != tt.wantStatus) {
			t.Errorf("%s: Link = %v, %v; want an error with status %d", tt.name, l, err,
				tt.wantStatus)
		}
	}

	if st := tunnelStatus(t, f.p, live.ID); st != "inactive" {
		t.Errorf("status after refused links = %q, want inactive", st)
	}
}

func TestClientDegradedView(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	if _, err := f.p.CreateTunnel(ctx, "dd-dev-cp-01",
		ingress.ControlPlaneIngress("app.localhost")); err != nil {
		t.Fatal(err)
	}

	f.p.FailList("dns", errors.New("dns api down"))
	want := f.p.List(ctx, ingress.ListOptions{})
	got := f.c.List(ctx, ingress.ListOptions{})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("degraded view mismatch (-provider +client):\n%s", diff)
	}

	if got.Complete || !got.Degraded() || !got.Failed("dns") || got.Failed("tunnels") ||
		got.Errors[0].Err != "dns api down" {
		t.Errorf("view = %+v, want incomplete with the dns error's text", got)
	}

	// An API that cannot be reached gives a view with every list failed.
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	c, err := NewClient(ClientOptions{URL: gone.URL, Token: testAPIToken})
	if err != nil {
		t.Fatal(err)
	}

	v := c.List(ctx, ingress.ListOptions{Apps: true})
	if v.Complete || !v.Failed("tunnels") || !v.Failed("dns") || !v.Failed("apps") {
		t.Errorf("view of an unreachable API = %+v, want every list failed", v)
	}
}

// FuzzClientReplies feeds the client's reply parsers arbitrary bytes: no
// panic, a first line names a tunnel, and only a NOT_FOUND body reads as
// ErrNotFound.
func FuzzClientReplies(f *testing.F) {
	f.Add([]byte("{\"tunnel_id\":\"0a1b\"}\n"))
	f.Add([]byte(`{"code":"NOT_FOUND","message":"tunnel x: ingress: not found"}`))
	f.Add([]byte("{\"tunnel_id\":\"\"}\n"))
	f.Add([]byte("not json\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := readHello(bufio.NewReaderSize(bytes.NewReader(data), maxHelloLine))
		if err == nil && id == "" {
			t.Error("readHello accepted a line without a tunnel id")
		}
		ae := parseError(http.StatusNotFound, data)

		var b httpapi.Body
		isNotFound := json.Unmarshal(data, &b) == nil && b.Code == httpapi.CodeNotFound
		if errors.Is(ae, ingress.ErrNotFound) != isNotFound {
			t.Errorf("parseError(404, %q) = %#v, Is(ErrNotFound) should be %v", data, ae,
				isNotFound)
		}
	})
}

// FuzzAPIBodies sends arbitrary bodies to the routes that read one: the
// API never fails with a 5xx, and a refused request changes nothing.
func FuzzAPIBodies(f *testing.F) {
	e, err := New(Options{Port: 1})
	if err != nil {
		f.Fatal(err)
	}

	// A fixed clock keeps the views of one state equal.
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	p, err := NewProvider(e, ProviderOptions{Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}

	h, err := NewAPI(p, APIOptions{Token: testAPIToken})
	if err != nil {
		f.Fatal(err)
	}

	live, err := p.CreateTunnel(context.Background(), "dd-dev-agent-01",
		ingress.AgentIngress("vm.localhost", nil))
	if err != nil {
		f.Fatal(err)
	}

	routes := []struct{ method, path string }{
		{"POST", "/tunnels"}, {"PUT", "/tunnels/" + live.ID + "/ingress"}, {"POST", "/connections"},
	}
	f.Add(uint8(0), []byte(`{"name":"dd-dev-cp-02","ingress":{"hostname":"app.localhost"}}`))
	f.Add(uint8(1), []byte(`{"hostname":"vm.localhost","extras":[{"hostname":"x.localhost"}]}`))
	f.Add(uint8(2), []byte(`{"token":"`+live.Token+`"}`))
	f.Add(uint8(2), []byte(`{"token":"x","services":{"a":"http://"}}`))

	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		rt := routes[int(route)%len(routes)]
		// A cancelled request ends a connection stream at once.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		req := httptest.NewRequestWithContext(ctx, rt.method, rt.path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testAPIToken)

		before := snapshot(p)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %s %q = %d %s", rt.method, rt.path, body, w.Code, w.Body)
		}

		if w.Code >= 300 {
			if diff := cmp.Diff(before, snapshot(p)); diff != "" {
				t.Errorf("a refused request (%d) changed the provider:\n%s", w.Code, diff)
			}
		}
	})
}

// TestClientHostnameTaken: the provider's refusal to move another
// environment's hostname reaches the client as ingress.ErrHostnameTaken.
func TestClientHostnameTaken(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	if _, err := f.p.CreateTunnel(ctx, "dd-pr-7-agent-01",
		ingress.AgentIngress("shop.localhost", nil)); err != nil {
		t.Fatal(err)
	}

	before := snapshot(f.p)
	_, err := f.c.CreateTunnel(ctx, "dd-dev-agent-02", ingress.AgentIngress("shop.localhost", nil))
	var ae *APIError
	if !errors.Is(err, ingress.ErrHostnameTaken) || !errors.As(err, &ae) ||
		ae.Status != http.StatusConflict {
		t.Errorf("taking another environment's hostname = %v, want a 409 ErrHostnameTaken", err)
	}

	if diff := cmp.Diff(before, snapshot(f.p)); diff != "" {
		t.Errorf("the refused call changed the provider (-before +after):\n%s", diff)
	}
}
