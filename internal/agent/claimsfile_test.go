package agent

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// TestClaimsSurviveAnAgentRestart: a restarted agent publishes again the
// claims of the workloads the runtime still runs, and drops those of a
// workload the runtime no longer knows.
func TestClaimsSurviveAnAgentRestart(t *testing.T) {
	rt := startRuntime(t)
	path := filepath.Join(t.TempDir(), "claims.json")
	boot := []ingress.Claim{{App: "boot-shell", Label: "shell-ui", Port: 7681}}

	run := func(t *testing.T) (*fakeCP, string, func()) {
		cp := &fakeCP{t: t, got: make(chan cpapi.RegisterRequest, 10),
			claims: make(chan []ingress.Claim, 10)}
		cpSrv := httptest.NewServer(cp)
		a, err := New(Options{VMName: "vm-1", Runtime: rt, Auth: fakeAuth{},
			ControlPlaneURL: cpSrv.URL, Origin: "http://127.0.0.1:1", SyncInterval: time.Hour,
			Expose: boot, ClaimsPath: path})
		if err != nil {
			t.Fatal(err)
		}

		_, base, stop := serveAgent(t, a)
		return cp, base, func() {
			stop()
			cpSrv.Close()
		}
	}

	// The first agent process publishes two workloads' claims.
	cp, base, stop := run(t)
	<-cp.claims // the boot claims, after registration
	for _, app := range []string{"oracle", "gone"} {
		r := do(t, "POST", base+"/deploy", "good", js, `{"app_name":"`+app+`",`+
			`"cmd":["/bin/sh","-c","sleep 30"],"expose":{"hostname_label":"`+app+
			`","port":8082}}`)
		if r.status != 200 {
			t.Fatalf("deploy %s = %d %s", app, r.status, r.body)
		}
		<-cp.claims
	}

	stop()
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("claims file: %v, %v", info, err)
	}

	// The runtime stops one workload; a new agent process takes over.
	dep, err := rt.Find(context.Background(), "gone")
	if err != nil || dep == nil {
		t.Fatalf("Find: %v, %v", dep, err)
	}
	if err := rt.Stop(context.Background(), dep.ID); err != nil {
		t.Fatal(err)
	}

	cp, _, stop = run(t)
	defer stop()

	want := []ingress.Claim{boot[0], {App: "oracle", Label: "oracle", Port: 8082}}
	if diff := cmp.Diff(want, <-cp.claims); diff != "" {
		t.Errorf("claims the restarted agent published (-want +got):\n%s", diff)
	}
}

// TestLoadClaimsKeepsWhatIsValid: a file that cannot be read, or kept
// claims that clash with the boot claims, never stop the agent.
func TestLoadClaimsKeepsWhatIsValid(t *testing.T) {
	dir := t.TempDir()
	boot := []ingress.Claim{{App: "boot-ui", Label: "ui", Port: 7681}}
	good := ingress.Claim{App: "web", Label: "www", Port: 8080}
	for _, tt := range []struct {
		name, content string
		want          []ingress.Claim
	}{
		{"not json", "{", boot},
		{"reserved label", `[{"app":"x","hostname_label":"api","port":80}]`, boot},
		{"bad port", `[{"app":"x","hostname_label":"web","port":0}]`, boot},
		{"label a boot workload took", `[{"app":"x","hostname_label":"ui","port":80},` +
			`{"app":"web","hostname_label":"www","port":8080}]`, append(slices.Clone(boot), good)},
		{"a boot app's old claim", `[{"app":"boot-ui","hostname_label":"old","port":1}]`, boot},
	} {
		path := filepath.Join(dir, tt.name)
		if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := loadClaims(path, "vm-1", boot, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
	got, err := loadClaims(filepath.Join(dir, "missing"), "vm-1", nil,
		slog.New(slog.DiscardHandler))
	if err != nil || len(got) != 0 {
		t.Errorf("a missing file = %v, %v; want no claims", got, err)
	}
	// A file that cannot be read is not known to be bad: no guessing.
	if _, err := loadClaims(dir, "vm-1", nil, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("an unreadable claims file (a directory) was ignored")
	}
}

// TestRestoredClaimLostMeanwhile: a restarted agent whose kept claim's
// hostname another agent took while it was gone drops that claim and
// still publishes the rest.
func TestRestoredClaimLostMeanwhile(t *testing.T) {
	rt := startRuntime(t)
	path := filepath.Join(t.TempDir(), "claims.json")
	kept := `[{"app":"shop","hostname_label":"shop","port":8082}]`
	if err := os.WriteFile(path, []byte(kept), 0o600); err != nil {
		t.Fatal(err)
	}
	// The runtime still runs the workload, so pruning keeps its claim.
	if _, err := rt.Deploy(context.Background(), workload.Spec{AppName: "shop",
		Cmd: []string{"/bin/sh", "-c", "sleep 30"}}); err != nil {
		t.Fatal(err)
	}

	cp := &fakeCP{t: t, got: make(chan cpapi.RegisterRequest, 4),
		claims: make(chan []ingress.Claim, 4), takenLabel: "shop"}
	cpSrv := httptest.NewServer(cp)
	defer cpSrv.Close()
	boot := []ingress.Claim{{App: "boot-ui", Label: "ui", Port: 7681}}
	a, err := New(Options{VMName: "vm-1", Runtime: rt, Auth: fakeAuth{},
		ControlPlaneURL: cpSrv.URL, Origin: "http://127.0.0.1:1", SyncInterval: time.Hour,
		Expose: boot, ClaimsPath: path})
	if err != nil {
		t.Fatal(err)
	}
	serveAgent(t, a)

	first := <-cp.claims
	if len(first) != 2 {
		t.Fatalf("first publish = %v, want the boot and the kept claim", first)
	}
	if diff := cmp.Diff(boot, <-cp.claims); diff != "" {
		t.Errorf("publish after the refusal (-want +got):\n%s", diff)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "shop") {
		t.Errorf("the claims file still keeps the lost claim: %s", data)
	}
}
