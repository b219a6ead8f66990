package cp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
)

func TestRegisterVerifiesEvidence(t *testing.T) {
	e := newTestEnv(t, nil)
	ag := newTestAgent(t)
	body, h := ag.registration(t, e, "web")
	rec := e.do("POST", "/register", body, h)
	if rec.Code != http.StatusOK {
		t.Fatalf("register: %d %s", rec.Code, rec.Body)
	}

	var resp cpapi.RegisterResponse
	json.Unmarshal(rec.Body.Bytes(), &resp)

	a, err := e.store.Get(context.Background(), resp.AgentID)
	if err != nil {
		t.Fatal(err)
	}

	at := a.Attestation
	if !at.Verified || at.Status != "verified" || at.Type != "simulated" ||
		at.MRTD != strings.Repeat("aa", 48) || at.TCBStatus != "UpToDate" ||
		!at.VerifiedAt.Equal(t0) || at.Measurements == nil {
		t.Errorf("attestation = %+v, want verified simulated evidence", at)
	}
	if string(a.SigningKey) != string(ag.keys.Signing) || string(a.NoiseKey) != string(ag.keys.Noise) {
		t.Error("registered keys differ from the agent's")
	}
}

func TestRegisterRefusals(t *testing.T) {
	tests := []struct {
		name   string
		status int
		// build returns the request to send, given a fresh environment.
		build func(t *testing.T, e *testEnv) (string, map[string]string)
	}{
		{"replayed request", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			body, h := newTestAgent(t).registration(t, e, "other")
			if rec := e.do("POST", "/register", body, h); rec.Code != 200 {
				t.Fatalf("first registration: %d %s", rec.Code, rec.Body)
			}
			return body, h
		}},
		{"nonce never issued", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			ag := newTestAgent(t)
			n := base64.StdEncoding.EncodeToString(make([]byte, 32))
			return ag.sign(ag.request("web", n, ag.evidence(t, attestbind.PurposeRegister, n)))
		}},
		{"expired nonce", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			body, h := newTestAgent(t).registration(t, e, "web")
			e.clock.Advance(3 * time.Minute)
			return body, h
		}},
		{"unsigned", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			body, h := newTestAgent(t).registration(t, e, "web")
			delete(h, attestbind.SignatureHeader)
			return body, h
		}},
		{"signed by another key", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			body, h := newTestAgent(t).registration(t, e, "web")
			h[attestbind.SignatureHeader] = attestbind.Sign(newTestAgent(t).priv, []byte(body))
			return body, h
		}},
		{"evidence for another nonce", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			ag := newTestAgent(t)
			n, stale := e.nonce(t), e.nonce(t)
			return ag.sign(ag.request("web", n, ag.evidence(t, attestbind.PurposeRegister, stale)))
		}},
		{"evidence for other keys", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			ag, victim := newTestAgent(t), newTestAgent(t)
			n := e.nonce(t)
			return ag.sign(ag.request("web", n, victim.evidence(t, attestbind.PurposeRegister, n)))
		}},
		{"re-attestation evidence", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			ag := newTestAgent(t)
			n := e.nonce(t)
			return ag.sign(ag.request("web", n, ag.evidence(t, attestbind.PurposeReattest, n)))
		}},
		{"not a quote", 401, func(t *testing.T, e *testEnv) (string, map[string]string) {
			ag := newTestAgent(t)
			n := e.nonce(t)
			ev := ag.evidence(t, attestbind.PurposeRegister, n)
			ev.QuoteB64 = base64.StdEncoding.EncodeToString([]byte("EE-LOCAL-NOT-A-QUOTE-v1"))
			return ag.sign(ag.request("web", n, ev))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			body, h := tt.build(t, e)
			routes, agents := routeCount(e), agentCount(t, e)
			rec := e.do("POST", "/register", body, h)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}

			decodeError(t, rec)
			if routeCount(e) != routes || agentCount(t, e) != agents {
				t.Error("a refused registration changed the fleet")
			}
		})
	}
}

func routeCount(e *testEnv) int { return e.ingress.routes() }

func agentCount(t *testing.T, e *testEnv) int {
	t.Helper()
	list, err := e.store.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

func TestRegisterPolicyRefusal(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.Policy = fakePolicy{want: []byte{1}} })
	body, h := newTestAgent(t).registration(t, e, "web")
	rec := e.do("POST", "/register", body, h)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "mrtd") {
		t.Fatalf("status %d %s, want 403 naming the mrtd", rec.Code, rec.Body)
	}
	assertEmpty(t, e)
}

func TestReattest(t *testing.T) {
	e := newTestEnv(t, nil)
	a, b := newTestAgent(t), newTestAgent(t)
	body, h := a.registration(t, e, "web")
	var ra cpapi.RegisterResponse
	json.Unmarshal(e.do("POST", "/register", body, h).Body.Bytes(), &ra)
	body, h = b.registration(t, e, "db")
	var rb cpapi.RegisterResponse
	json.Unmarshal(e.do("POST", "/register", body, h).Body.Bytes(), &rb)

	attest := func(ag *testAgent, id, token string, purpose string) (int, string) {
		n := e.nonce(t)
		body, h := ag.sign(cpapi.AttestRequest{Nonce: n, Evidence: ag.evidence(t, purpose, n)})
		h["Authorization"] = "Bearer " + token
		rec := e.do("POST", "/agents/"+id+"/attest", body, h)
		return rec.Code, rec.Body.String()
	}

	e.clock.Advance(10 * time.Minute)
	if code, body := attest(a, ra.AgentID, ra.AgentToken, attestbind.PurposeReattest); code != 200 {
		t.Fatalf("re-attestation: %d %s", code, body)
	}

	got, _ := e.store.Get(context.Background(), ra.AgentID)
	if !got.Attestation.VerifiedAt.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("verified_at = %v, want the re-attestation time", got.Attestation.VerifiedAt)
	}

	refusals := []struct {
		name      string
		ag        *testAgent
		id, token string
		purpose   string
	}{
		{"A's token for B", a, rb.AgentID, ra.AgentToken, attestbind.PurposeReattest},
		{"B's evidence with A's token", b, ra.AgentID, ra.AgentToken, attestbind.PurposeReattest},
		{"no token", a, ra.AgentID, "", attestbind.PurposeReattest},
		{"registration evidence", a, ra.AgentID, ra.AgentToken, attestbind.PurposeRegister},
	}
	for _, r := range refusals {
		if code, body := attest(r.ag, r.id, r.token, r.purpose); code != 401 {
			t.Errorf("%s: %d %s, want 401", r.name, code, body)
		}
	}

	untouched, _ := e.store.Get(context.Background(), rb.AgentID)
	if !untouched.Attestation.VerifiedAt.Equal(t0) {
		t.Error("a refused re-attestation changed agent B")
	}
}

func TestEvidenceExpires(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.MaxEvidenceAge = time.Hour })
	id := e.register(t, "web").AgentID
	e.srv.collect(context.Background())
	if a, _ := e.store.Get(context.Background(), id); a.Attestation.Status != "verified" {
		t.Fatalf("status %q right after registration, want verified", a.Attestation.Status)
	}

	e.clock.Advance(time.Hour + time.Second)
	e.srv.collect(context.Background())
	a, _ := e.store.Get(context.Background(), id)
	if a.Attestation.Status != "unattested" {
		t.Errorf("status %q after the maximum age, want unattested", a.Attestation.Status)
	}

	var list []cpapi.Agent
	json.Unmarshal(e.do("GET", "/api/agents", "", admin()).Body.Bytes(), &list)
	if len(list) != 1 || list[0].Attestation.Status != "unattested" {
		t.Errorf("/api/agents = %+v, want unattested", list)
	}
}

func TestAuditRecordsRegistrations(t *testing.T) {
	e := newTestEnv(t, nil)
	id := e.register(t, "web").AgentID
	ag := newTestAgent(t)
	n := e.nonce(t)
	body, h := ag.sign(ag.request("db", n, ag.evidence(t, attestbind.PurposeReattest, n)))
	if rec := e.do("POST", "/register", body, h); rec.Code != 401 {
		t.Fatalf("mismatched evidence: %d", rec.Code)
	}

	if rec := e.do("GET", "/api/audit", "", nil); rec.Code != 401 {
		t.Errorf("/api/audit without credentials = %d, want 401", rec.Code)
	}
	rec := e.do("GET", "/api/audit?action=registration", "", admin())
	var page struct {
		Entries []struct {
			Time  time.Time `json:"time"`
			Actor struct {
				Kind string `json:"kind"`
				Name string `json:"name"`
			} `json:"actor"`
			Target  string         `json:"target"`
			Outcome string         `json:"outcome"`
			Details map[string]any `json:"details"`
		} `json:"entries"`
	}
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &page) != nil || len(page.Entries) != 2 {
		t.Fatalf("/api/audit = %d %s, want two registration entries", rec.Code, rec.Body)
	}

	denied, ok := page.Entries[0], page.Entries[1] // newest first
	if denied.Outcome != "denied" || denied.Details["vm_name"] != "db" ||
		!strings.Contains(denied.Details["reason"].(string), "report data") {
		t.Errorf("denied entry = %+v", denied)
	}
	if ok.Outcome != "ok" || ok.Target != id || ok.Actor.Kind != "agent" || ok.Actor.Name != id ||
		ok.Details["attestation_status"] != "verified" || !ok.Time.Equal(t0) {
		t.Errorf("registration entry = %+v", ok)
	}
	if _, err := e.store.Audit().Verify(context.Background()); err != nil {
		t.Errorf("audit chain: %v", err)
	}
}
