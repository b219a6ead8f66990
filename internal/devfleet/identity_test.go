package devfleet

import (
	"context"
	"errors"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/examples"
	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/devopsdefender/devopsdefender/internal/websession"
	"github.com/devopsdefender/devopsdefender/internal/websession/websessiontest"
)

// browser returns a client that keeps cookies, resolves *.localhost and
// does not follow redirects.
func browser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}

	c := localedge.HTTPClient()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

// TestIdentityEndToEnd plays the identity rules through a two-agent dev
// fleet: a tenant's CI may deploy to its agent only, a tenant signs in and
// sees only its agent, sign-out ends the session, and the deploy lands in
// the fleet's audit log with its repository and commit.
func TestIdentityEndToEnd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f, err := Start(ctx, Options{StateDir: t.TempDir(), Listen: "127.0.0.1:0", Agents: 2})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	defer func() { cancel(); f.Wait() }()

	st := f.State()
	hc := localedge.HTTPClient()
	var agents []cpapi.Agent
	getJSON(t, st.CPURL+"/api/agents", st.AdminToken, &agents)
	tenantAgent := agents[1]

	// The fleet admin gives agent-2 to the dev tenant.
	body := `{"tenant":{"kind":"user","name":"dev-tenant","id":2002}}`
	req, _ := http.NewRequest("POST", st.CPURL+"/api/agents/"+tenantAgent.AgentID+"/tenant",
		strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+st.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("assigning the tenant: %v %v", resp, err)
	}

	// The tenant's CI deploys to agent-2 (once the agent has synced its
	// tenant) and is refused on agent-1.
	tenantCI := mint(t, st, ghoidc.MintRequest{Repository: "dev-tenant/shop",
		RepositoryOwnerID: websession.DevTenantID, SHA: strings.Repeat("ab", 20)})
	spec, _ := examples.FS.ReadFile("hello.json")

	deployTo := func(url string) error {
		c := &agentapi.Client{BaseURL: url, Token: tenantCI, HTTP: hc}
		_, err := c.Deploy(context.Background(), spec)
		return err
	}

	deadline := time.Now().Add(20 * time.Second)
	for err := deployTo(st.Agents[1].URL); err != nil; err = deployTo(st.Agents[1].URL) {
		if time.Now().After(deadline) {
			t.Fatalf("tenant deploy to its agent: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	var ae *agentapi.APIError
	if err := deployTo(st.Agents[0].URL); !errors.As(err, &ae) || ae.Status != 403 {
		t.Errorf("tenant deploy to another agent = %v, want 403", err)
	}

	// A browser without a session is sent to sign in.
	dashboard := strings.TrimSuffix(st.DashboardURL, "/")
	anon, _ := http.NewRequest("GET", dashboard+"/", nil)
	anon.Header.Set("Accept", "text/html")
	if resp, err := browser(t).Do(anon); err != nil || resp.StatusCode != http.StatusSeeOther ||
		!strings.HasPrefix(resp.Header.Get("Location"), websession.LoginPath) {
		t.Fatalf("fleet page without a session = %v %v, want a redirect to sign in", resp, err)
	}

	// The tenant signs in and sees only agent-2.
	b := browser(t)
	if err := websessiontest.SignIn(b, dashboard, websession.DevTenantLogin); err != nil {
		t.Fatal(err)
	}

	page := get(t, b, dashboard+"/", "text/html")
	if !strings.Contains(page, ">agent-2<") || strings.Contains(page, ">agent-1<") {
		t.Errorf("tenant's fleet page: has agent-2 %v, has agent-1 %v; want only agent-2",
			strings.Contains(page, ">agent-2<"), strings.Contains(page, ">agent-1<"))
	}

	// After sign-out the old cookie is refused.
	cookies := b.Jar.Cookies(mustParse(dashboard))
	out, _ := http.NewRequest("POST", dashboard+websession.LogoutPath, nil)
	if resp, err := b.Do(out); err != nil || resp.StatusCode >= 400 {
		t.Fatalf("logout: %v %v", resp, err)
	}

	replay, _ := http.NewRequest("GET", dashboard+"/api/agents", nil)
	for _, c := range cookies {
		replay.AddCookie(c)
	}

	if resp, err := browser(t).Do(replay); err != nil || resp.StatusCode != 401 {
		t.Errorf("old cookie after logout = %v %v, want 401", resp, err)
	}

	// The deploy reaches the fleet's audit log with its repository and sha.
	deadline = time.Now().Add(20 * time.Second)
	for {
		audit := getAuth(t, st.CPURL+"/api/audit?action=deploy", st.AdminToken)
		if strings.Contains(audit, `"repository":"dev-tenant/shop"`) &&
			strings.Contains(audit, strings.Repeat("ab", 20)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit log lacks the tenant's deploy:\n%s", audit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func get(t *testing.T, c *http.Client, url, accept string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", accept)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}

	if resp.StatusCode != 200 {
		t.Fatalf("GET %s = %d: %s", url, resp.StatusCode, sb.String())
	}
	return sb.String()
}

func getAuth(t *testing.T, url, token string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	var sb strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}

	return sb.String()
}

func mustParse(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
