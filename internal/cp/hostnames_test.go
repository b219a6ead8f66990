package cp

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// tryRegister registers vm with fresh keys and returns the raw answer.
func (e *testEnv) tryRegister(t *testing.T, vm string) *httptest.ResponseRecorder {
	t.Helper()
	body, h := newTestAgent(t).registration(t, e, vm)
	return e.do("POST", "/register", body, h)
}

// claim posts an agent's full list of claims as JSON.
func (e *testEnv) claim(t *testing.T, reg cpapi.RegisterResponse,
	claims ...ingress.Claim) *httptest.ResponseRecorder {
	t.Helper()
	if claims == nil {
		claims = []ingress.Claim{}
	}

	body, _ := json.Marshal(cpapi.IngressRequest{Claims: claims})
	return e.do("POST", "/agents/"+reg.AgentID+"/ingress", string(body),
		bearer(reg.AgentToken))
}

// deniedAudits counts the denied audit entries of action.
func (e *testEnv) deniedAudits(t *testing.T, action string) int {
	t.Helper()
	rec := e.do("GET", "/api/audit?action="+action, "", admin())
	var page struct {
		Entries []struct {
			Outcome string `json:"outcome"`
		} `json:"entries"`
	}
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &page) != nil {
		t.Fatalf("/api/audit = %d %s", rec.Code, rec.Body)
	}

	n := 0
	for _, en := range page.Entries {
		if en.Outcome == "denied" {
			n++
		}
	}

	return n
}

func wantConflict(t *testing.T, what string, rec *httptest.ResponseRecorder) {
	t.Helper()
	if rec.Code != http.StatusConflict {
		t.Fatalf("%s: status %d, want 409: %s", what, rec.Code, rec.Body)
	}
	if b := decodeError(t, rec); b.Code != httpapi.CodeConflict {
		t.Errorf("%s: code %q, want %q", what, b.Code, httpapi.CodeConflict)
	}
}

// Every hostname has one owner in the control plane: flattened names
// ("web" + "shop" and "web-shop", "web" + API and "web-agent-api") must
// not let one agent, or a new registration, take another's hostname or
// the control plane's own. Each case leaves every record where it was.
func TestHostnameOwnership(t *testing.T) {
	tests := []struct {
		name     string
		cpHost   string   // the control plane's hostname; "" for app.localhost
		agents   []string // registered first; "vm:label" also claims label
		claim    string   // a label the last agent claims, or
		register string   // a vm_name registered
		audited  string   // the audit action of the denied entry; "" for none
	}{
		{name: "claim takes another agent's dashboard", agents: []string{"web-shop", "web"},
			claim: "shop", audited: string(ActionIngressReplaced)},
		{name: "claim takes another agent's API hostname", // x-agent-1's is x-api-1
			agents: []string{"x-agent-1", "x-api"}, claim: "1",
			audited: string(ActionIngressReplaced)},
		{name: "claim takes the control plane's dashboard", cpHost: "pr-7.localhost",
			agents: []string{"pr"}, claim: "7", audited: string(ActionIngressReplaced)},
		{name: "registration takes another agent's API hostname", agents: []string{"web"},
			register: "web-agent-api", audited: "registration"},
		{name: "registration takes another agent's claim", agents: []string{"web:shop"},
			register: "web-shop", audited: "registration"},
		{name: "registration whose API hostname is another agent's dashboard",
			agents: []string{"db-agent-api"}, register: "db", audited: "registration"},
		{name: "registration takes the control plane's shell", register: "app-shell"},
		{name: "registration takes the control plane's dashboard", register: "app"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, func(o *Options) {
				if tt.cpHost != "" {
					o.Hostname = tt.cpHost
				}
			})
			var last cpapi.RegisterResponse
			for _, a := range tt.agents {
				vm, label, _ := strings.Cut(a, ":")
				last = e.register(t, vm)
				if label == "" {
					continue
				}

				c := ingress.Claim{App: label, Label: label, Port: 9000}
				if rec := e.claim(t, last, c); rec.Code != http.StatusOK {
					t.Fatalf("claim %s: %d %s", a, rec.Code, rec.Body)
				}
			}

			before := e.ingress.Hostnames()
			agents, err := e.store.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if tt.claim != "" {
				wantConflict(t, "claim", e.claim(t, last,
					ingress.Claim{App: "x", Label: tt.claim, Port: 9000}))
			} else {
				wantConflict(t, "register", e.tryRegister(t, tt.register))
			}
			if diff := cmp.Diff(before, e.ingress.Hostnames()); diff != "" {
				t.Errorf("records changed (-before +after):\n%s", diff)
			}

			after, err := e.store.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(agents, after); diff != "" {
				t.Errorf("registry changed (-before +after):\n%s", diff)
			}
			if tt.audited != "" && e.deniedAudits(t, tt.audited) != 1 {
				t.Errorf("no denied %s entry in the audit log", tt.audited)
			}
		})
	}
}

// The attacker's claim is refused, and dropping its claims later leaves
// the victim's hostname alone.
func TestClaimRefusalKeepsVictimRecord(t *testing.T) {
	e := newTestEnv(t, nil)
	victim := e.register(t, "web-shop")
	attacker := e.register(t, "web")
	vt := e.agent(t, victim.AgentID).TunnelID
	wantConflict(t, "claim", e.claim(t, attacker, ingress.Claim{App: "x", Label: "shop",
		Port: 9000}))
	if rec := e.claim(t, attacker); rec.Code != http.StatusOK {
		t.Fatalf("dropping claims: %d %s", rec.Code, rec.Body)
	}
	if got := e.ingress.owner("web-shop.localhost"); got != vt {
		t.Errorf("web-shop.localhost routes to %q, want the victim's %q", got, vt)
	}
}

// What an agent already holds, and what a re-registration of its
// vm_name inherits, stays usable.
func TestHostnameOwnershipAllowsOwnNames(t *testing.T) {
	e := newTestEnv(t, nil)
	shop := ingress.Claim{App: "x", Label: "shop", Port: 9000}
	web := e.register(t, "web")
	e.register(t, "db")

	for range 2 { // the same claim again is no conflict with itself
		if rec := e.claim(t, web, shop); rec.Code != http.StatusOK {
			t.Fatalf("claim: %d %s", rec.Code, rec.Body)
		}
	}

	e.clock.Advance(time.Minute)  // the first "web" is gone: unseen, unreachable
	again := e.register(t, "web") // takes web.localhost from the first registration
	tunnel := e.agent(t, again.AgentID).TunnelID
	for _, h := range []string{"web.localhost", "web-agent-api.localhost"} {
		if got := e.ingress.owner(h); got != tunnel {
			t.Errorf("%s routes to %q, want the new registration's %q", h, got, tunnel)
		}
	}

	if rec := e.claim(t, again, shop); rec.Code != http.StatusOK {
		t.Fatalf("claim after re-registration: %d %s", rec.Code, rec.Body)
	}
	if got := e.ingress.owner("web-shop.localhost"); got != tunnel {
		t.Errorf("web-shop.localhost routes to %q, want %q", got, tunnel)
	}
}

// A preview control plane sharing the zone with production refuses an
// agent named after production's control plane: the record belongs to a
// tunnel of another environment, which the provider does not move.
func TestPreviewAgentCannotTakeProductionHostname(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.Env, o.Hostname = "pr-7", "pr-7.localhost" })
	prod, err := e.ingress.CreateTunnel(context.Background(), "dd-production-cp-00aa",
		ingress.ControlPlaneIngress("app.localhost"))
	if err != nil {
		t.Fatal(err)
	}

	before := maps.Clone(e.ingress.Hostnames())
	wantConflict(t, "register app", e.tryRegister(t, "app"))
	if got := e.ingress.owner("app.localhost"); got != prod.ID {
		t.Errorf("app.localhost routes to %q, want production's %q", got, prod.ID)
	}
	if diff := cmp.Diff(before, e.ingress.Hostnames()); diff != "" {
		t.Errorf("records changed (-before +after):\n%s", diff)
	}

	agents, err := e.store.List(context.Background())
	if err != nil || len(agents) != 0 {
		t.Errorf("registry holds %d agents (%v), want none", len(agents), err)
	}

	for _, tun := range e.ingress.List(context.Background(), ingress.ListOptions{}).Tunnels {
		if tun.ID != prod.ID {
			t.Errorf("tunnel %s (%s) was left behind", tun.ID, tun.Name)
		}
	}

	if e.deniedAudits(t, "registration") != 1 {
		t.Error("no denied registration entry in the audit log")
	}
}

// TestPossibleHolders: every hostname an agent holds lists the agent's VM
// among its possible holders, which is what lets checkHostnames read the
// registry by name instead of scanning it.
func TestPossibleHolders(t *testing.T) {
	claims := []ingress.Claim{{App: "a", Label: "shop", Port: 8000},
		{App: "b", Label: "x-api-y", Port: 8001}}
	for _, vm := range []string{"web", "web-shop", "dd-pr-7-agent-0a1b", "a-api-b-agent-c",
		"agent", "x"} {
		for _, h := range agentHostnames(vm+".example.com", claims) {
			if !slices.Contains(possibleHolders(h), vm) {
				t.Errorf("possibleHolders(%q) = %q, want it to include %q", h,
					possibleHolders(h), vm)
			}
		}
	}

	if got, want := possibleHolders("a-b.example.com"), []string{"a", "a-b"}; !slices.Equal(got,
		want) {
		t.Errorf("possibleHolders(a-b.example.com) = %q, want %q", got, want)
	}
}

// TestDeadAgentReleasesHostnames: a dead agent's record stays, but its
// names no longer block another agent.
func TestDeadAgentReleasesHostnames(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	web := e.register(t, "web")
	shop := ingress.Claim{App: "x", Label: "shop", Port: 9000}
	if rec := e.claim(t, web, shop); rec.Code != http.StatusOK {
		t.Fatalf("claim: %d %s", rec.Code, rec.Body)
	}
	wantConflict(t, "register web-shop while web lives", e.tryRegister(t, "web-shop"))

	// web dies: its claim's hostname goes to the next agent that asks,
	// and leaves web's record.
	if err := e.store.SetStatus(ctx, web.AgentID, fleet.StatusDead, "no answer"); err != nil {
		t.Fatal(err)
	}
	ag := newTestAgent(t)
	registered(t, e.registerAs(t, ag, "web-shop"))
	if got := e.agent(t, web.AgentID).Claims; len(got) != 0 {
		t.Errorf("the dead agent still holds claims %v", got)
	}

	// web comes back: it does not get the hostname back, and web-shop,
	// restarted with its keys, keeps it.
	if err := e.store.UpdateHealth(ctx, web.AgentID, e.clock.Now(), nil); err != nil {
		t.Fatal(err)
	}
	wantConflict(t, "web claims shop again", e.claim(t, web, shop))
	again := registered(t, e.registerAs(t, ag, "web-shop"))
	if owner := e.ingress.owner("web-shop.localhost"); owner != e.agent(t,
		again.AgentID).TunnelID {
		t.Errorf("web-shop.localhost routes to %q, want web-shop's tunnel", owner)
	}

	// A dead agent's own names stay its own: they come from its VM name.
	if err := e.store.SetStatus(ctx, again.AgentID, fleet.StatusDead, "no answer"); err != nil {
		t.Fatal(err)
	}
	wantConflict(t, "claim a dead agent's dashboard hostname",
		e.claim(t, web, ingress.Claim{App: "y", Label: "shop", Port: 9001}))
}
