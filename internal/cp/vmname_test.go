package cp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

var alice = &ghoidc.Principal{Kind: ghoidc.KindUser, Name: "alice", ID: 42}

// registerAs registers vm with ag's keys and returns the reply.
func (e *testEnv) registerAs(t *testing.T, ag *testAgent, vm string) *httptest.ResponseRecorder {
	t.Helper()
	body, h := ag.registration(t, e, vm)
	return e.do("POST", "/register", body, h)
}

// registered decodes a successful registration reply.
func registered(t *testing.T, rec *httptest.ResponseRecorder) cpapi.RegisterResponse {
	t.Helper()
	var resp cpapi.RegisterResponse
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &resp) != nil {
		t.Fatalf("register: %d %s", rec.Code, rec.Body)
	}
	return resp
}

// setTenant gives the agent to tenant through the admin API.
func (e *testEnv) setTenant(t *testing.T, id string, tenant *ghoidc.Principal) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"tenant": apiPrincipal(tenant)})
	if rec := e.do("POST", "/api/agents/"+id+"/tenant", string(body), admin()); rec.Code != 200 {
		t.Fatalf("setting tenant: %d %s", rec.Code, rec.Body)
	}
}

// answerAs makes web.localhost answer /health as the agent id with ag's
// signing key, as a live agent does.
func (e *testEnv) answerAs(t *testing.T, id string, ag *testAgent) *fakeAgent {
	t.Helper()
	fa, srv := newFakeAgent(t)
	fa.set(http.StatusOK, func(h *agentapi.Health) {
		h.AgentID = id
		h.SigningKey = base64.StdEncoding.EncodeToString(ag.keys.Signing)
	})
	e.ingress.setURL("web.localhost", srv.URL)
	return fa
}

// lastRegistration returns the newest registration audit entry and its
// details.
func lastRegistration(t *testing.T, e *testEnv) (audit.Entry, map[string]any) {
	t.Helper()
	entries := auditEntries(t, e.store, audit.ActionRegistration)
	if len(entries) == 0 {
		t.Fatal("no registration audit entries")
	}

	var details map[string]any
	if err := json.Unmarshal(entries[0].Details, &details); err != nil {
		t.Fatal(err)
	}
	return entries[0], details
}

// TestReRegistrationSameKeyKeepsTenant: an agent that restarts with its
// key file registers again and stays with its tenant, whether or not its
// old process still answers.
func TestReRegistrationSameKeyKeepsTenant(t *testing.T) {
	for name, alive := range map[string]bool{"old process gone": false, "old process alive": true} {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			ag := newTestAgent(t)
			first := registered(t, e.registerAs(t, ag, "web"))
			e.setTenant(t, first.AgentID, alice)
			if alive {
				e.answerAs(t, first.AgentID, ag)
			}

			second := registered(t, e.registerAs(t, ag, "web"))
			got := e.agent(t, second.AgentID)
			if diff := cmp.Diff(alice, got.Tenant); diff != "" {
				t.Errorf("tenant after re-registration (-want +got):\n%s", diff)
			}
			if _, err := e.store.Get(context.Background(), first.AgentID); err == nil {
				t.Errorf("the old record %s was kept", first.AgentID)
			}
			if _, details := lastRegistration(t, e); details["tenant_dropped"] != nil {
				t.Errorf("audit says the tenant was dropped: %v", details)
			}
		})
	}
}

// TestReRegistrationOtherKeyHolderAlive: a TD with other keys cannot take
// the name of an agent that still answers as itself; nothing changes.
func TestReRegistrationOtherKeyHolderAlive(t *testing.T) {
	// Seen lately: refused without asking, even while a probe would fail.
	t.Run("seen lately", func(t *testing.T) {
		testHolderKeepsName(t, func(e *testEnv, id string, victim *testAgent) *fakeAgent {
			e.clock.Advance(10 * time.Second)
			fa := e.answerAs(t, id, victim)
			fa.set(http.StatusServiceUnavailable, nil)
			return fa
		}, false)
	})
	// Not seen for a while, but it answers as itself.
	t.Run("answers", func(t *testing.T) {
		testHolderKeepsName(t, func(e *testEnv, id string, victim *testAgent) *fakeAgent {
			e.clock.Advance(time.Minute)
			return e.answerAs(t, id, victim)
		}, true)
	})
}

// testHolderKeepsName registers "web", sets up its holder with holder,
// and checks that a registration with other keys is refused and changes
// nothing; probed says whether the holder must have been asked.
func testHolderKeepsName(t *testing.T,
	holder func(e *testEnv, id string, victim *testAgent) *fakeAgent, probed bool) {
	e := newTestEnv(t, nil)
	victim := newTestAgent(t)
	held := registered(t, e.registerAs(t, victim, "web"))
	e.setTenant(t, held.AgentID, alice)
	fa := holder(e, held.AgentID, victim)
	before := e.agent(t, held.AgentID)
	owner := e.ingress.owner("web.localhost")
	agents := len(e.ingress.List(context.Background(), ingress.ListOptions{}).Tunnels)

	rec := e.registerAs(t, newTestAgent(t), "web")
	if rec.Code != http.StatusConflict {
		t.Fatalf("takeover of a live agent's name = %d %s, want 409", rec.Code, rec.Body)
	}
	if b := decodeError(t, rec); b.Code != "CONFLICT" {
		t.Errorf("error code %q, want CONFLICT", b.Code)
	}
	if got := fa.scrapes.Load() > 0; got != probed {
		t.Errorf("the holder was probed: %v, want %v", got, probed)
	}
	if diff := cmp.Diff(before, e.agent(t, held.AgentID)); diff != "" {
		t.Errorf("holder's record changed (-before +after):\n%s", diff)
	}

	if got := e.ingress.owner("web.localhost"); got != owner || got != before.TunnelID {
		t.Errorf("web.localhost routes to %q, want the holder's tunnel %q", got, owner)
	}
	if n := len(e.ingress.List(context.Background(), ingress.ListOptions{}).Tunnels); n != agents {
		t.Errorf("%d tunnels after the refusal, want %d", n, agents)
	}

	entry, details := lastRegistration(t, e)
	if entry.Outcome != audit.OutcomeDenied || details["holder"] != held.AgentID ||
		details["vm_name"] != "web" {
		t.Errorf("audit = %s %v, want a denial naming the holder", entry.Outcome, details)
	}
}

// TestReRegistrationOtherKeyHolderGone: when the holder does not answer
// as itself, a registration with other keys takes the name but not the
// tenant, and the audit trail says which tenant was dropped.
// (Security review: TestReviewVMNameTakeoverInheritsTenant.)
func TestReRegistrationOtherKeyHolderGone(t *testing.T) {
	tests := map[string]func(t *testing.T, e *testEnv, id string, victim *testAgent){
		"unreachable": func(t *testing.T, e *testEnv, id string, victim *testAgent) {
			srv := httptest.NewServer(http.NotFoundHandler())
			srv.Close() // a port nobody listens on
			e.ingress.setURL("web.localhost", srv.URL)
		},
		"failing": func(t *testing.T, e *testEnv, id string, victim *testAgent) {
			e.answerAs(t, id, victim).set(http.StatusServiceUnavailable, nil)
		},
		"restarted with other keys": func(t *testing.T, e *testEnv, id string, victim *testAgent) {
			e.answerAs(t, "", newTestAgent(t))
		},
		"another agent's health": func(t *testing.T, e *testEnv, id string, victim *testAgent) {
			e.answerAs(t, "dd-dev-agent-00000000000000ff", victim)
		},
	}
	for name, gone := range tests {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			victim := newTestAgent(t)
			held := registered(t, e.registerAs(t, victim, "web"))
			e.setTenant(t, held.AgentID, alice)
			gone(t, e, held.AgentID, victim)
			e.clock.Advance(time.Minute) // longer than StaleAfter

			taker := registered(t, e.registerAs(t, newTestAgent(t), "web"))
			got := e.agent(t, taker.AgentID)
			if got.Tenant != nil {
				t.Errorf("the new registration inherited tenant %v", got.Tenant)
			}
			if _, err := e.store.Get(context.Background(), held.AgentID); err == nil {
				t.Errorf("the old record %s was kept", held.AgentID)
			}
			if owner := e.ingress.owner("web.localhost"); owner != got.TunnelID {
				t.Errorf("web.localhost routes to %q, want the new tunnel %q", owner,
					got.TunnelID)
			}

			entry, details := lastRegistration(t, e)
			want := map[string]any{"tenant_dropped": alice.String(),
				"replaced": []any{held.AgentID}}
			gotDetails := map[string]any{"tenant_dropped": details["tenant_dropped"],
				"replaced": details["replaced"]}
			if entry.Outcome != audit.OutcomeOK || !cmp.Equal(want, gotDetails) {
				t.Errorf("audit = %s %v, want ok with %v", entry.Outcome, details, want)
			}
			if !strings.Contains(e.logs.String(), "tenant dropped") {
				t.Error("dropping the tenant was not logged")
			}
		})
	}
}

// TestConfirmHolderSeesRace: a name that changed hands between the
// decision and the write is refused, so the agent retries on fresh facts.
func TestConfirmHolderSeesRace(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	ag := newTestAgent(t)
	holder, err := e.srv.nameHolder(ctx, "web", ag.keys)
	if err != nil || holder != nil {
		t.Fatalf("nameHolder of a free name = %v, %v", holder, err)
	}

	registered(t, e.registerAs(t, newTestAgent(t), "web"))
	var he *httpapi.Error
	if _, err := e.srv.confirmHolder(ctx, "web", holder); !errors.As(err, &he) ||
		he.Status != http.StatusConflict {
		t.Errorf("confirmHolder after a concurrent registration = %v, want a 409", err)
	}

	now, err := e.store.ByVMName(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if cur, err := e.srv.confirmHolder(ctx, "web", &now); err != nil || cur.ID != now.ID {
		t.Errorf("confirmHolder of the current holder = %v, %v; want %s", cur, err, now.ID)
	}
	if cur, err := e.srv.confirmHolder(ctx, "db", nil); err != nil || cur != nil {
		t.Errorf("confirmHolder of a free name = %v, %v; want none", cur, err)
	}
}
