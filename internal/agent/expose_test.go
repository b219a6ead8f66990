package agent

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

const js = "application/json"

func TestDeployRefusesBadExposeBeforeDeploying(t *testing.T) {
	rt := startRuntime(t)
	_, srv := newTestAgent(t, rt)
	spec := func(app, label string) string {
		return `{"app_name":"` + app + `","cmd":["/bin/sh","-c","sleep 30"],` +
			`"expose":{"hostname_label":"` + label + `","port":9000}}`
	}

	if r := do(t, "POST", srv.URL+"/deploy", "good", js, spec("web", "www")); r.status != 200 {
		t.Fatalf("deploy with a good expose = %d %s", r.status, r.body)
	}

	bad := map[string]string{
		"reserved label":  spec("b", "api"),
		"agent API label": spec("c", "agent-api"),
		"taken label":     spec("d", "www"),
		"role marker":     spec("e", "x-agent-y"),
		"too long":        spec("f", strings.Repeat("a", 60)),
	}
	for name, body := range bad {
		r := do(t, "POST", srv.URL+"/deploy", "good", js, body)
		if r.status != 400 || !strings.Contains(r.body, "BAD_REQUEST") {
			t.Errorf("%s: deploy = %d %s, want 400", name, r.status, r.body)
		}
	}

	units, err := rt.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		if u.AppName != "web" {
			t.Errorf("refused deploy of %s reached the runtime", u.AppName)
		}
	}

	var h agentapi.Health
	json.Unmarshal([]byte(do(t, "GET", srv.URL+"/health", "", "", "").body), &h)
	want := []agentapi.Exposed{{App: "web", Label: "www", Port: 9000}}
	if diff := cmp.Diff(want, h.Exposed); diff != "" {
		t.Errorf("health exposed (-want +got):\n%s", diff)
	}
}

// fakeConnector records the token it was built with.
type fakeConnector struct{ token string }

func (f *fakeConnector) Run(ctx context.Context) error { <-ctx.Done(); return nil }

func (f *fakeConnector) Status() cloudflared.Status {
	return cloudflared.Status{State: cloudflared.StateRunning}
}

func TestRegisteredAgentPublishesClaimsAndRunsItsConnector(t *testing.T) {
	rt := startRuntime(t)
	cp := &fakeCP{t: t, got: make(chan cpapi.RegisterRequest, 10),
		claims: make(chan []ingress.Claim, 10)}
	cpSrv := httptest.NewServer(cp)
	defer cpSrv.Close()

	var mu sync.Mutex
	var tokens []string
	opts := Options{VMName: "vm-1", Runtime: rt, Auth: fakeAuth{},
		ControlPlaneURL: cpSrv.URL, Origin: "http://127.0.0.1:1", SyncInterval: time.Hour,
		Expose: []ingress.Claim{{App: "boot-shell", Label: "term", Port: 7681}},
		Connect: func(token string, _ func(cloudflared.Exit)) (Connector, error) {
			mu.Lock()
			defer mu.Unlock()
			tokens = append(tokens, token)
			return &fakeConnector{token: token}, nil
		}}

	if _, err := New(opts); err == nil {
		t.Fatal("a reserved boot label was accepted")
	}

	boot := []ingress.Claim{{App: "boot-shell", Label: "shell-ui", Port: 7681}}
	opts.Expose = boot
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	_, base, _ := serveAgent(t, a)

	// Registration starts the connector and publishes the boot claims.
	if diff := cmp.Diff(boot, <-cp.claims); diff != "" {
		t.Errorf("claims after registration (-want +got):\n%s", diff)
	}
	mu.Lock()
	if len(tokens) != 1 || tokens[0] != "secret-tunnel-token" {
		t.Errorf("connector tokens = %q, want the registration's", tokens)
	}
	mu.Unlock()

	// A deploy with expose adds its claim to the full list.
	r := do(t, "POST", base+"/deploy", "good", js, `{"app_name":"oracle",`+
		`"cmd":["/bin/sh","-c","sleep 30"],"expose":{"hostname_label":"oracle","port":8082}}`)
	if r.status != 200 {
		t.Fatalf("deploy = %d %s", r.status, r.body)
	}

	want := []ingress.Claim{boot[0], {App: "oracle", Label: "oracle", Port: 8082}}
	if diff := cmp.Diff(want, <-cp.claims); diff != "" {
		t.Errorf("claims after the deploy (-want +got):\n%s", diff)
	}

	var resp agentapi.DeployResponse
	json.Unmarshal([]byte(r.body), &resp)
	wantExp := &agentapi.Exposed{App: "oracle", Label: "oracle", Port: 8082,
		Hostname: "vm-1-oracle.example", URL: "https://vm-1-oracle.example", Published: true}
	if diff := cmp.Diff(wantExp, resp.Exposed); diff != "" {
		t.Errorf("deploy exposed (-want +got):\n%s", diff)
	}

	var h agentapi.Health
	hr := do(t, "GET", base+"/health", "", "", "")
	json.Unmarshal([]byte(hr.body), &h)
	if h.Tunnel == nil || h.Tunnel.State != cloudflared.StateRunning || len(h.Exposed) != 2 {
		t.Errorf("health tunnel %+v exposed %+v", h.Tunnel, h.Exposed)
	}
	if strings.Contains(hr.body, "secret-tunnel-token") {
		t.Error("/health shows the tunnel token")
	}
}
