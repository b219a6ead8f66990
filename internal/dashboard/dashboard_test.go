package dashboard

import (
	"bytes"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func intp(v int) *int { return &v }

func sampleAgents() []Agent {
	return []Agent{
		{
			ID: "dd-dev-agent-0a1b2c3d", VMName: "web", Hostname: "web.localhost",
			URL: "http://web.localhost:8443", Origin: "http://127.0.0.1:9101",
			Status: "healthy", RegisteredAt: now.Add(-2 * time.Hour),
			LastSeen:    now.Add(-3 * time.Second),
			Attestation: Attestation{Type: "simulated", Status: "unverified"},
			Units: []agentapi.Unit{
				{ID: "u1", AppName: "hello", Kind: "workload", Status: "running",
					StartedAt: "2026-03-01T10:00:00Z"},
				{ID: "u2", AppName: "migrate", Kind: "workload", Status: "exited",
					ExitCode: intp(1), ErrorMessage: "exit status 1"},
			},
		},
		{
			ID: "dd-dev-agent-ffff0000", VMName: "worker", Hostname: "worker.localhost",
			URL: "http://worker.localhost:8443", Origin: "http://127.0.0.1:9102",
			Status: "stale", RegisteredAt: now.Add(-10 * time.Minute),
			LastError:   "GET /health: connection refused",
			Attestation: Attestation{Type: "none", Status: "unverified"},
		},
		{
			ID: "dd-dev-agent-12345678", VMName: "zeta", Hostname: "zeta.localhost",
			URL: "http://zeta.localhost:8443", Origin: "http://127.0.0.1:9103",
			Status: "healthy", RegisteredAt: now.Add(-48 * time.Hour), LastSeen: now,
			Attestation: Attestation{Type: "simulated", Verified: true, Status: "unattested",
				MRTD: "ab12", RTMR: []string{"00", "01", "02", "03"}, TCBStatus: "UpToDate",
				VerifiedAt: now.Add(-47 * time.Hour)},
		},
	}
}

func TestGolden(t *testing.T) {
	agents := sampleAgents()
	verified := agents[0]
	verified.Attestation = Attestation{Type: "tdx", Verified: true, Status: "verified",
		MRTD: "ab12", TCBStatus: "UpToDate", VerifiedAt: now.Add(-time.Minute)}

	tests := []struct {
		name   string
		render func(io.Writer) error
	}{
		{"fleet", func(w io.Writer) error {
			return RenderFleet(w, FleetPage{Env: "dev", Hostname: "app.localhost", Now: now,
				RefreshSecs: 5, Agents: agents})
		}},
		{"fleet_ingress", func(w io.Writer) error {
			return RenderFleet(w, FleetPage{Env: "dev", Hostname: "app.localhost", Now: now,
				Ingress: &Ingress{TunnelID: "5f0c2a9e-1b2c-4d3e-8f90-a1b2c3d4e5f6",
					Connector: "running", Restarts: 2, Serving: true}})
		}},
		{"fleet_fenced", func(w io.Writer) error {
			return RenderFleet(w, FleetPage{Env: "dev", Hostname: "app.localhost", Now: now,
				Ingress: &Ingress{TunnelID: "5f0c2a9e-1b2c-4d3e-8f90-a1b2c3d4e5f6",
					Connector: "backoff", Fenced: true,
					FencedReason: "the control plane's tunnel was deleted"}})
		}},
		{"fleet_empty", func(w io.Writer) error {
			return RenderFleet(w, FleetPage{Env: "dev", Hostname: "app.localhost", Now: now})
		}},
		{"agent", func(w io.Writer) error {
			return RenderAgent(w, AgentPage{Env: "dev", Hostname: "app.localhost", Now: now,
				RefreshSecs: 5, Agent: agents[1]})
		}},
		{"agent_exposed", func(w io.Writer) error {
			a := agents[0]
			a.Exposed = []agentapi.Exposed{
				{App: "oracle", Label: "oracle", Port: 8082, Hostname: "web-oracle.localhost",
					URL: "http://web-oracle.localhost:8080", Published: true},
				{App: "api", Label: "rpc", Port: 9000, Hostname: "web-rpc.localhost"}}
			return RenderAgent(w, AgentPage{Env: "dev", Hostname: "app.localhost", Now: now,
				Agent: a})
		}},
		{"agent_admin", func(w io.Writer) error {
			a := agents[0]
			a.Tenant = "user:dev-tenant(2002)"
			return RenderAgent(w, AgentPage{Env: "dev", Hostname: "app.localhost", Now: now,
				Agent: a, CanAssign: true, Error: "name: not a GitHub login"})
		}},
		{"agent_verified", func(w io.Writer) error {
			return RenderAgent(w, AgentPage{Env: "dev", Hostname: "app.localhost", Now: now,
				Agent: verified})
		}},
		{"agent_simulated_unattested", func(w io.Writer) error {
			return RenderAgent(w, AgentPage{Env: "dev", Hostname: "app.localhost", Now: now,
				Agent: agents[2]})
		}},
		{"vm", func(w io.Writer) error {
			return RenderVM(w, VMPage{VMName: "web", Hostname: "web.localhost",
				AgentID: "dd-dev-agent-0a1b2c3d", Registered: true, AttestationType: "simulated",
				Build: "dev", Uptime: 26*time.Hour + 5*time.Minute, RefreshSecs: 5,
				Units: agents[0].Units})
		}},
		{"vm_empty", func(w io.Writer) error {
			return RenderVM(w, VMPage{VMName: "web", Hostname: "web.localhost",
				AttestationType: "none", Build: "dev", Uptime: 42 * time.Second})
		}},
		{"login", func(w io.Writer) error {
			return RenderLogin(w, LoginPage{Env: "dev", Hostname: "app.localhost",
				Error: "That token is not valid."})
		}},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tc.render(&buf); err != nil {
				t.Fatalf("render: %v", err)
			}
			checkGolden(t, tc.name, buf.Bytes())
		})
	}
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}

	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs from golden file (-want +got):\n%s", name, diff)
	}
}

func TestAgentSuppliedFieldsAreEscaped(t *testing.T) {
	const evil = `<script>alert(1)</script>`
	a := Agent{
		ID: `x"><img src=x onerror=alert(1)>`, VMName: evil, Hostname: evil,
		URL: "javascript:alert(1)", Status: evil, LastError: evil,
		Attestation: Attestation{Type: evil, Status: evil},
		Units: []agentapi.Unit{{AppName: evil, Status: evil, Kind: evil,
			ErrorMessage: evil, StartedAt: evil}},
	}

	pages := map[string]func(io.Writer) error{
		"fleet": func(w io.Writer) error {
			return RenderFleet(w, FleetPage{Env: evil, Hostname: evil, Now: now, Agents: []Agent{a}})
		},
		"agent": func(w io.Writer) error {
			return RenderAgent(w, AgentPage{Env: evil, Hostname: evil, Now: now, Agent: a})
		},
		"vm": func(w io.Writer) error {
			return RenderVM(w, VMPage{VMName: evil, Hostname: evil, AgentID: evil,
				AttestationType: evil, Build: evil, Units: a.Units})
		},
		"login": func(w io.Writer) error {
			return RenderLogin(w, LoginPage{Env: evil, Hostname: evil, Error: evil})
		},
	}

	for name, render := range pages {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := render(&buf); err != nil {
				t.Fatal(err)
			}

			out := buf.String()
			for _, bad := range []string{"<script", "<img", `href="javascript:`} {
				if strings.Contains(out, bad) {
					t.Errorf("output contains unescaped %q:\n%s", bad, out)
				}
			}

			if !strings.Contains(out, "&lt;script&gt;") {
				t.Errorf("output lacks the escaped field:\n%s", out)
			}
		})
	}
}

func TestFleetShowsUnverified(t *testing.T) {
	var buf bytes.Buffer
	err := RenderFleet(&buf, FleetPage{Env: "dev", Hostname: "app.localhost", Now: now,
		Agents: sampleAgents()})
	if err != nil {
		t.Fatal(err)
	}

	if n := strings.Count(buf.String(), ">unverified<"); n != 2 {
		t.Errorf("page labels %d agents unverified, want 2", n)
	}
	if strings.Contains(buf.String(), ">verified<") {
		t.Error("page labels an unverified agent as verified")
	}
}

func TestWriteSetsSecurityHeaders(t *testing.T) {
	rec := httptest.NewRecorder()
	err := Write(rec, http.StatusOK, func(w io.Writer) error {
		return RenderLogin(w, LoginPage{Env: "dev", Hostname: "app.localhost"})
	})
	if err != nil {
		t.Fatal(err)
	}

	want := map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"Content-Security-Policy": CSP,
		"X-Content-Type-Options":  "nosniff",
		"X-Frame-Options":         "DENY",
	}

	for k, v := range want {
		if got := rec.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if !strings.Contains(CSP, "default-src 'none'") || strings.Contains(CSP, "unsafe") {
		t.Errorf("CSP %q is not strict", CSP)
	}
}

func TestAssets(t *testing.T) {
	href, err := assetURL("dashboard.css")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		path   string
		status int
	}{
		{href, http.StatusOK},
		{AssetPrefix + "dashboard.css", http.StatusOK},
		{AssetPrefix, http.StatusNotFound},
		{AssetPrefix + "nope.css", http.StatusNotFound},
		{AssetPrefix + "x/dashboard.css", http.StatusNotFound},
	}

	for _, tc := range tests {
		rec := httptest.NewRecorder()
		Assets().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != tc.status {
			t.Errorf("GET %s = %d, want %d", tc.path, rec.Code, tc.status)
		}
		ct := rec.Header().Get("Content-Type")
		if tc.status == http.StatusOK && !strings.HasPrefix(ct, "text/css") {
			t.Errorf("GET %s content type %q", tc.path, ct)
		}
	}
}

func TestRenderFailureWritesNothing(t *testing.T) {
	rec := httptest.NewRecorder()
	err := Write(rec, http.StatusOK, func(w io.Writer) error {
		io.WriteString(w, "<html>partial")
		return io.ErrUnexpectedEOF
	})
	if err == nil || rec.Body.Len() != 0 || rec.Header().Get("Content-Type") != "" {
		t.Errorf("Write after failed render: err %v, body %q", err, rec.Body.String())
	}
}
