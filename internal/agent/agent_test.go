package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/runtime/server"
)

// fakeAuth admits the token "good", forbids "other" and refuses the rest.
type fakeAuth struct{}

func (fakeAuth) Authenticate(ctx context.Context, bearer string) (Caller, error) {
	switch bearer {
	case "good":
		return Caller{Repository: "acme/app", SHA: "abc"}, nil
	case "other":
		return Caller{}, httpapi.Forbidden("not the fleet owner")
	}
	return Caller{}, httpapi.Unauthorized("invalid token")
}

// startRuntime runs a real local runtime for the test.
func startRuntime(t *testing.T) *runtime.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "dd-agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	rs, err := server.New(server.Options{SocketPath: filepath.Join(dir, "rt.sock"),
		DataDir: filepath.Join(dir, "data")})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- rs.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("runtime: %v", err)
		}
	})

	select {
	case <-rs.Ready():
	case err := <-errc:
		t.Fatalf("runtime: %v", err)
	}

	c, err := runtime.NewClient(runtime.ClientOptions{SocketPath: rs.SocketPath(),
		Token: rs.Token()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTestAgent(t *testing.T, rt *runtime.Client) (*Agent, *httptest.Server) {
	t.Helper()
	a, err := New(Options{VMName: "vm-1", Runtime: rt, Auth: fakeAuth{}})
	if err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return a, srv
}

type reply struct {
	status int
	body   string
}

func do(t *testing.T, method, url, token, ctype, body string) reply {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, string(b)}
}

func TestDeployRefusesBadRequests(t *testing.T) {
	rt := startRuntime(t)
	_, srv := newTestAgent(t, rt)
	const js = "application/json"
	good := `{"app_name":"ok","cmd":["/bin/sh","-c","sleep 30"]}`

	tests := []struct {
		name, token, ctype, body string
		wantStatus               int
		wantCode                 string
	}{
		{"no token", "", js, good, 401, httpapi.CodeUnauthorized},
		{"bad token", "bad", js, good, 401, httpapi.CodeUnauthorized},
		{"foreign owner", "other", js, good, 403, httpapi.CodeForbidden},
		{"array body", "good", js, `[1,2]`, 400, httpapi.CodeBadRequest},
		{"string body", "good", js, `"x"`, 400, httpapi.CodeBadRequest},
		{"malformed", "good", js, `{"app_name":`, 400, httpapi.CodeBadRequest},
		{"wrong type", "good", js, `{"cmd":"ls"}`, 400, httpapi.CodeBadRequest},
		{"null cmd", "good", js, `{"cmd":null}`, 400, httpapi.CodeBadRequest},
		{"nothing to run", "good", js, `{"app_name":"x"}`, 400, httpapi.CodeBadRequest},
		{"empty cmd", "good", js, `{"app_name":"x","cmd":[]}`, 400, httpapi.CodeBadRequest},
		{"path app name", "good", js, `{"app_name":"../x","cmd":["true"]}`, 400,
			httpapi.CodeBadRequest},
		{"bad expose", "good", js, `{"app_name":"x","cmd":["true"],` +
			`"expose":{"hostname_label":"Bad_Label","port":80}}`, 400, httpapi.CodeBadRequest},
		{"bad asset", "good", js, `{"app_name":"x","github_release":` +
			`{"repo":"a/b","asset":"../../etc/passwd"}}`, 400, httpapi.CodeBadRequest},
		{"content type", "good", "text/plain", good, 415, httpapi.CodeUnsupported},
		{"oversized", "good", js, `{"app_name":"big","env":["X=` +
			strings.Repeat("a", maxSpecBytes) + `"]}`, 413, httpapi.CodeTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, "POST", srv.URL+"/deploy", tt.token, tt.ctype, tt.body)
			var b httpapi.Body
			if err := json.Unmarshal([]byte(r.body), &b); err != nil || r.status != tt.wantStatus ||
				b.Code != tt.wantCode || b.Message == "" {
				t.Errorf("= %d %s, want %d with code %s", r.status, r.body, tt.wantStatus,
					tt.wantCode)
			}
		})
	}

	deps, err := rt.List(context.Background())
	if err != nil || len(deps) != 0 {
		t.Errorf("runtime deployments after refused requests = %v, %v; want none", deps, err)
	}
}

func TestDeployExecLogs(t *testing.T) {
	rt := startRuntime(t)
	_, srv := newTestAgent(t, rt)

	r := do(t, "POST", srv.URL+"/deploy", "good", "application/json",
		`{"app_name":"greet","cmd":["/bin/sh","-c","echo one; echo two; echo three >&2"]}`)
	var dep agentapi.DeployResponse
	if r.status != 200 || json.Unmarshal([]byte(r.body), &dep) != nil || dep.ID == "" ||
		len(dep.SpecSHA256) != 64 {
		t.Fatalf("deploy = %d %s", r.status, r.body)
	}
	waitStatus(t, rt, dep.ID, runtime.StatusCompleted)

	tests := []struct {
		name, url  string
		wantStatus int
		wantBody   string
	}{
		{"all lines", "/logs/greet", 200, `"lines":["one","two","three"]`},
		{"tail", "/logs/greet?tail=1", 200, `"lines":["three"]`},
		{"unknown app", "/logs/nope", 404, `"code":"NOT_FOUND"`},
		{"bad tail", "/logs/greet?tail=abc", 400, `"code":"BAD_REQUEST"`},
		{"negative tail", "/logs/greet?tail=-1", 400, `"code":"BAD_REQUEST"`},
		{"bad name", "/logs/a%20b", 400, `"code":"BAD_REQUEST"`},
	}
	for _, tt := range tests {
		r := do(t, "GET", srv.URL+tt.url, "good", "", "")
		if r.status != tt.wantStatus || !strings.Contains(r.body, tt.wantBody) {
			t.Errorf("%s: GET %s = %d %s, want %d containing %s", tt.name, tt.url, r.status,
				r.body, tt.wantStatus, tt.wantBody)
		}
	}

	if r := do(t, "GET", srv.URL+"/logs/greet", "", "", ""); r.status != 401 {
		t.Errorf("logs without a token = %d, want 401", r.status)
	}

	execTests := []struct {
		name, body string
		wantStatus int
		wantBody   string
	}{
		{"exit code", `{"cmd":["/bin/sh","-c","echo out; echo err >&2; exit 4"]}`, 200,
			`{"exit_code":4,"stdout":"out\n","stderr":"err\n"}`},
		{"empty cmd", `{"cmd":[]}`, 400, `"code":"BAD_REQUEST"`},
		{"unknown field", `{"cmd":["true"],"shell":true}`, 400, `"code":"BAD_REQUEST"`},
		{"timeout too long", `{"cmd":["true"],"timeout_secs":100000}`, 400, `BAD_REQUEST`},
		{"timed out", `{"cmd":["sleep","5"],"timeout_secs":1}`, 502, `command timed out`},
		{"missing program", `{"cmd":["/nonexistent/prog"]}`, 502, `spawn failed`},
	}
	for _, tt := range execTests {
		r := do(t, "POST", srv.URL+"/exec", "good", "application/json", tt.body)
		if r.status != tt.wantStatus || !strings.Contains(r.body, tt.wantBody) {
			t.Errorf("%s: exec = %d %s, want %d containing %s", tt.name, r.status, r.body,
				tt.wantStatus, tt.wantBody)
		}
	}
}

func TestRuntimeDownIsBadGateway(t *testing.T) {
	rt, err := runtime.NewClient(runtime.ClientOptions{
		SocketPath: filepath.Join(t.TempDir(), "absent.sock")})
	if err != nil {
		t.Fatal(err)
	}

	_, srv := newTestAgent(t, rt)
	r := do(t, "POST", srv.URL+"/deploy", "good", "application/json",
		`{"app_name":"x","cmd":["true"]}`)
	if r.status != http.StatusBadGateway || !strings.Contains(r.body, `"code":"UPSTREAM"`) {
		t.Errorf("deploy with the runtime down = %d %s, want 502 UPSTREAM", r.status, r.body)
	}
	if strings.Contains(r.body, "absent.sock") {
		t.Errorf("error body leaks the socket path: %s", r.body)
	}

	// /health stays up and says what it knows.
	if r := do(t, "GET", srv.URL+"/health", "", "", ""); r.status != 200 {
		t.Errorf("health with the runtime down = %d", r.status)
	}
}

// fakeCP is a control plane that hands out one nonce and registers
// agents whose request is signed and whose evidence binds that nonce and
// the agent's keys, or refuses them.
type fakeCP struct {
	t *testing.T
	// refusals are the statuses of the first registrations, refused in
	// this order; the next ones are accepted.
	mu       sync.Mutex
	refusals []int
	got      chan cpapi.RegisterRequest
	// claims receives the bodies of POST /agents/{id}/ingress.
	claims chan []ingress.Claim
	// agentNonce serves POST /agents/{id}/nonce, which control planes of
	// earlier releases lack; nonces records which nonce route each
	// nonce came from.
	agentNonce bool
	nonces     []string
	// takenLabel, when set, is a label whose hostname another agent holds:
	// claims that include it are refused with 409.
	takenLabel string
}

var fakeNonce = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))

func (f *fakeCP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/register/nonce":
		f.noteNonce(r.URL.Path)
		httpapi.WriteJSON(w, 200, cpapi.NonceResponse{Nonce: fakeNonce})
		return
	case "/agents/dd-test-agent-1/nonce":
		if !f.agentNonce || r.Header.Get("Authorization") != "Bearer secret-agent-token" {
			httpapi.WriteJSON(w, 404, httpapi.Body{Code: "NOT_FOUND", Message: r.URL.Path})
			return
		}
		f.noteNonce(r.URL.Path)
		httpapi.WriteJSON(w, 200, cpapi.NonceResponse{Nonce: fakeNonce})
		return
	case "/agents/dd-test-agent-1/attest":
		var req cpapi.AttestRequest
		body, _ := io.ReadAll(r.Body)
		if json.Unmarshal(body, &req) != nil || req.Nonce != fakeNonce {
			httpapi.WriteJSON(w, 400, httpapi.Body{Code: "BAD_REQUEST", Message: "nonce"})
			return
		}
		httpapi.WriteJSON(w, 200, cpapi.Attestation{})
		return
	case "/register":
	case "/agents/dd-test-agent-1/ingress":
		f.serveIngress(w, r)
		return
	case "/agents/dd-test-agent-1/config":
		if r.Header.Get("Authorization") != "Bearer secret-agent-token" {
			httpapi.WriteJSON(w, 401, httpapi.Body{Code: "UNAUTHORIZED", Message: "no"})
			return
		}
		httpapi.WriteJSON(w, 200, cpapi.AgentConfig{AgentID: "dd-test-agent-1",
			Tenant: &cpapi.Principal{Kind: "org", Name: "globex", ID: 9}})
		return
	default:
		httpapi.WriteJSON(w, 404, httpapi.Body{Code: "NOT_FOUND", Message: r.URL.Path})
		return
	}

	// only /register gets here
	body, _ := io.ReadAll(r.Body)
	var req cpapi.RegisterRequest
	json.Unmarshal(body, &req)
	f.got <- req

	if status := f.refusal(); status != 0 {
		httpapi.WriteJSON(w, status, httpapi.Body{Code: http.StatusText(status), Message: "no"})
		return
	}
	if err := f.check(body, r.Header.Get(attestbind.SignatureHeader), &req); err != nil {
		f.t.Errorf("registration request: %v", err)
		httpapi.WriteJSON(w, 401, httpapi.Body{Code: "UNAUTHORIZED", Message: err.Error()})
		return
	}

	httpapi.WriteJSON(w, 200, cpapi.RegisterResponse{AgentID: "dd-test-agent-1",
		Hostname: "vm-1.example", URL: "https://vm-1.example", AgentToken: "secret-agent-token",
		TunnelToken: "secret-tunnel-token"})
}

func (f *fakeCP) noteNonce(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nonces = append(f.nonces, path)
}

// refusal returns the status that refuses the next registration, or 0 to
// accept it.
func (f *fakeCP) refusal() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.refusals) == 0 {
		return 0
	}

	status := f.refusals[0]
	f.refusals = f.refusals[1:]
	return status
}

// serveIngress accepts the agent's claims and answers with their URLs.
func (f *fakeCP) serveIngress(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer secret-agent-token" {
		httpapi.WriteJSON(w, 401, httpapi.Body{Code: "UNAUTHORIZED", Message: "no"})
		return
	}

	var req cpapi.IngressRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		httpapi.WriteJSON(w, 400, httpapi.Body{Code: "BAD_REQUEST", Message: err.Error()})
		return
	}
	if f.claims != nil {
		f.claims <- req.Claims
	}
	for _, c := range req.Claims {
		if f.takenLabel != "" && c.Label == f.takenLabel {
			httpapi.WriteJSON(w, 409, httpapi.Body{Code: "CONFLICT",
				Message: "hostname is held by another agent"})
			return
		}
	}

	resp := cpapi.IngressResponse{AgentID: "dd-test-agent-1", Exposed: []agentapi.Exposed{}}
	for _, c := range req.Claims {
		h := ingress.ExtraHostname("vm-1.example", c.Label)
		resp.Exposed = append(resp.Exposed, agentapi.Exposed{App: c.App, Label: c.Label,
			Port: c.Port, Hostname: h, URL: "https://" + h, Published: true})
	}
	httpapi.WriteJSON(w, 200, resp)
}

func (f *fakeCP) check(body []byte, sig string, req *cpapi.RegisterRequest) error {
	keys, err := attestbind.DecodeKeys(req.SigningKey, req.NoiseKey)
	if err != nil {
		return err
	}
	if err := attestbind.VerifySignature(keys.Signing, body, sig); err != nil {
		return err
	}

	nonce, _ := base64.StdEncoding.DecodeString(req.Nonce)
	rd, err := attestbind.ReportData(attestbind.PurposeRegister, nonce, keys)
	if err != nil {
		return err
	}
	if req.Evidence.ReportDataB64 != base64.StdEncoding.EncodeToString(rd[:]) {
		return errors.New("evidence does not bind the nonce and keys")
	}
	return nil
}

func TestRegistration(t *testing.T) {
	rt := startRuntime(t)
	cp := &fakeCP{t: t, got: make(chan cpapi.RegisterRequest, 1)}
	cpSrv := httptest.NewServer(cp)
	defer cpSrv.Close()

	a, err := New(Options{VMName: "vm-1", Runtime: rt, Auth: fakeAuth{},
		ControlPlaneURL: cpSrv.URL, Origin: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}

	_, base, stop := serveAgent(t, a)

	req := <-cp.got
	if req.VMName != "vm-1" || req.Origin != "http://127.0.0.1:1" ||
		req.Evidence.AttestationType != "none" || req.Evidence.QuoteB64 == "" {
		t.Errorf("register request = %+v", req)
	}

	for !a.Registered() || a.Tenant() == nil {
		time.Sleep(10 * time.Millisecond)
	}

	// /health shows the registration, the tenant and the evidence
	r := do(t, "GET", base+"/health", "", "", "")
	var h agentapi.Health
	json.Unmarshal([]byte(r.body), &h)
	if h.Tenant != "org:globex(9)" || h.IntegrityState != "controlled" {
		t.Errorf("health tenant %q integrity %q %v; want the tenant from the control plane",
			h.Tenant, h.IntegrityState, h.IntegrityReasons)
	}
	if h.AgentID != "dd-test-agent-1" || strings.Contains(r.body, "secret-agent-token") {
		t.Errorf("health = %s; want the agent id and never the agent token", r.body)
	}
	if h.Evidence == nil || h.EvidenceNonce != fakeNonce || h.SigningKey != req.SigningKey ||
		h.EvidencePurpose != attestbind.PurposeRegister {
		t.Errorf("health evidence = %+v nonce %q; want the registration evidence", h.Evidence,
			h.EvidenceNonce)
	}
	stop()
}

// TestRegistrationRetriesRefusals: refusals (a stale nonce after a
// cutover, a name still held, a policy not yet updated) do not stop the
// agent; it retries with the same keys until the control plane accepts.
func TestRegistrationRetriesRefusals(t *testing.T) {
	rt := startRuntime(t)
	refusals := []int{http.StatusUnauthorized, http.StatusConflict, http.StatusForbidden}
	cp := &fakeCP{t: t, refusals: refusals, got: make(chan cpapi.RegisterRequest, 10)}
	cpSrv := httptest.NewServer(cp)
	defer cpSrv.Close()

	var logs syncBuffer
	a, err := New(Options{VMName: "vm-1", Runtime: rt, Auth: fakeAuth{},
		ControlPlaneURL: cpSrv.URL, Origin: "http://127.0.0.1:1",
		KeyPath: filepath.Join(t.TempDir(), "agent-key.pem"),
		Logger:  slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}

	a.regBackoff = backoff{base: time.Millisecond, max: 4 * time.Millisecond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()

	for i := range len(refusals) + 1 {
		select {
		case req := <-cp.got:
			if req.SigningKey != a.keys.signingB64() {
				t.Errorf("attempt %d signed with key %s, want the agent's", i+1, req.SigningKey)
			}
		case err := <-done:
			t.Fatalf("Serve returned %v after %d registration attempts", err, i)
		case <-time.After(10 * time.Second):
			t.Fatalf("no registration attempt %d", i+1)
		}
	}

	for !a.Registered() {
		time.Sleep(10 * time.Millisecond)
	}

	for _, status := range refusals {
		if want := "status=" + strconv.Itoa(status); !strings.Contains(logs.String(), want) {
			t.Errorf("no log of the refusal with %s", want)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// syncBuffer is a log sink safe for the agent's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitStatus(t *testing.T, rt *runtime.Client, id, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		deps, err := rt.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}

		for _, d := range deps {
			if d.ID == id && d.Status == want {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("deployment %s never reached %s", id, want)
}

func TestDeployIdempotencyKey(t *testing.T) {
	rt := startRuntime(t)
	_, srv := newTestAgent(t, rt)
	spec := `{"app_name":"once","cmd":["/bin/sh","-c","sleep 30"]}`
	post := func(key, body string) reply {
		req, _ := http.NewRequest("POST", srv.URL+"/deploy", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer good")
		req.Header.Set(IdempotencyHeader, key)

		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return reply{resp.StatusCode, string(b)}
	}

	first := post("key-0123456789", spec)
	again := post("key-0123456789", spec)
	if first.status != 200 || again.status != 200 || first.body != again.body {
		t.Fatalf("repeated key: %v then %v, want the same 200 reply", first, again)
	}

	if r := post("key-0123456789", `{"app_name":"other","cmd":["true"]}`); r.status != 409 {
		t.Errorf("same key, other spec = %v, want 409", r)
	}
	if r := post("short", spec); r.status != 400 {
		t.Errorf("malformed key = %v, want 400", r)
	}

	deps, err := rt.List(context.Background())
	if err != nil || len(deps) != 1 {
		t.Errorf("runtime deployments = %d (%v), want exactly one", len(deps), err)
	}
}

func TestPublicSourceHidesArguments(t *testing.T) {
	tests := map[string]string{
		"/bin/sh -c echo $SECRET=hunter2":       "sh",
		"busybox httpd -p 8080":                 "busybox",
		"devopsdefender/dd@v1.2.3":              "devopsdefender/dd@v1.2.3",
		"mgoltzsche/podman-static@latest":       "mgoltzsche/podman-static@latest",
		"curl -H Authorization:x https://a/b@c": "curl",
		"":                                      "",
	}

	for in, want := range tests {
		if got := publicSource(in); got != want {
			t.Errorf("publicSource(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReattestNonceRoute: an agent re-attests with a nonce from its own
// route, and from the public one when the control plane (of an earlier
// release) has no such route.
func TestReattestNonceRoute(t *testing.T) {
	rt := startRuntime(t)
	for _, agentNonce := range []bool{true, false} {
		cp := &fakeCP{t: t, got: make(chan cpapi.RegisterRequest, 4), agentNonce: agentNonce}
		cpSrv := httptest.NewServer(cp)
		a, err := New(Options{VMName: "vm-1", Runtime: rt, Auth: fakeAuth{},
			ControlPlaneURL: cpSrv.URL, Origin: "http://127.0.0.1:1", SyncInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}

		ctx, _, stop := serveAgent(t, a)
		<-cp.got
		for !a.Registered() {
			time.Sleep(10 * time.Millisecond)
		}

		if err := a.reattest(ctx); err != nil {
			t.Errorf("agent nonce route %v: reattest = %v", agentNonce, err)
		}

		stop()
		cpSrv.Close()

		// the first nonce is the registration's, the second the re-attestation's
		want := []string{"/register/nonce", "/register/nonce"}
		if agentNonce {
			want[1] = "/agents/dd-test-agent-1/nonce"
		}
		cp.mu.Lock()
		if !slices.Equal(cp.nonces, want) {
			t.Errorf("agent nonce route %v: nonces from %q, want %q", agentNonce, cp.nonces, want)
		}
		cp.mu.Unlock()
	}
}

// serveAgent serves a on a loopback port. stop, also run at the test's
// end, cancels ctx and checks that Serve ended cleanly.
func serveAgent(t *testing.T, a *Agent) (ctx context.Context, base string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()

	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}

	t.Cleanup(stop)
	return ctx, "http://" + ln.Addr().String(), stop
}
