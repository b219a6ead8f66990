package devfleet

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/devopsdefender/devopsdefender/internal/cpapi"
)

// TestDashboardInABrowser signs in to the dev fleet's dashboard with a real
// Chromium, the way a person does: the fleet page sends the browser to
// sign in, the local GitHub's page offers the dev users, and the fleet
// admin lands on a fleet page that lists the agent as verified.
func TestDashboardInABrowser(t *testing.T) {
	chromium := findChromium()
	if chromium == "" {
		t.Skip("no chromium on the PATH (apt-get install chromium)")
	}

	ctx, cancel := context.WithCancel(context.Background())
	f, err := Start(ctx, Options{StateDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	defer func() { cancel(); f.Wait() }()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium),
		chromedp.Flag("no-sandbox", true), chromedp.Flag("headless", true))
	alloc, stopAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer stopAlloc()

	browser, stopBrowser := chromedp.NewContext(alloc)
	defer stopBrowser()

	browser, stopTimeout := context.WithTimeout(browser, 60*time.Second)
	defer stopTimeout()

	// The fleet page sends a browser without a session to sign in.
	err = chromedp.Do(browser, chromedp.Navigate(f.State().DashboardURL),
		chromedp.WaitVisible(chromedp.CSS("a.button")))
	if err != nil {
		t.Fatalf("opening the dashboard: %v", err)
	}

	signIn, err := chromedp.Run(browser, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}

	// Sign in with the local GitHub as the fleet admin.
	err = chromedp.Do(browser, chromedp.Click(chromedp.CSS("a.button")),
		chromedp.WaitVisible(chromedp.CSS(`button[value="dev-admin"]`)),
		chromedp.Click(chromedp.CSS(`button[value="dev-admin"]`)),
		chromedp.WaitVisible(chromedp.CSS("table.fleet")))
	if err != nil {
		t.Fatalf("signing in: %v", err)
	}

	location, err := chromedp.Run(browser, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}

	// The page refreshes itself; the collector may need a round to report
	// the agent's workloads.
	var fleet string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		fleet, err = chromedp.Run(browser, chromedp.Text(chromedp.CSS("body")))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(fleet, "ticker") {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}

	if !strings.Contains(signIn, "Sign in with GitHub") {
		t.Errorf("sign-in page text = %q", signIn)
	}
	if !strings.HasPrefix(location, f.State().DashboardURL) {
		t.Errorf("after sign-in the browser is at %q, want the dashboard", location)
	}

	for _, want := range []string{"agent-1", "simulated", "verified", "ticker"} {
		if !strings.Contains(fleet, want) {
			t.Errorf("fleet page lacks %q:\n%s", want, fleet)
		}
	}

	// The admin assigns the agent to the dev tenant with the agent page's
	// form, and the page shows the tenant.
	var agents []cpapi.Agent
	getJSON(t, f.CP().URL+"/api/agents", f.State().AdminToken, &agents)

	err = chromedp.Do(browser, chromedp.Navigate(f.State().DashboardURL+"agent/"+agents[0].AgentID),
		chromedp.WaitVisible(chromedp.CSS(`form.tenant input[name="name"]`)),
		chromedp.SetValue(chromedp.CSS(`form.tenant select[name="kind"]`), "user"),
		chromedp.SendKeys(chromedp.CSS(`form.tenant input[name="name"]`), "dev-tenant"),
		chromedp.SendKeys(chromedp.CSS(`form.tenant input[name="id"]`), "2002"),
		chromedp.Click(chromedp.CSS(`form.tenant button[value="set"]`)),
		chromedp.WaitVisible(chromedp.CSS(`button[value="clear"]`)))
	if err != nil {
		t.Fatalf("assigning the tenant on the agent page: %v", err)
	}

	page, err := chromedp.Run(browser, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}

	if !strings.Contains(page, "user:dev-tenant(2002) controls this agent") {
		t.Errorf("agent page after the assignment:\n%s", page)
	}
	getJSON(t, f.CP().URL+"/api/agents", f.State().AdminToken, &agents)
	if agents[0].Tenant == nil || agents[0].Tenant.Name != "dev-tenant" {
		t.Errorf("tenant after the form = %+v, want dev-tenant", agents[0].Tenant)
	}
}

func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}
