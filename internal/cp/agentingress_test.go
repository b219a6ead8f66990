package cp

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress/reap"
)

func bearer(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token,
		"Content-Type": "application/json"}
}

func TestAgentIngressClaims(t *testing.T) {
	e := newTestEnv(t, nil)
	reg := e.register(t, "web")
	path := "/agents/" + reg.AgentID + "/ingress"
	tunnelID := e.agent(t, reg.AgentID).TunnelID

	rec := e.do("POST", path, `{"claims":[{"app":"oracle-readonly","hostname_label":"oracle",`+
		`"port":8082},{"app":"shop","hostname_label":"www","port":9000}]}`, bearer(reg.AgentToken))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}

	var resp cpapi.IngressResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}

	wantHosts := []string{"web.localhost", "web-oracle.localhost", "web-www.localhost",
		"web-agent-api.localhost"}
	if diff := cmp.Diff(wantHosts, resp.Hostnames); diff != "" {
		t.Errorf("hostnames (-want +got):\n%s", diff)
	}
	if len(resp.Exposed) != 2 || resp.Exposed[0].URL != "http://web-oracle.localhost" ||
		!resp.Exposed[0].Published {
		t.Errorf("exposed = %+v", resp.Exposed)
	}

	for _, h := range wantHosts {
		if got := e.ingress.owner(h); got != tunnelID {
			t.Errorf("%s routes to tunnel %q, want the agent's %q", h, got, tunnelID)
		}
	}

	records := e.ingress.Hostnames()
	claims := e.agent(t, reg.AgentID).Claims

	// Refused claims change nothing.
	bad := map[string]string{
		"reserved label":  `{"claims":[{"app":"a","hostname_label":"api","port":1}]}`,
		"agent API label": `{"claims":[{"app":"a","hostname_label":"agent-api","port":1}]}`,
		"invalid label":   `{"claims":[{"app":"a","hostname_label":"Bad_Label","port":1}]}`,
		"port 0":          `{"claims":[{"app":"a","hostname_label":"ok","port":0}]}`,
		"port too big":    `{"claims":[{"app":"a","hostname_label":"ok","port":70000}]}`,
		"duplicate label": `{"claims":[{"app":"a","hostname_label":"x","port":1},` +
			`{"app":"b","hostname_label":"x","port":2}]}`,
		"unknown field": `{"claims":[],"extra":1}`,
	}
	for name, body := range bad {
		rec := e.do("POST", path, body, bearer(reg.AgentToken))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", name, rec.Code)
		}

		decodeError(t, rec)
		if diff := cmp.Diff(records, e.ingress.Hostnames()); diff != "" {
			t.Errorf("%s changed the records:\n%s", name, diff)
		}
		if diff := cmp.Diff(claims, e.agent(t, reg.AgentID).Claims); diff != "" {
			t.Errorf("%s changed the stored claims:\n%s", name, diff)
		}
	}

	// Dropping every claim removes the workloads' records only.
	if rec := e.do("POST", path, `{"claims":[]}`, bearer(reg.AgentToken)); rec.Code != 200 {
		t.Fatalf("clearing claims: %d %s", rec.Code, rec.Body)
	}
	want := map[string]string{"web.localhost": tunnelID, "web-agent-api.localhost": tunnelID}
	if diff := cmp.Diff(want, e.ingress.Hostnames()); diff != "" {
		t.Errorf("records after clearing (-want +got):\n%s", diff)
	}
	if n := len(auditEntries(t, e.store, ActionIngressReplaced)); n != 2 {
		t.Errorf("%d ingress audit entries, want 2", n)
	}
}

// TestAgentIngressOnlyOwnTunnel: an agent's credential reaches only its
// own route, so it can change only its own tunnel.
func TestAgentIngressOnlyOwnTunnel(t *testing.T) {
	e := newTestEnv(t, nil)
	a, b := e.register(t, "alpha"), e.register(t, "beta")
	body := `{"claims":[{"app":"x","hostname_label":"x","port":1}]}`
	rec := e.do("POST", "/agents/"+b.AgentID+"/ingress", body, bearer(a.AgentToken))
	if rec.Code != 401 {
		t.Errorf("agent A on agent B's ingress = %d, want 401", rec.Code)
	}
	if _, ok := e.ingress.Hostnames()["beta-x.localhost"]; ok {
		t.Error("agent A published a hostname of agent B")
	}
}

func TestCloudflareViews(t *testing.T) {
	e := newTestEnv(t, nil)
	reg := e.register(t, "web")
	tunnelID := e.agent(t, reg.AgentID).TunnelID

	var snap reap.Snapshot
	getAdminJSON(t, e, "/admin/cf/snapshot", &snap)
	if snap.Degraded || len(snap.CPState.Agents) != 1 ||
		snap.CPState.Agents[0].TunnelID != tunnelID || len(snap.CFState.Tunnels) != 1 {
		t.Errorf("snapshot = %+v", snap)
	}
	if n := len(snap.Drift.OrphanTunnels) + len(snap.Drift.OrphanDNS) +
		len(snap.Drift.MissingTunnels); n != 0 {
		t.Errorf("drift = %+v, want none", snap.Drift)
	}

	e.ingress.FailList("tunnels", errors.New("injected"))
	getAdminJSON(t, e, "/admin/cf/snapshot", &snap)
	if !snap.Degraded || len(snap.Drift.MissingTunnels) != 0 {
		t.Errorf("degraded snapshot = %+v, want degraded without drift", snap)
	}

	e.ingress.FailList("tunnels", nil)

	var m reap.Map
	getAdminJSON(t, e, "/admin/cf/map", &m)
	if m.Degraded || m.ServingEnv != "dev" || len(m.Installations) != 1 ||
		m.Installations[0].KnownAgents != 1 {
		t.Errorf("map = %+v", m)
	}
}

func getAdminJSON(t *testing.T, e *testEnv, path string, v any) {
	t.Helper()
	rec := e.do("GET", path, "", admin())
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatal(err)
	}
}
