package cp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

const testAdminToken = "admin-token-0123456789abcdef0123456789"

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testIngress is the local edge's provider, a full implementation of
// ingress.Provider, with an injectable creation failure, and the URL at
// which each public hostname answers in the test (a fake agent's server).
type testIngress struct {
	*localedge.Provider

	mu        sync.Mutex
	createErr error
	creates   int
	urls      map[string]string // hostname -> URL; default http://<hostname>

	// calling, if set, runs in each CreateTunnel, ReplaceIngress and
	// DeleteTunnel with the tunnel name or id, e.g. to hold the call up.
	calling func(op, name string)
}

func newTestIngress(t testing.TB, now func() time.Time) *testIngress {
	t.Helper()
	edge, err := localedge.New(localedge.Options{Port: 1})
	if err != nil {
		t.Fatal(err)
	}

	p, err := localedge.NewProvider(edge, localedge.ProviderOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return &testIngress{Provider: p, urls: map[string]string{}}
}

func (f *testIngress) CreateTunnel(ctx context.Context, name string,
	in ingress.Ingress) (ingress.Tunnel, error) {
	f.mu.Lock()
	f.creates++
	err, calling := f.createErr, f.calling
	f.mu.Unlock()
	if err != nil {
		return ingress.Tunnel{}, err
	}

	if calling != nil {
		calling("create", name)
	}
	return f.Provider.CreateTunnel(ctx, name, in)
}

// DeleteTunnel lists the records pointing at the tunnel, then deletes
// them by id, as the Cloudflare provider does; calling runs in between.
func (f *testIngress) DeleteTunnel(ctx context.Context, tunnelID string) error {
	var ids []string
	for _, r := range f.Provider.List(ctx, ingress.ListOptions{}).Records {
		if r.TunnelID() == tunnelID {
			ids = append(ids, r.ID)
		}
	}

	f.mu.Lock()
	calling := f.calling
	f.mu.Unlock()
	if calling != nil {
		calling("delete", tunnelID)
	}

	for _, id := range ids {
		if err := f.Provider.DeleteRecord(ctx, id); err != nil {
			return err
		}
	}
	return f.Provider.DeleteTunnel(ctx, tunnelID)
}

func (f *testIngress) ReplaceIngress(ctx context.Context, tunnelID string,
	in ingress.Ingress) error {
	f.mu.Lock()
	calling := f.calling
	f.mu.Unlock()

	if calling != nil {
		calling("replace", tunnelID)
	}
	return f.Provider.ReplaceIngress(ctx, tunnelID, in)
}

func (f *testIngress) publicURL(hostname string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u, ok := f.urls[hostname]; ok {
		return u
	}
	return "http://" + hostname
}

// setURL makes an agent's hostname and its API hostname answer at u.
func (f *testIngress) setURL(hostname, u string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.urls[hostname] = u
	f.urls[ingress.AgentAPIHostname(hostname)] = u
}

// owner returns the tunnel the hostname's record points at.
func (f *testIngress) owner(hostname string) string { return f.Hostnames()[hostname] }

// routes returns how many hostnames have a record.
func (f *testIngress) routes() int { return len(f.Hostnames()) }

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// syncBuffer is a log sink safe for the collector's goroutines.
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

type testEnv struct {
	srv     *Server
	store   *fleet.Store
	ingress *testIngress
	clock   *clock
	logs    *syncBuffer
	dbPath  string
}

// newTestEnv starts a server on a fresh store in a temporary directory.
func newTestEnv(t *testing.T, mutate func(*Options)) *testEnv {
	t.Helper()
	return newTestEnvAt(t, filepath.Join(t.TempDir(), "fleet.db"), mutate)
}

func newTestEnvAt(t testing.TB, dbPath string, mutate func(*Options)) *testEnv {
	t.Helper()
	store, err := fleet.Open(context.Background(), dbPath, fleet.Options{})
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { store.Close() })
	env := &testEnv{store: store, clock: &clock{t: t0}, logs: &syncBuffer{}, dbPath: dbPath}
	env.ingress = newTestIngress(t, env.clock.Now)
	opts := Options{
		Store:      store,
		Env:        "dev",
		Hostname:   "app.localhost",
		Domain:     "localhost",
		AdminToken: testAdminToken,
		Ingress:    env.ingress,
		PublicURL:  env.ingress.publicURL,
		Now:        env.clock.Now,
		Logger:     slog.New(slog.NewTextHandler(env.logs, nil)),
		StaleAfter: 30 * time.Second,
		DeadAfter:  5 * time.Minute,
		Appraiser:  fakeAppraiser{},
	}
	if mutate != nil {
		mutate(&opts)
	}

	env.srv, err = New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return env
}

// do sends one request through the server's handler.
func (e *testEnv) do(method, path, body string, header map[string]string) *httptest.ResponseRecorder {
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, path, nil)
	} else {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
	}

	for k, v := range header {
		r.Header.Set(k, v)
	}

	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, r)
	return rec
}

func admin() map[string]string {
	return map[string]string{"Authorization": "Bearer " + testAdminToken}
}

var errIngressDown = errors.New("ingress down")

func httpRequest(method, path string, header map[string]string) *http.Request {
	r := httptest.NewRequest(method, path, nil)
	for k, v := range header {
		r.Header.Set(k, v)
	}
	return r
}

func serve(e *testEnv, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, r)
	return rec
}

// fakeAppraiser accepts a "quote" that is the text "fakequote:" followed by
// the 64 report-data bytes it commits to, and reports a fixed MRTD.
type fakeAppraiser struct{}

var fakeMRTD = bytes.Repeat([]byte{0xaa}, 48)

func fakeQuote(rd [64]byte) string {
	return base64.StdEncoding.EncodeToString(append([]byte("fakequote:"), rd[:]...))
}

func (fakeAppraiser) Appraise(_ context.Context, ev ita.Evidence) (*ita.Appraisal, error) {
	raw := ev.Quote
	if !bytes.HasPrefix(raw, []byte("fakequote:")) {
		return nil, &ita.EvidenceError{Reason: ita.ReasonQuote, Err: errors.New("not a quote")}
	}
	var rd tdx.ReportData
	copy(rd[:], raw[len("fakequote:"):])
	a := &ita.Appraisal{Type: "simulated", TCB: &tdx.TCB{Status: "UpToDate"},
		Measurements: tdx.Measurements{MRTD: fakeMRTD, ReportData: rd}}
	return a, a.CheckBinding(ev.ReportData)
}

// fakePolicy refuses TDs whose MRTD is not fakeMRTD.
type fakePolicy struct{ want []byte }

func (p fakePolicy) Check(m *tdx.Measurements, _ *tdx.TCB) error {
	if !bytes.Equal(m.MRTD, p.want) {
		return errors.New("mrtd: not in the allowlist")
	}
	return nil
}

// testAgent holds an agent's keys and builds its signed requests.
type testAgent struct {
	keys attestbind.Keys
	priv ed25519.PrivateKey
}

func newTestAgent(t *testing.T) *testAgent {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	noise := make([]byte, 32)
	rand.Read(noise)
	return &testAgent{keys: attestbind.Keys{Signing: pub, Noise: noise}, priv: priv}
}

// nonce asks the control plane for a registration nonce.
func (e *testEnv) nonce(t *testing.T) string {
	t.Helper()
	rec := e.do("POST", "/register/nonce", "", nil)
	var n cpapi.NonceResponse
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &n) != nil {
		t.Fatalf("nonce: %d %s", rec.Code, rec.Body)
	}

	return n.Nonce
}

// evidence returns fake evidence bound to purpose, nonce and the keys.
func (a *testAgent) evidence(t *testing.T, purpose, nonce string) agentapi.Evidence {
	t.Helper()
	raw, _ := base64.StdEncoding.DecodeString(nonce)
	rd, err := attestbind.ReportData(purpose, raw, a.keys)
	if err != nil {
		t.Fatal(err)
	}

	return agentapi.Evidence{AttestationType: "simulated", QuoteFormat: "fake",
		QuoteB64: fakeQuote(rd)}
}

// registration returns a signed registration body for vm with a fresh
// nonce, and its headers.
func (a *testAgent) registration(t *testing.T, e *testEnv, vm string) (string, map[string]string) {
	t.Helper()
	n := e.nonce(t)
	return a.sign(cpapi.RegisterRequest{VMName: vm, Origin: "http://127.0.0.1:9101", Nonce: n,
		SigningKey: base64.StdEncoding.EncodeToString(a.keys.Signing),
		NoiseKey:   base64.StdEncoding.EncodeToString(a.keys.Noise),
		Evidence:   a.evidence(t, attestbind.PurposeRegister, n)})
}

// sign encodes v and returns it with its signature header.
func (a *testAgent) sign(v any) (string, map[string]string) {
	body, _ := json.Marshal(v)
	return string(body), map[string]string{"Content-Type": "application/json",
		attestbind.SignatureHeader: attestbind.Sign(a.priv, body)}
}

// request builds a registration request for vm with the agent's keys.
func (a *testAgent) request(vm, nonce string, ev agentapi.Evidence) cpapi.RegisterRequest {
	return cpapi.RegisterRequest{VMName: vm, Origin: "http://127.0.0.1:9101", Nonce: nonce,
		SigningKey: base64.StdEncoding.EncodeToString(a.keys.Signing),
		NoiseKey:   base64.StdEncoding.EncodeToString(a.keys.Noise), Evidence: ev}
}
