package devfleet

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/examples"
	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cp"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
)

// fixturesDir holds the real workload specs of the original system.
const fixturesDir = "../../testdata/workloads"

// oracleSpec returns the oracle-readonly fixture listening on loopback
// port instead of 0.0.0.0:8082 (test servers listen on loopback only),
// with its expose moved to that port.
func oracleSpec(t *testing.T, port int) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixturesDir, "oracle-readonly.json"))
	if err != nil {
		t.Fatal(err)
	}

	spec := string(data)
	p := strconv.Itoa(port)
	for old, new := range map[string]string{"0.0.0.0:8082": "127.0.0.1:" + p,
		`"port": 8082`: `"port": ` + p} {
		if !strings.Contains(spec, old) {
			t.Fatalf("the fixture no longer contains %q", old)
		}
		spec = strings.ReplaceAll(spec, old, new)
	}

	return []byte(spec)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	return ln.Addr().(*net.TCPAddr).Port
}

// eventually polls cond until it holds, failing after a generous deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within the deadline", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOracleReachableThroughTheEdge deploys the oracle-readonly fixture,
// whose expose claims the label "oracle", and reads its oracle document
// through the edge at the workload's hostname; an invalid label in expose
// is refused and changes nothing.
func TestOracleReachableThroughTheEdge(t *testing.T) {
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox is not installed; the oracle fixture needs it")
	}

	f, _ := startFleet(t)
	st := f.State()
	ctx := context.Background()
	c := &agentapi.Client{BaseURL: st.Agents[0].URL, HTTP: localedge.HTTPClient(),
		Token: mint(t, st, st.Owner.MintRequest())}

	res, err := c.Deploy(ctx, oracleSpec(t, freePort(t)))
	if err != nil {
		t.Fatalf("Deploy: %v", err)
	}

	host := ingress.LabelHostname("agent-1.localhost", "oracle")
	want := f.edge.URL(host)
	if res.Exposed == nil || !res.Exposed.Published || res.Exposed.URL != want {
		t.Errorf("deploy exposed = %+v, want published at %s", res.Exposed, want)
	}
	// The workload rewrites its document every tick, so a request may
	// land on an empty file; wait for a whole document.
	var body string

	eventually(t, "the oracle document through the edge", func() bool {
		resp, err := localedge.HTTPClient().Get(want + "/oracle.json")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusOK && strings.Contains(body, "}")
	})

	if !strings.Contains(body, `"oracle":"oracle-readonly"`) {
		t.Errorf("oracle document = %q", body)
	}
	var agents []cpapi.Agent
	getJSON(t, f.CP().URL+"/api/agents", st.AdminToken, &agents)
	if len(agents) != 1 || len(agents[0].Exposed) != 1 || agents[0].Exposed[0].URL != want ||
		agents[0].TunnelID == "" {
		t.Errorf("/api/agents = %+v, want the oracle exposed at %s and a tunnel", agents, want)
	}

	// A reserved label is refused before anything is deployed.
	records := f.Provider().Hostnames()
	units, _ := c.Units(ctx)
	bad := strings.Replace(string(oracleSpec(t, freePort(t))), `"hostname_label": "oracle"`,
		`"hostname_label": "api"`, 1)
	bad = strings.Replace(bad, `"app_name": "oracle-readonly"`, `"app_name": "bad-oracle"`, 1)
	_, err = c.Deploy(ctx, []byte(bad))

	var ae *agentapi.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Errorf("deploy with a reserved label = %v, want 400", err)
	}

	if diff := cmp.Diff(records, f.Provider().Hostnames()); diff != "" {
		t.Errorf("the refused deploy changed the records:\n%s", diff)
	}
	if after, _ := c.Units(ctx); len(after) != len(units) {
		t.Errorf("the refused deploy reached the runtime: %d units, want %d", len(after),
			len(units))
	}
}

// TestSecondControlPlaneTakesOver starts a second control plane on the
// same registry: it takes the hostname over and fences the first, which
// stops; the agents keep serving and talk to the new control plane; and
// only the new one reaps.
func TestSecondControlPlaneTakesOver(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f, err := Start(ctx, Options{StateDir: t.TempDir(), Listen: "127.0.0.1:0", Agents: 1,
		ReapGrace: 3 * time.Second})
	if err != nil {
		cancel()
		t.Fatal(err)
	}

	defer func() {
		cancel()
		if err := f.Wait(); err != nil {
			t.Errorf("fleet stopped with error: %v", err)
		}
	}()

	st := f.State()
	first := f.CP()

	// An orphan agent tunnel: nothing connects it, so every probe fails.
	ghost, err := f.Provider().CreateTunnel(ctx, "dd-dev-agent-0badcafe",
		ingress.AgentIngress("ghost.localhost", nil))
	if err != nil {
		t.Fatal(err)
	}

	second, err := f.StartSecondCP()
	if err != nil {
		t.Fatal(err)
	}

	select {
	case <-first.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the first control plane did not stop after the second took over")
	}

	if !first.Fenced() || f.CP() != second || f.State().CPURL != second.URL {
		t.Errorf("first fenced %v, current is second %v; want both", first.Fenced(),
			f.CP() == second)
	}
	var h cpapi.Health
	getJSONWith(t, localedge.HTTPClient(), st.DashboardURL+"health", "", &h)
	if h.Ingress == nil || h.Ingress.TunnelID != second.TunnelID() {
		t.Errorf("the public hostname reaches %+v, want the second control plane", h.Ingress)
	}

	// The agent keeps serving through the edge.
	agent := &agentapi.Client{BaseURL: st.Agents[0].URL, HTTP: localedge.HTTPClient()}
	if ah, err := agent.Health(ctx); err != nil || !ah.OK {
		t.Fatalf("agent health after the takeover = %+v, %v", ah, err)
	}

	// The agent talks to the new control plane: it picks up a tenant set
	// there, and the new collector scrapes it.
	var agents []cpapi.Agent
	getJSON(t, second.URL+"/api/agents", st.AdminToken, &agents)
	setTenant(t, second.URL, st.AdminToken, agents[0].AgentID)

	tenant := ghoidc.Principal{Kind: ghoidc.KindUser, Name: "dev-tenant", ID: 2002}.String()
	eventually(t, "the agent syncs the tenant from the new control plane", func() bool {
		ah, err := agent.Health(ctx)
		return err == nil && ah.Tenant == tenant
	})
	takeover := time.Now().UTC().Truncate(time.Second)

	eventually(t, "the new control plane scrapes the agent", func() bool {
		getJSON(t, second.URL+"/api/agents", st.AdminToken, &agents)
		seen, _ := time.Parse(time.RFC3339, agents[0].LastSeen)
		return agents[0].Status == "healthy" && !seen.Before(takeover)
	})

	// Only the new control plane reaps the orphan.
	eventually(t, "the orphan is reaped", func() bool {
		info, err := f.Provider().Tunnel(ctx, ghost.ID)
		return err == nil && info.Deleted()
	})

	var reaped, stonith audit.Page
	getJSON(t, second.URL+"/api/audit?action="+string(cp.ActionIngressReaped), st.AdminToken,
		&reaped)
	if len(reaped.Entries) == 0 {
		t.Error("no reaping entry in the audit log")
	}

	for _, e := range reaped.Entries {
		if e.Actor.Name != "cp:"+second.TunnelID() {
			t.Errorf("reaping entry by %s, want only the new control plane", e.Actor)
		}
	}

	getJSON(t, second.URL+"/api/audit?action="+string(audit.ActionStonith), st.AdminToken,
		&stonith)
	if len(stonith.Entries) != 1 || stonith.Entries[0].Actor.Name != "cp:"+second.TunnelID() {
		t.Errorf("stonith entries = %+v, want one by the new control plane", stonith.Entries)
	}
}

func setTenant(t *testing.T, cpURL, adminToken, agentID string) {
	t.Helper()
	body := `{"tenant":{"kind":"user","name":"dev-tenant","id":2002}}`
	req, _ := http.NewRequest("POST", cpURL+"/api/agents/"+agentID+"/tenant",
		strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminToken)

	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}

	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("setting the tenant = %d", resp.StatusCode)
	}
}

// TestJoinTakesOver starts a second control plane the way `devopsdefender
// dev cp` does, through the running fleet's services rather than its
// objects: the edge provider's API, the issuer, the Trust Authority and
// the state dir's files.
func TestJoinTakesOver(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f, _ := startFleetIn(t, dir)
	st := f.State()
	first := f.CP()

	joined, err := Join(ctx, JoinOptions{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := joined.Close(); err != nil {
			t.Errorf("joined control plane stopped with error: %v", err)
		}
	}()

	second := joined.CP()
	select {
	case <-first.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the first control plane did not stop after the second joined")
	}

	if !first.Fenced() {
		t.Error("the first control plane stopped without being fenced")
	}
	got, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}

	if got.CPURL != second.URL || got.AdminToken != st.AdminToken {
		t.Errorf("dev.json after the join: cp_url %s, admin token kept %v; want %s, true",
			got.CPURL, got.AdminToken == st.AdminToken, second.URL)
	}

	// The public hostname reaches the new control plane, which knows the
	// agent; the agent re-attaches and keeps serving deployments.
	var h cpapi.Health
	getJSONWith(t, localedge.HTTPClient(), st.DashboardURL+"health", "", &h)
	if h.Ingress == nil || h.Ingress.TunnelID != second.TunnelID() {
		t.Errorf("the public hostname reaches %+v, want the joined control plane", h.Ingress)
	}
	takeover := time.Now().UTC().Truncate(time.Second)

	eventually(t, "the joined control plane scrapes the agent", func() bool {
		var agents []cpapi.Agent
		getJSON(t, second.URL+"/api/agents", st.AdminToken, &agents)
		if len(agents) != 1 {
			return false
		}
		seen, _ := time.Parse(time.RFC3339, agents[0].LastSeen)
		return agents[0].Status == "healthy" && !seen.Before(takeover)
	})

	agent := &agentapi.Client{BaseURL: st.Agents[0].URL, HTTP: localedge.HTTPClient(),
		Token: mint(t, st, st.Owner.MintRequest())}
	hello, err := examples.FS.ReadFile("hello.json")
	if err != nil {
		t.Fatal(err)
	}

	res, err := agent.Deploy(ctx, hello)
	if err != nil {
		t.Fatalf("deploying after the takeover: %v", err)
	}

	if u := waitUnit(t, agent, res.ID); u.Status != runtime.StatusCompleted {
		t.Errorf("hello after the takeover: %s", u.Status)
	}
}

func TestStartAndJoinCheckTheLock(t *testing.T) {
	dir := t.TempDir()
	if _, err := Join(context.Background(), JoinOptions{StateDir: dir}); !errors.Is(err,
		ErrNotRunning) {
		t.Errorf("Join with no fleet = %v, want ErrNotRunning", err)
	}

	f, _ := startFleetIn(t, dir)
	_, err := Start(context.Background(), Options{StateDir: dir, Listen: "127.0.0.1:0"})
	if !errors.Is(err, ErrRunning) {
		t.Fatalf("a second Start on a running state dir = %v, want ErrRunning", err)
	}

	// The refused fleet touched nothing: the running one still serves.
	var agents []cpapi.Agent
	getJSON(t, f.CP().URL+"/api/agents", f.State().AdminToken, &agents)
	if len(agents) != 1 || agents[0].Status == "" {
		t.Errorf("agents after a refused second fleet = %+v", agents)
	}
}

func TestJoinWithoutAFleetCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Join(dir, "missing")} {
		if _, err := Join(context.Background(), JoinOptions{StateDir: d}); !errors.Is(err,
			ErrNotRunning) {
			t.Errorf("Join(%s) = %v, want ErrNotRunning", d, err)
		}
	}

	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("Join left %d files behind", len(entries))
	}
}
