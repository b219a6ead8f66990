package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/devfleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/google/go-cmp/cmp"
)

const fakeRequestToken = "runner-request-token"

// fakeActions is the GitHub Actions runtime's token endpoint. It mints
// through the dev fleet's issuer, for the fleet owner, with the audience
// the caller asked for.
type fakeActions struct {
	st devfleet.State

	mu        sync.Mutex
	lifetime  int64    // seconds; guarded by mu
	audiences []string // one per token handed out
}

func (f *fakeActions) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Authorization"), "bearer "+fakeRequestToken) {
		httpapi.WriteJSON(w, http.StatusUnauthorized, httpapi.Body{Code: "UNAUTHORIZED"})
		return
	}
	if r.URL.Query().Get("api-version") != "2.0" {
		httpapi.WriteJSON(w, http.StatusBadRequest, httpapi.Body{Code: "NO_API_VERSION"})
		return
	}

	aud := r.URL.Query().Get("audience")
	f.mu.Lock()
	f.audiences = append(f.audiences, aud)
	lifetime := f.lifetime
	f.mu.Unlock()

	req := f.st.Owner.MintRequest()
	req.Audience, req.ExpiresInSecs = aud, &lifetime
	tok, err := ghoidc.MintFromIssuer(r.Context(), nil, f.st.OIDCIssuer, f.st.OIDCMintSecret, req)
	if err != nil {
		httpapi.WriteJSON(w, http.StatusBadGateway, httpapi.Body{Message: err.Error()})
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"value": tok})
}

// reset sets the lifetime of the tokens to come and forgets past ones.
func (f *fakeActions) reset(lifetime time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lifetime, f.audiences = int64(lifetime/time.Second), nil
}

func (f *fakeActions) handedOut() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.audiences...)
}

// fakeCP serves GET /api/agents to bearers the dev issuer signed for the
// fleet's audience and owner, as the control plane admits the fleet's CI.
// The listing holds a dead record under the agent's name, seen later than
// the live one, and another agent.
func fakeCP(t *testing.T, ctx context.Context, st devfleet.State) *httptest.Server {
	v, err := ghoidc.NewVerifier(ctx, ghoidc.VerifierOptions{Issuer: st.OIDCIssuer,
		Audience: st.OIDCAudience})
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { v.Close() })
	owner, err := ghoidc.ParsePrincipal(st.Owner.Kind, st.Owner.Name,
		strconv.FormatInt(st.Owner.ID, 10))
	if err != nil {
		t.Fatal(err)
	}

	a := st.Agents[0]
	listing := []cpapi.Agent{
		{VMName: "other", URL: "https://other.invalid", Status: "healthy"},
		{VMName: a.Name, URL: a.URL, Status: "healthy", LastSeen: "2026-01-01T00:00:00Z"},
		{VMName: a.Name, URL: "https://dead.invalid", Status: "dead",
			LastSeen: "2026-01-02T00:00:00Z"},
	}

	list := func(w http.ResponseWriter, r *http.Request) error {
		if r.URL.Path != "/api/agents" {
			return httpapi.NotFound("no such route")
		}
		tok := httpapi.BearerToken(r)
		if tok == "" {
			return httpapi.Unauthorized("no bearer token")
		}

		c, err := v.Verify(r.Context(), tok)
		if err != nil {
			return ghoidc.HTTPError(err)
		}
		if !owner.Matches(c) {
			return httpapi.Forbidden("not the fleet's CI")
		}
		return httpapi.WriteJSON(w, http.StatusOK, listing)
	}

	srv := httptest.NewServer(httpapi.Handle(slog.New(slog.DiscardHandler), list))
	t.Cleanup(srv.Close)
	return srv
}

// TestOIDCVerbs drives deploy --oidc and logs --oidc as a GitHub Actions
// job would, against a dev fleet, a fake Actions token endpoint and a
// fake control plane listing.
func TestOIDCVerbs(t *testing.T) {
	ctx, st, _ := startDevFleet(t)
	actions := &fakeActions{st: st}
	actionsSrv := httptest.NewServer(actions)
	defer actionsSrv.Close()

	cp := fakeCP(t, ctx, st)
	t.Setenv(envActionsTokenURL, actionsSrv.URL+"/token?api-version=2.0")
	t.Setenv(envActionsTokenToken, fakeRequestToken)
	t.Setenv("DD_OIDC_AUDIENCE", "")
	t.Setenv("DD_CP_URL", "")

	agent := st.Agents[0].Name
	hello := filepath.Join("..", "..", "examples", "hello.json")
	failing := filepath.Join("..", "..", "examples", "failing.json")
	oidc := []string{"--oidc", "--cp-url", cp.URL, "--agent", agent, "--audience", st.OIDCAudience}
	with := func(verb string, extra ...string) []string {
		return append(append([]string{verb}, oidc...), extra...)
	}

	tests := []struct {
		name       string
		env        map[string]string
		args       []string
		lifetime   time.Duration // of the tokens the runtime hands out
		wantCode   int
		wantStdout string
		wantStderr string
		// wantFetches bounds the tokens fetched: [min, max].
		wantFetches [2]int
	}{
		{name: "deploy", args: with("deploy", hello), lifetime: 5 * time.Minute,
			wantStdout: "hello completed", wantStderr: "hello: completed", wantFetches: [2]int{1, 1}},
		{name: "logs", args: with("logs", "hello"), lifetime: 5 * time.Minute,
			wantStdout: "hello from", wantFetches: [2]int{1, 1}},
		{name: "short-lived tokens are renewed", args: with("deploy", hello),
			lifetime: 30 * time.Second, wantStdout: "hello completed", wantFetches: [2]int{3, 1000}},
		{name: "settings from the environment",
			env:  map[string]string{"DD_OIDC_AUDIENCE": st.OIDCAudience, "DD_CP_URL": cp.URL},
			args: []string{"deploy", "--oidc", "--agent", agent, hello}, lifetime: 5 * time.Minute,
			wantStdout: "hello completed", wantFetches: [2]int{1, 1}},
		{name: "agent by URL", args: []string{"logs", "--oidc", "--audience", st.OIDCAudience,
			"--agent-url", st.Agents[0].URL, "hello"}, lifetime: 5 * time.Minute,
			wantStdout: "hello from", wantFetches: [2]int{1, 1}},
		{name: "failing workload prints the agent's logs", args: with("deploy", failing),
			lifetime: 5 * time.Minute, wantCode: 1, wantStderr: "something went wrong",
			wantFetches: [2]int{1, 1}},
		{name: "expired tokens", args: with("deploy", hello), lifetime: -time.Minute,
			wantCode: 1, wantStderr: "control plane answered 401", wantFetches: [2]int{1, 1}},
		{name: "agent refuses another audience", args: []string{"deploy", "--oidc",
			"--audience", "someone-else", "--agent-url", st.Agents[0].URL, hello},
			lifetime: 5 * time.Minute, wantCode: 1, wantStderr: "not authenticated",
			wantFetches: [2]int{1, 1}},
		{name: "unknown agent", args: []string{"deploy", "--oidc", "--cp-url", cp.URL,
			"--agent", "nope", "--audience", st.OIDCAudience, hello}, lifetime: 5 * time.Minute,
			wantCode: 1, wantStderr: `no live agent "nope"`, wantFetches: [2]int{1, 1}},
		{name: "not in GitHub Actions",
			env:  map[string]string{envActionsTokenURL: "", envActionsTokenToken: ""},
			args: with("deploy", hello), wantCode: 1, wantStderr: "id-token: write"},
		{name: "wrong request token", env: map[string]string{envActionsTokenToken: "guess"},
			args: with("deploy", hello), wantCode: 1, wantStderr: "HTTP 401"},
		{name: "no audience", args: []string{"deploy", "--oidc", "--cp-url", cp.URL,
			"--agent", agent, hello}, wantCode: 2, wantStderr: "--audience"},
		{name: "no agent", args: []string{"deploy", "--oidc", "--cp-url", cp.URL,
			"--audience", "a", hello}, wantCode: 2, wantStderr: "--agent NAME"},
		{name: "with --token", args: with("deploy", "--token", "t", hello), wantCode: 2,
			wantStderr: "excludes"},
		{name: "clear-text control plane", args: []string{"deploy", "--oidc", "--cp-url",
			"http://cp.example.com", "--agent", agent, "--audience", "a", hello},
			lifetime: 5 * time.Minute, wantCode: 2, wantStderr: "use https",
			wantFetches: [2]int{0, 0}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}

			actions.reset(tt.lifetime)
			var out, errOut bytes.Buffer
			code := run(ctx, tt.args, "", &out, &errOut)
			if code != tt.wantCode || !strings.Contains(out.String(), tt.wantStdout) ||
				!strings.Contains(errOut.String(), tt.wantStderr) {
				t.Errorf("exit %d, stdout %q; want %d, %q and stderr %q; stderr:\n%s", code,
					out.String(), tt.wantCode, tt.wantStdout, tt.wantStderr, errOut.String())
			}

			auds := actions.handedOut()
			if n := len(auds); n < tt.wantFetches[0] || n > tt.wantFetches[1] {
				t.Errorf("%d tokens fetched, want %d..%d", n, tt.wantFetches[0], tt.wantFetches[1])
			}

			for _, a := range auds {
				if want := flagValue(tt.args, "--audience", st.OIDCAudience); a != want {
					t.Errorf("token requested for audience %q, want %q", a, want)
				}
			}
		})
	}
}

// flagValue returns the value following name in args, or def.
func flagValue(args []string, name, def string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name {
			return args[i+1]
		}
	}
	return def
}

// TestDeployOutputJSON checks the one JSON object --output-json prints,
// on success and on failure.
func TestDeployOutputJSON(t *testing.T) {
	ctx, _, dir := startDevFleet(t)
	examples := filepath.Join("..", "..", "examples")
	tests := []struct {
		name       string
		file       string
		args       []string
		wantCode   int
		wantStatus string
		wantStderr string
	}{
		{"completed", "hello.json", nil, 0, "completed", "hello: completed"},
		{"failed", "failing.json", nil, 1, "failed", "something went wrong"},
		{"not waiting", "hello.json", []string{"--wait=false"}, 0, "deploying", "accepted"},
		// The ticker runs, but not for the --settle asked: the wait times
		// out and shows what the workload logged meanwhile.
		{"timed out", "ticker.json", []string{"--settle", "1h", "--timeout", "500ms"}, 1,
			"running", "last "},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			args := append([]string{"deploy", "--state-dir", dir, "--output-json"}, tt.args...)
			args = append(args, filepath.Join(examples, tt.file))
			code := run(ctx, args, "", &out, &errOut)
			if code != tt.wantCode || !strings.Contains(errOut.String(), tt.wantStderr) {
				t.Fatalf("exit %d, want %d and stderr %q; stderr:\n%s", code, tt.wantCode,
					tt.wantStderr, errOut.String())
			}

			var got deployOutcome
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatalf("stdout %q: %v", out.String(), err)
			}

			sum := sha256.Sum256(readExample(t, tt.file))
			want := deployOutcome{ID: got.ID, AppName: strings.TrimSuffix(tt.file, ".json"),
				Status: tt.wantStatus, SpecSHA256: hex.EncodeToString(sum[:])}
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(deployOutcome{})); diff != "" ||
				got.ID == "" {
				t.Errorf("--output-json (-want +got):\n%s", diff)
			}
		})
	}
}

// lossyProxy stands between the CLI and the agent. It forwards the first
// POST /deploy but answers 502 as if the reply had been lost on the way,
// so the agent has deployed and the client does not know it.
type lossyProxy struct {
	proxy *httputil.ReverseProxy

	mu       sync.Mutex
	keys     []string // Idempotency-Key of each POST /deploy
	firstID  string   // id in the reply that was lost
	lostOnce bool
}

func newLossyProxy(agentURL string) (*lossyProxy, error) {
	u, err := url.Parse(agentURL)
	if err != nil {
		return nil, err
	}

	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u) },
		Transport: localedge.HTTPClient().Transport,
	}
	return &lossyProxy{proxy: rp}, nil
}

func (p *lossyProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/deploy" {
		p.proxy.ServeHTTP(w, r)
		return
	}

	p.mu.Lock()
	p.keys = append(p.keys, r.Header.Get(agentapi.IdempotencyHeader))
	lose := !p.lostOnce
	p.lostOnce = true
	p.mu.Unlock()

	if !lose {
		p.proxy.ServeHTTP(w, r)
		return
	}

	rec := httptest.NewRecorder()
	p.proxy.ServeHTTP(rec, r)
	var res agentapi.DeployResponse
	json.Unmarshal(rec.Body.Bytes(), &res)
	p.mu.Lock()
	p.firstID = res.ID
	p.mu.Unlock()
	httpapi.WriteJSON(w, http.StatusBadGateway, httpapi.Body{Code: "UPSTREAM"})
}

// TestDeployRetryDoesNotDeployTwice loses the agent's reply to the first
// POST /deploy: the CLI retries with the same key and gets the first
// deployment back, not a second one.
func TestDeployRetryDoesNotDeployTwice(t *testing.T) {
	ctx, st, _ := startDevFleet(t)
	p, err := newLossyProxy(st.Agents[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	defer srv.Close()

	retryDelay = time.Millisecond
	defer func() { retryDelay = 0 }()
	tok := mintToken(t, ctx, st)

	var out, errOut bytes.Buffer
	args := []string{"deploy", "--agent-url", srv.URL, "--token", tok, "--output-json",
		filepath.Join("..", "..", "examples", "hello.json")}
	if code := run(ctx, args, "", &out, &errOut); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut.String())
	}

	var got deployOutcome
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()

	if len(p.keys) != 2 || p.keys[0] == "" || p.keys[0] != p.keys[1] {
		t.Errorf("Idempotency-Key of the tries = %q, want two equal keys", p.keys)
	}
	if p.firstID == "" || got.ID != p.firstID {
		t.Errorf("deployment %q reported, want the first one %q", got.ID, p.firstID)
	}
}

func mintToken(t *testing.T, ctx context.Context, st devfleet.State) string {
	t.Helper()
	tok, err := ghoidc.MintFromIssuer(ctx, nil, st.OIDCIssuer, st.OIDCMintSecret,
		st.Owner.MintRequest())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
