package cp

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/dashboard"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

const validRegister = `{"vm_name":"web","origin":"http://127.0.0.1:9101",
	"evidence":{"attestation_type":"simulated","quote_format":"sim",
	"quote_b64":"cXVvdGU=","report_data_b64":"cmQ="}}`

func registerBody(vm, origin, evType string) string {
	b, _ := json.Marshal(map[string]any{
		"vm_name": vm, "origin": origin,
		"evidence": map[string]string{"attestation_type": evType},
	})
	return string(b)
}

func (e *testEnv) register(t *testing.T, vm string) cpapi.RegisterResponse {
	t.Helper()
	body, h := newTestAgent(t).registration(t, e, vm)
	rec := e.do("POST", "/register", body, h)
	if rec.Code != http.StatusOK {
		t.Fatalf("register %s: %d %s", vm, rec.Code, rec.Body)
	}

	var resp cpapi.RegisterResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func decodeError(t *testing.T, rec interface{ Result() *http.Response }) httpapi.Body {
	t.Helper()
	resp := rec.Result()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error content type %q, want application/json", ct)
	}

	var b httpapi.Body
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil || b.Code == "" {
		t.Errorf("error body is not {code, message}: %v", err)
	}
	return b
}

func TestNewValidatesOptions(t *testing.T) {
	tests := map[string]func(*Options){
		"no store":          func(o *Options) { o.Store = nil },
		"no ingress":        func(o *Options) { o.Ingress = nil },
		"short token":       func(o *Options) { o.AdminToken = "short" },
		"bad env":           func(o *Options) { o.Env = "Dev_1" },
		"bad hostname":      func(o *Options) { o.Hostname = "app.localhost:8443" },
		"no domain":         func(o *Options) { o.Domain = "" },
		"negative interval": func(o *Options) { o.ScrapeInterval = -time.Second },
	}

	base := newTestEnv(t, nil)
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			opts := base.srv.opts
			mutate(&opts)
			if _, err := New(opts); err == nil {
				t.Error("New succeeded")
			}
		})
	}
}

func TestHealth(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.Build = "abc123" })
	e.register(t, "web")
	e.clock.Advance(90 * time.Second)
	rec := e.do("GET", "/health", "", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}

	var got cpapi.Health
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}

	want := cpapi.Health{OK: true, Service: "cp", Env: "dev", Hostname: "app.localhost",
		Build: "abc123", UptimeSecs: 90, AgentCount: 1, HealthyCount: 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("health (-want +got):\n%s", diff)
	}
}

func TestRegisterStoresUnverified(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.Appraiser, o.AcceptUnverified = nil, true })
	agent := newTestAgent(t)
	body, h := agent.registration(t, e, "web")
	var sent cpapi.RegisterRequest
	json.Unmarshal([]byte(body), &sent)
	rec := e.do("POST", "/register", body, h)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}

	var resp cpapi.RegisterResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}

	const prefix = "dd-dev-agent-"
	if !strings.HasPrefix(resp.AgentID, prefix) || len(resp.AgentID) != len(prefix)+16 {
		t.Errorf("agent_id %q, want dd-dev-agent-<16 hex>", resp.AgentID)
	}
	if resp.Hostname != "web.localhost" || resp.URL != "http://web.localhost" {
		t.Errorf("hostname %q url %q", resp.Hostname, resp.URL)
	}
	if len(resp.AgentToken) < 40 {
		t.Errorf("agent token %q is too short", resp.AgentToken)
	}

	a, err := e.store.Get(context.Background(), resp.AgentID)
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != fleet.StatusRegistering || a.Origin != "http://127.0.0.1:9101" ||
		!a.RegisteredAt.Equal(t0) {
		t.Errorf("stored %+v", a)
	}

	wantAtt := fleet.Attestation{Type: "simulated", QuoteFormat: "fake",
		QuoteB64: sent.Evidence.QuoteB64, Verified: false, Status: "unverified"}
	if diff := cmp.Diff(wantAtt, a.Attestation); diff != "" {
		t.Errorf("attestation (-want +got):\n%s", diff)
	}
	if _, err := e.store.AuthenticateAgent(context.Background(), a.ID, resp.AgentToken); err != nil {
		t.Errorf("returned token does not authenticate: %v", err)
	}
	if a.TunnelID == "" || resp.TunnelToken == "" {
		t.Errorf("tunnel id %q, token set %v; want both", a.TunnelID, resp.TunnelToken != "")
	}
	if got := e.ingress.owner("web.localhost"); got != a.TunnelID {
		t.Errorf("ingress routes web.localhost to tunnel %q, want %q", got, a.TunnelID)
	}

	if got := e.ingress.owner("web-agent-api.localhost"); got != a.TunnelID {
		t.Errorf("ingress routes the API hostname to tunnel %q, want %q", got, a.TunnelID)
	}
	if strings.Contains(e.logs.String(), resp.TunnelToken) {
		t.Error("the tunnel token was logged")
	}

	select {
	case <-e.srv.wake:
	default:
		t.Error("registration did not wake the collector")
	}
}

func TestRegisterRejectsBadInput(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name   string
		body   string
		ctype  string
		status int
	}{
		{"bad json", `{"vm_name":`, "", 400},
		{"not an object", `["web"]`, "", 400},
		{"trailing data", validRegister + `{}`, "", 400},
		{"oversized", `{"vm_name":"web","origin":"http://x","evidence":{"attestation_type":"none",` +
			`"quote_b64":"` + strings.Repeat("A", 70<<10) + `"}}`, "", 413},
		{"unknown field", `{"vm_name":"web","origin":"http://x","evidence":` +
			`{"attestation_type":"none"},"ita_token":"x"}`, "", 400},
		{"wrong content type", validRegister, "text/plain", 415},
		{"missing vm_name", registerBody("", "http://x", "none"), "", 400},
		{"uppercase vm_name", registerBody("Web", "http://x", "none"), "", 400},
		{"underscore vm_name", registerBody("a_b", "http://x", "none"), "", 400},
		{"leading hyphen", registerBody("-web", "http://x", "none"), "", 400},
		{"dotted vm_name", registerBody("a.b", "http://x", "none"), "", 400},
		{"vm_name too long", registerBody(long, "http://x", "none"), "", 400},
		{"vm_name is the cp host", registerBody("app", "http://x", "none"), "", 409},
		{"vm_name is the cp shell", registerBody("app-shell", "http://x", "none"), "", 409},
		{"api hostname too long", registerBody(long[1:], "http://x", "none"), "", 400},
		{"relative origin", registerBody("web", "/health", "none"), "", 400},
		{"origin without scheme", registerBody("web", "localhost:8080", "none"), "", 400},
		{"ftp origin", registerBody("web", "ftp://x", "none"), "", 400},
		{"origin with credentials", registerBody("web", "http://u:p@x", "none"), "", 400},
		{"origin with query", registerBody("web", "http://x/?a=1", "none"), "", 400},
		{"unknown evidence type", registerBody("web", "http://x", "sgx"), "", 400},
		{"missing evidence", `{"vm_name":"web","origin":"http://x"}`, "", 400},
		{"bad quote base64", `{"vm_name":"web","origin":"http://x","evidence":` +
			`{"attestation_type":"tdx","quote_b64":"%%%"}}`, "", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			h := map[string]string{}
			if tc.ctype != "" {
				h["Content-Type"] = tc.ctype
			}

			rec := e.do("POST", "/register", tc.body, h)
			if rec.Code != tc.status {
				t.Errorf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}

			decodeError(t, rec)
			assertEmpty(t, e)
		})
	}
}

func signedRegister(t *testing.T, e *testEnv) (string, map[string]string) {
	return newTestAgent(t).registration(t, e, "web")
}

func assertEmpty(t *testing.T, e *testEnv) {
	t.Helper()
	list, err := e.store.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("store holds %d agents, want none", len(list))
	}
	if n := e.ingress.routes(); n != 0 {
		t.Errorf("ingress holds %d routes, want none", n)
	}
}

func TestRegisterIngressFailure(t *testing.T) {
	e := newTestEnv(t, nil)
	e.ingress.createErr = errIngressDown
	body, h := signedRegister(t, e)
	rec := e.do("POST", "/register", body, h)
	if rec.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", rec.Code)
	}
	if b := decodeError(t, rec); strings.Contains(b.Message, "ingress down") {
		t.Errorf("upstream detail leaked to the client: %q", b.Message)
	}
	assertEmpty(t, e)
}

func TestRegisterReplacesSameVMName(t *testing.T) {
	e := newTestEnv(t, nil)
	first := e.register(t, "web")
	other := e.register(t, "db")
	e.clock.Advance(time.Minute) // the first "web" is gone: unseen, unreachable
	second := e.register(t, "web")
	if first.AgentID == second.AgentID {
		t.Fatal("re-registration reused the agent id")
	}

	list, err := e.store.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	var ids []string
	for _, a := range list {
		ids = append(ids, a.ID)
	}

	if diff := cmp.Diff([]string{other.AgentID, second.AgentID}, ids); diff != "" {
		t.Errorf("agents (-want +got):\n%s", diff)
	}
	newer, older := e.agent(t, second.AgentID), first.AgentID
	if got := e.ingress.owner("web.localhost"); got != newer.TunnelID {
		t.Errorf("web.localhost routes to tunnel %q, want the new agent's %q", got,
			newer.TunnelID)
	}

	v := e.ingress.List(context.Background(), ingress.ListOptions{})
	for _, tun := range v.Tunnels {
		if tun.Name == older {
			t.Errorf("the replaced agent's tunnel %s was not deleted", tun.ID)
		}
	}

	if _, err := e.store.AuthenticateAgent(context.Background(), first.AgentID,
		first.AgentToken); err == nil {
		t.Error("the replaced agent's token still authenticates")
	}
}

func TestAPIAgentsAuth(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.Appraiser, o.AcceptUnverified = nil, true })
	e.register(t, "web")
	e.register(t, "alpha")

	tests := []struct {
		name   string
		header map[string]string
		remote string
		status int
	}{
		{"no token", nil, "", 401},
		{"no token from loopback", nil, "127.0.0.1:40000", 401},
		{"wrong token", map[string]string{"Authorization": "Bearer x" + testAdminToken}, "", 401},
		{"basic auth", map[string]string{"Authorization": "Basic " + testAdminToken}, "", 401},
		{"right token", admin(), "", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httpRequest("GET", "/api/agents", tc.header)
			if tc.remote != "" {
				r.RemoteAddr = tc.remote
			}

			rec := serve(e, r)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d", rec.Code, tc.status)
			}
			if tc.status != 200 {
				decodeError(t, rec)
				return
			}

			var agents []cpapi.Agent
			if err := json.Unmarshal(rec.Body.Bytes(), &agents); err != nil {
				t.Fatal(err)
			}
			if len(agents) != 2 || agents[0].VMName != "alpha" || agents[1].VMName != "web" {
				t.Fatalf("agents not sorted by vm_name: %+v", agents)
			}

			a := agents[0]
			if a.Status != "registering" || a.Attestation.Verified ||
				a.Attestation.Status != "unverified" || a.RegisteredAt != "2026-03-01T12:00:00Z" ||
				a.Units == nil {
				t.Errorf("agent %+v", a)
			}
			if strings.Contains(rec.Body.String(), "token") {
				t.Error("listing mentions a token")
			}
		})
	}
}

func TestRestartKeepsAgents(t *testing.T) {
	e := newTestEnv(t, nil)
	resp := e.register(t, "web")
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := newTestEnvAt(t, e.dbPath, nil)
	rec := e2.do("GET", "/api/agents", "", admin())
	var agents []cpapi.Agent
	if err := json.Unmarshal(rec.Body.Bytes(), &agents); err != nil {
		t.Fatal(err)
	}
	if len(agents) != 1 || agents[0].AgentID != resp.AgentID {
		t.Errorf("after restart: %+v", agents)
	}
	if _, err := e2.store.AuthenticateAgent(context.Background(), resp.AgentID,
		resp.AgentToken); err != nil {
		t.Errorf("token lost across restart: %v", err)
	}
}

func TestRouteErrorsAreJSON(t *testing.T) {
	e := newTestEnv(t, nil)
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/nope", 404, ""},
		{"GET", "/api/agents/extra", 404, ""},
		{"DELETE", "/health", 405, "GET, HEAD"},
		{"GET", "/register", 405, "POST"},
	}
	for _, tc := range tests {
		rec := e.do(tc.method, tc.path, "", nil)
		if rec.Code != tc.status {
			t.Errorf("%s %s = %d, want %d", tc.method, tc.path, rec.Code, tc.status)
		}

		decodeError(t, rec)
		if got := rec.Header().Get("Allow"); got != tc.allow {
			t.Errorf("%s %s Allow %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}

	if rec := e.do("GET", "/agent/nope", "", admin()); rec.Code != 404 {
		t.Errorf("unknown agent page = %d, want 404", rec.Code)
	}
}

func TestPagesRequireAdmin(t *testing.T) {
	e := newTestEnv(t, nil)
	resp := e.register(t, "web")
	browser := map[string]string{"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
	wrongBearer := map[string]string{"Authorization": "Bearer nope", "Accept": "text/html"}
	for _, path := range []string{"/", "/agent/" + resp.AgentID} {
		// Without GitHub sign-in configured there is nowhere to send a
		// browser: it gets the 401 too.
		if rec := e.do("GET", path, "", browser); rec.Code != http.StatusUnauthorized {
			t.Errorf("browser GET %s = %d, want 401", path, rec.Code)
		}
		if rec := e.do("GET", path, "", nil); rec.Code != 401 {
			t.Errorf("API client GET %s = %d, want 401", path, rec.Code)
		}
		if rec := e.do("GET", path, "", wrongBearer); rec.Code != 401 {
			t.Errorf("wrong bearer GET %s = %d, want 401", path, rec.Code)
		}

		rec := e.do("GET", path, "", admin())
		if rec.Code != 200 {
			t.Fatalf("admin GET %s = %d", path, rec.Code)
		}
		if rec.Header().Get("Content-Security-Policy") != dashboard.CSP {
			t.Errorf("GET %s lacks the CSP header", path)
		}
	}
}

func TestFleetPageShowsUnverified(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.Appraiser, o.AcceptUnverified = nil, true })
	e.register(t, "web")
	rec := e.do("GET", "/", "", admin())
	body := rec.Body.String()
	for _, want := range []string{"web", ">unverified<", "registering", `http-equiv="refresh"`} {
		if !strings.Contains(body, want) {
			t.Errorf("fleet page lacks %q:\n%s", want, body)
		}
	}

	if strings.Contains(body, ">verified<") {
		t.Error("fleet page claims an agent is verified")
	}
}

func TestLogsCarryNoSecrets(t *testing.T) {
	e := newTestEnv(t, nil)
	resp := e.register(t, "web")
	e.do("GET", "/api/agents", "", admin())
	e.do("GET", "/", "", admin())
	logs := e.logs.String()
	if !strings.Contains(logs, "http request") || !strings.Contains(logs, "request_id=") {
		t.Errorf("no access log with request ids:\n%s", logs)
	}

	for _, secret := range []string{testAdminToken, resp.AgentToken} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain a secret:\n%s", logs)
		}
	}
}

func TestRequestIDHeader(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.do("GET", "/health", "", nil).Header().Get("X-Request-Id")
	b := e.do("GET", "/health", "", nil).Header().Get("X-Request-Id")
	if len(a) != 16 || a == b {
		t.Errorf("request ids %q, %q", a, b)
	}
}

func TestStylesheetIsPublic(t *testing.T) {
	e := newTestEnv(t, nil)
	if rec := e.do("GET", dashboard.AssetPrefix+"dashboard.css", "", nil); rec.Code != 200 {
		t.Errorf("stylesheet = %d", rec.Code)
	}
}
