package devfleet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/examples"
	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
)

// startFleet starts a one-agent dev fleet on free ports and stops it when
// the test ends.
func startFleet(t *testing.T) (*Fleet, context.CancelFunc) {
	t.Helper()
	return startFleetIn(t, t.TempDir())
}

// startFleetIn is startFleet on the state dir dir.
func startFleetIn(t *testing.T, dir string) (*Fleet, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f, err := Start(ctx, Options{StateDir: dir, Listen: "127.0.0.1:0", Agents: 1})
	if err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}

	t.Cleanup(func() {
		cancel()
		if err := f.Wait(); err != nil {
			t.Errorf("fleet stopped with error: %v", err)
		}
	})

	return f, cancel
}

func mint(t *testing.T, st State, req ghoidc.MintRequest) string {
	t.Helper()
	tok, err := ghoidc.MintFromIssuer(context.Background(), localedge.HTTPClient(),
		st.OIDCIssuer, st.OIDCMintSecret, req)
	if err != nil {
		t.Fatalf("minting: %v", err)
	}
	return tok
}

func TestDevFleetEndToEnd(t *testing.T) {
	f, _ := startFleet(t)
	st := f.State()
	ctx := context.Background()

	t.Run("state file", func(t *testing.T) {
		onDisk, err := LoadState(f.opts.StateDir)
		if err != nil {
			t.Fatal(err)
		}

		if onDisk.CPURL != st.CPURL || len(onDisk.Agents) != 1 || onDisk.AdminToken == "" {
			t.Errorf("dev.json = %+v, want the running fleet's state", onDisk)
		}
		fi, err := os.Stat(filepath.Join(f.opts.StateDir, StateFile))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("dev.json mode = %v, %v; want 0600", fi.Mode(), err)
		}
	})

	t.Run("control plane health", func(t *testing.T) {
		var h cpapi.Health
		getJSON(t, st.CPURL+"/health", "", &h)
		if !h.OK || h.Service != cpapi.Service {
			t.Errorf("health = %+v", h)
		}
	})

	agentURL := st.Agents[0].URL
	owner := st.Owner.MintRequest()
	c := &agentapi.Client{BaseURL: agentURL, Token: mint(t, st, owner), HTTP: localedge.HTTPClient()}

	t.Run("deploy hello", func(t *testing.T) {
		spec, _ := examples.FS.ReadFile("hello.json")
		res, err := c.Deploy(ctx, spec)
		if err != nil {
			t.Fatalf("Deploy: %v", err)
		}

		u := waitUnit(t, c, res.ID)
		if u.Status != runtime.StatusCompleted {
			t.Fatalf("hello ended %s (%s), want completed", u.Status, u.ErrorMessage)
		}

		logs, err := c.Logs(ctx, "hello", 10)
		if err != nil {
			t.Fatal(err)
		}

		if !strings.Contains(strings.Join(logs.Lines, "\n"), "hello") {
			t.Errorf("hello logs = %q, want the word hello", logs.Lines)
		}
	})

	t.Run("ticker boots", func(t *testing.T) {
		logs, err := c.Logs(ctx, "ticker", 5)
		if err != nil {
			t.Fatal(err)
		}
		if logs.Status != runtime.StatusRunning {
			t.Errorf("ticker status = %s, want running", logs.Status)
		}
	})

	t.Run("deploy refused", func(t *testing.T) {
		spec, _ := examples.FS.ReadFile("hello.json")
		expired := int64(-60)

		tests := []struct {
			name  string
			token string
			want  int
		}{
			{"no token", "", http.StatusUnauthorized},
			{"garbage token", "not-a-jwt", http.StatusUnauthorized},
			{"another owner", mint(t, st, ghoidc.MintRequest{RepositoryOwner: "mallory",
				RepositoryOwnerID: 666}), http.StatusForbidden},
			{"owner name with another id", mint(t, st, ghoidc.MintRequest{
				RepositoryOwner: owner.RepositoryOwner, RepositoryOwnerID: 7}), http.StatusForbidden},
			{"expired", mint(t, st, ghoidc.MintRequest{RepositoryOwner: owner.RepositoryOwner,
				RepositoryOwnerID: owner.RepositoryOwnerID, ExpiresInSecs: &expired}),
				http.StatusUnauthorized},
		}
		for _, tt := range tests {
			bad := &agentapi.Client{BaseURL: agentURL, Token: tt.token, HTTP: localedge.HTTPClient()}
			_, err := bad.Deploy(ctx, spec)
			var ae *agentapi.APIError
			if !errors.As(err, &ae) || ae.Status != tt.want || ae.Code == "" {
				t.Errorf("%s: Deploy error = %v, want status %d with a JSON body", tt.name, err, tt.want)
			}
		}
	})

	t.Run("agents survive a control plane restart", func(t *testing.T) {
		if err := f.RestartCP(); err != nil {
			t.Fatal(err)
		}

		var agents []cpapi.Agent
		getJSON(t, st.CPURL+"/api/agents", st.AdminToken, &agents)
		if len(agents) != 1 || agents[0].VMName != "agent-1" {
			t.Fatalf("agents after restart = %+v, want agent-1", agents)
		}

		at := agents[0].Attestation
		if !at.Verified || at.Status != "verified" || at.Type != "simulated" ||
			len(at.MRTD) != 96 || len(at.RTMR) != 4 || at.TCBStatus == "" || at.VerifiedAt == "" {
			t.Errorf("attestation = %+v, want verified simulated evidence", at)
		}
		resp, err := http.Get(st.CPURL + "/api/agents")
		if err != nil {
			t.Fatal(err)
		}

		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("/api/agents without a token = %d, want 401", resp.StatusCode)
		}
	})
}

// TestPublishedEvidenceCannotRegister takes what any reader of an agent's
// /health sees and tries to register with it.
func TestPublishedEvidenceCannotRegister(t *testing.T) {
	f, _ := startFleet(t)
	st := f.State()
	c := &agentapi.Client{BaseURL: st.Agents[0].URL, HTTP: localedge.HTTPClient()}
	h, err := c.Health(context.Background())
	if err != nil || h.Evidence == nil || h.EvidenceNonce == "" {
		t.Fatalf("health = %+v, %v; want published evidence", h, err)
	}

	pub, priv, _ := ed25519.GenerateKey(nil)
	ownKeys := base64.StdEncoding.EncodeToString(pub)

	tests := []struct {
		name       string
		nonce      func() string
		signingKey string
		sign       bool
	}{
		// The published request is a replay: its nonce was used.
		{"replayed nonce", func() string { return h.EvidenceNonce }, h.SigningKey, false},
		// A fresh nonce, the agent's keys: no signature can be made.
		{"fresh nonce, agent keys", func() string { return nonce(t, st) }, h.SigningKey, true},
		// A fresh nonce and the attacker's keys: the quote binds others.
		{"fresh nonce, own keys", func() string { return nonce(t, st) }, ownKeys, true},
	}
	for _, tt := range tests {
		req := cpapi.RegisterRequest{VMName: "intruder", Origin: "http://127.0.0.1:1",
			Nonce: tt.nonce(), SigningKey: tt.signingKey, NoiseKey: h.NoiseKey, Evidence: *h.Evidence}
		body, _ := json.Marshal(req)
		r, _ := http.NewRequest(http.MethodPost, st.CPURL+"/register", bytes.NewReader(body))

		r.Header.Set("Content-Type", "application/json")
		if tt.sign {
			r.Header.Set(attestbind.SignatureHeader, attestbind.Sign(priv, body))
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}

		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: register = %d, want 401", tt.name, resp.StatusCode)
		}
	}

	var agents []cpapi.Agent
	getJSON(t, st.CPURL+"/api/agents", st.AdminToken, &agents)
	if len(agents) != 1 {
		t.Errorf("fleet has %d agents after the attempts, want 1", len(agents))
	}
}

func nonce(t *testing.T, st State) string {
	t.Helper()
	resp, err := http.Post(st.CPURL+"/register/nonce", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	var n cpapi.NonceResponse
	if err := json.NewDecoder(resp.Body).Decode(&n); err != nil {
		t.Fatal(err)
	}
	return n.Nonce
}

func TestDevFleetStopsEveryProcess(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f, err := Start(ctx, Options{StateDir: t.TempDir(), Listen: "127.0.0.1:0", Agents: 2})
	if err != nil {
		cancel()
		t.Fatal(err)
	}

	st := f.State()
	var pids []int
	for _, a := range st.Agents {
		c := &agentapi.Client{BaseURL: a.URL, HTTP: localedge.HTTPClient()}
		units := waitRunning(t, c, "ticker")
		pids = append(pids, *units.PID)
	}

	cancel()
	if err := f.Wait(); err != nil {
		t.Fatalf("Wait: %v", err)
	}

	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("ticker pid %d still exists after stop (kill 0: %v)", pid, err)
		}
	}
}

func waitUnit(t *testing.T, c *agentapi.Client, id string) agentapi.Unit {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		units, err := c.Units(context.Background())
		if err != nil {
			t.Fatal(err)
		}

		for _, u := range units {
			if u.ID == id && runtime.Terminal(u.Status) {
				return u
			}
		}

		time.Sleep(50 * time.Millisecond)
	}

	t.Fatalf("deployment %s did not finish", id)
	return agentapi.Unit{}
}

func waitRunning(t *testing.T, c *agentapi.Client, app string) agentapi.Unit {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		units, err := c.Units(context.Background())
		if err != nil {
			t.Fatal(err)
		}

		for _, u := range units {
			if u.AppName == app && u.Status == runtime.StatusRunning && u.PID != nil {
				return u
			}
		}

		time.Sleep(50 * time.Millisecond)
	}

	t.Fatalf("%s did not start", app)
	return agentapi.Unit{}
}

func getJSON(t *testing.T, url, token string, v any) {
	t.Helper()
	getJSONWith(t, http.DefaultClient, url, token, v)
}

func getJSONWith(t *testing.T, c *http.Client, url, token string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}

	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}
