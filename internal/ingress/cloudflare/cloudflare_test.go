package cloudflare

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/ingress/cloudflare/cftest"
)

const (
	testToken  = "test-api-token-0123456789"
	testDomain = "d.example"
	testEnv    = "pr-7"
)

// sleeps records the waits between attempts instead of sleeping.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d = append(s.d, d)
	return ctx.Err()
}

func (s *sleeps) waits() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.d)
}

type fixture struct {
	fake   *cftest.Server
	p      *Provider
	sleeps *sleeps
}

// newFixture starts a fake API and a provider for it. edit may change the
// fake's and the provider's options.
func newFixture(t *testing.T, maxPerPage int, edit func(*Options)) *fixture {
	t.Helper()
	fake := cftest.New(t, cftest.Options{Token: testToken, MaxPerPage: maxPerPage})
	sl := &sleeps{}
	opts := Options{APIToken: testToken, AccountID: fake.AccountID(), ZoneID: fake.ZoneID(),
		Domain: testDomain, Env: testEnv, BaseURL: fake.URL(), Sleep: sl.sleep,
		RequestTimeout: 5 * time.Second}
	if edit != nil {
		edit(&opts)
	}

	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{fake: fake, p: p, sleeps: sl}
}

func (f *fixture) routes() []string {
	var out []string
	for _, r := range f.fake.Requests() {
		out = append(out, r.Route)
	}
	return out
}

// recordsByName returns the fake's records as name → content.
func (f *fixture) recordsByName(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range f.fake.Records() {
		if _, dup := out[r.Name]; dup {
			t.Errorf("two records named %s", r.Name)
		}
		out[r.Name] = r.Content
	}

	return out
}

const agentHost = "dd-pr-7-agent-ab12cd34." + testDomain

func agentIngress(claims ...ingress.Claim) ingress.Ingress {
	return ingress.AgentIngress(agentHost, claims)
}

func TestCreateTunnel(t *testing.T) {
	f := newFixture(t, 0, nil)
	ctx := context.Background()
	in := agentIngress(ingress.Claim{App: "site", Label: "web", Port: 9000})
	tun, err := f.p.CreateTunnel(ctx, "dd-pr-7-agent-ab12cd34", in)
	if err != nil {
		t.Fatalf("CreateTunnel: %v", err)
	}

	got, ok := f.fake.Tunnel(tun.ID)
	if !ok {
		t.Fatalf("tunnel %s not in the fake", tun.ID)
	}

	if got.Name != "dd-pr-7-agent-ab12cd34" || got.ConfigSrc != "cloudflare" {
		t.Errorf("tunnel = name %q config_src %q", got.Name, got.ConfigSrc)
	}
	if len(got.Secret) < 32 {
		t.Errorf("tunnel secret is %d bytes, want at least 32", len(got.Secret))
	}
	if tun.Token == "" || !tokenNames(t, tun.Token, tun.ID) {
		t.Errorf("token %q does not name tunnel %s", tun.Token, tun.ID)
	}

	wantRules := []cftest.Rule{
		{Hostname: "dd-pr-7-agent-ab12cd34-web." + testDomain, Service: "http://localhost:9000"},
		{Hostname: "dd-pr-7-api-ab12cd34." + testDomain, Service: "http://localhost:8081"},
		{Hostname: agentHost, Service: "http://localhost:8080"},
		{Service: "http_status:404"},
	}
	if diff := cmp.Diff(wantRules, got.Ingress()); diff != "" {
		t.Errorf("ingress rules (-want +got):\n%s", diff)
	}
	target := tun.ID + ".cfargotunnel.com"

	wantRecords := map[string]string{
		agentHost: target,
		"dd-pr-7-agent-ab12cd34-web." + testDomain: target,
		"dd-pr-7-api-ab12cd34." + testDomain:       target,
	}
	if diff := cmp.Diff(wantRecords, f.recordsByName(t)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}

	for _, r := range f.fake.Records() {
		if !r.Proxied || r.Type != "CNAME" {
			t.Errorf("record %s: type %s proxied %v, want a proxied CNAME", r.Name, r.Type,
				r.Proxied)
		}
	}

	// The catch-all is sent without a hostname at all.
	puts := f.fake.RequestsTo(cftest.RoutePutConfig)
	if len(puts) != 1 || !strings.Contains(puts[0].Body, `{"service":"http_status:404"}`) {
		t.Errorf("PUT configurations bodies = %v", puts)
	}
}

func tokenNames(t *testing.T, token, tunnelID string) bool {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(token)
	if err != nil {
		return false
	}

	var tok struct{ T string }
	return json.Unmarshal(b, &tok) == nil && tok.T == tunnelID
}

// A control plane's new tunnel takes its hostname over from the old one:
// the record is updated in place, never duplicated (cf.md §2.4).
func TestCreateTunnelMovesExistingRecord(t *testing.T) {
	f := newFixture(t, 0, nil)
	ctx := context.Background()
	in := ingress.ControlPlaneIngress("pr-7." + testDomain)
	old, err := f.p.CreateTunnel(ctx, "dd-pr-7-cp-1111", in)
	if err != nil {
		t.Fatal(err)
	}

	unrelated := f.fake.AddRecord("other."+testDomain, "elsewhere.example", time.Now())
	f.fake.ResetRequests()

	cur, err := f.p.CreateTunnel(ctx, "dd-pr-7-cp-2222", in)
	if err != nil {
		t.Fatal(err)
	}

	want := map[string]string{
		"pr-7." + testDomain:       cur.ID + ".cfargotunnel.com",
		"pr-7-shell." + testDomain: cur.ID + ".cfargotunnel.com",
		unrelated.Name:             unrelated.Content,
	}
	if diff := cmp.Diff(want, f.recordsByName(t)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}

	if n := len(f.fake.RequestsTo(cftest.RouteCreateRecord)); n != 0 {
		t.Errorf("%d records created, want updates only", n)
	}

	// Deleting the old tunnel (STONITH) leaves the moved records alone.
	if err := f.p.DeleteTunnel(ctx, old.ID); err != nil {
		t.Fatal(err)
	}

	if diff := cmp.Diff(want, f.recordsByName(t)); diff != "" {
		t.Errorf("records after deleting the old tunnel (-want +got):\n%s", diff)
	}
}

func TestCreateTunnelRollsBack(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *fixture)
	}{
		{"config rejected", func(f *fixture) {
			f.fake.Inject(cftest.RoutePutConfig, cftest.Fault{Status: http.StatusBadRequest,
				Code: cftest.CodeInvalidConfig})
		}},
		{"name held by an A record", func(f *fixture) {
			f.fake.AddRecordOfType("A", "dd-pr-7-api-ab12cd34."+testDomain, "192.0.2.1")
		}},
		{"token unreadable", func(f *fixture) {
			f.fake.Inject(cftest.RouteTunnelToken, cftest.Fault{Status: http.StatusForbidden,
				Code: cftest.CodeAuth})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 0, nil)
			tt.setup(f)
			_, err := f.p.CreateTunnel(context.Background(), "dd-pr-7-agent-ab12cd34",
				agentIngress())
			if err == nil {
				t.Fatal("CreateTunnel succeeded, want an error")
			}

			for _, tun := range f.fake.Tunnels() {
				if tun.DeletedAt.IsZero() {
					t.Errorf("tunnel %s was left behind", tun.Name)
				}
			}

			for _, r := range f.fake.Records() {
				if strings.HasSuffix(r.Content, ".cfargotunnel.com") {
					t.Errorf("record %s was left behind", r.Name)
				}
			}
		})
	}
}

func TestCreateTunnelRefusesBadInput(t *testing.T) {
	f := newFixture(t, 0, nil)
	ctx := context.Background()

	bad := []struct {
		name string
		in   ingress.Ingress
	}{
		{"dd-x-agent-1", ingress.Ingress{Hostname: "a.other.example"}},
		{"dd-x-agent-1", ingress.Ingress{Hostname: "UPPER." + testDomain}},
		{"", agentIngress()},
	}
	for _, b := range bad {
		if _, err := f.p.CreateTunnel(ctx, b.name, b.in); err == nil {
			t.Errorf("CreateTunnel(%q, %+v) succeeded", b.name, b.in)
		}
	}

	if n := len(f.fake.Requests()); n != 0 {
		t.Errorf("bad input sent %d requests", n)
	}
}

func TestReplaceIngress(t *testing.T) {
	f := newFixture(t, 0, nil)
	ctx := context.Background()
	tun, err := f.p.CreateTunnel(ctx, "dd-pr-7-agent-ab12cd34",
		agentIngress(ingress.Claim{App: "site", Label: "web", Port: 9000}))
	if err != nil {
		t.Fatal(err)
	}

	// Another tunnel has since taken over the "www" name this tunnel used
	// to serve; dropping it here must not touch that record.
	f.fake.SetTunnelIngress(tun.ID, []cftest.Rule{
		{Hostname: "dd-pr-7-agent-ab12cd34-web." + testDomain, Service: "http://localhost:9000"},
		{Hostname: "dd-pr-7-agent-ab12cd34-www." + testDomain, Service: "http://localhost:9001"},
		{Hostname: agentHost, Service: "http://localhost:8080"},
		{Service: "http_status:404"},
	})

	f.fake.AddRecord("dd-pr-7-agent-ab12cd34-www."+testDomain, "other.cfargotunnel.com",
		time.Now())

	err = f.p.ReplaceIngress(ctx, tun.ID,
		agentIngress(ingress.Claim{App: "oracle", Label: "oracle", Port: 9100}))
	if err != nil {
		t.Fatalf("ReplaceIngress: %v", err)
	}

	target := tun.ID + ".cfargotunnel.com"
	want := map[string]string{
		agentHost:                            target,
		"dd-pr-7-api-ab12cd34." + testDomain: target,
		"dd-pr-7-agent-ab12cd34-oracle." + testDomain: target,
		"dd-pr-7-agent-ab12cd34-www." + testDomain:    "other.cfargotunnel.com",
	}
	if diff := cmp.Diff(want, f.recordsByName(t)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}

	rules, err := f.p.TunnelIngress(ctx, tun.ID)
	if err != nil {
		t.Fatal(err)
	}

	wantRules := agentIngress(ingress.Claim{App: "oracle", Label: "oracle", Port: 9100}).Rules()
	if diff := cmp.Diff(wantRules, rules); diff != "" {
		t.Errorf("TunnelIngress (-want +got):\n%s", diff)
	}
	if err := f.p.ReplaceIngress(ctx, "no-such-tunnel", agentIngress()); !errors.Is(err,
		ingress.ErrNotFound) {
		t.Errorf("ReplaceIngress of an unknown tunnel = %v, want ErrNotFound", err)
	}
}

func TestDeleteTunnel(t *testing.T) {
	f := newFixture(t, 2, nil) // records of the tunnel span pages
	ctx := context.Background()
	tun, err := f.p.CreateTunnel(ctx, "dd-pr-7-agent-ab12cd34", agentIngress(
		ingress.Claim{App: "a", Label: "web", Port: 9000},
		ingress.Claim{App: "b", Label: "www", Port: 9001}))
	if err != nil {
		t.Fatal(err)
	}

	// A record nobody remembers, pointing at the tunnel, goes too.
	f.fake.AddRecord("stray."+testDomain, tun.ID+".cfargotunnel.com", time.Now())
	keep := f.fake.AddRecord("keep."+testDomain, "other.cfargotunnel.com", time.Now())
	f.fake.Connect(tun.ID)

	if err := f.p.DeleteTunnel(ctx, tun.ID); err != nil {
		t.Fatalf("DeleteTunnel: %v", err)
	}

	got, _ := f.fake.Tunnel(tun.ID)
	if got.DeletedAt.IsZero() || got.Connections != 0 {
		t.Errorf("tunnel after delete: deleted_at %v, %d connections", got.DeletedAt,
			got.Connections)
	}
	if diff := cmp.Diff(map[string]string{keep.Name: keep.Content},
		f.recordsByName(t)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}

	// Deleting again, or deleting what never existed, is not an error.
	if err := f.p.DeleteTunnel(ctx, tun.ID); err != nil {
		t.Errorf("second DeleteTunnel: %v", err)
	}

	if err := f.p.DeleteTunnel(ctx, "no-such-tunnel"); err != nil {
		t.Errorf("DeleteTunnel of an unknown tunnel: %v", err)
	}
	if err := f.p.DeleteRecord(ctx, "no-such-record"); err != nil {
		t.Errorf("DeleteRecord of an unknown record: %v", err)
	}
}

func TestTunnel(t *testing.T) {
	f := newFixture(t, 0, nil)
	ctx := context.Background()
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	live := f.fake.AddTunnel("dd-pr-7-agent-aa", created)
	gone := f.fake.AddTunnel("dd-pr-7-agent-bb", created)
	if err := f.p.DeleteTunnel(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}

	got, err := f.p.Tunnel(ctx, live.ID)
	if err != nil {
		t.Fatal(err)
	}

	want := ingress.TunnelInfo{ID: live.ID, Name: live.Name, CreatedAt: created,
		Status: "inactive"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Tunnel (-want +got):\n%s", diff)
	}

	if got, err := f.p.Tunnel(ctx, gone.ID); err != nil || !got.Deleted() {
		t.Errorf("Tunnel(soft-deleted) = %+v, %v; want Deleted", got, err)
	}
	if _, err := f.p.Tunnel(ctx, "no-such-tunnel"); !errors.Is(err, ingress.ErrNotFound) {
		t.Errorf("Tunnel(unknown) = %v, want ErrNotFound", err)
	}
}

func TestNewValidates(t *testing.T) {
	const secret = "secret-token-value"
	good := Options{APIToken: secret, AccountID: "a", ZoneID: "z", Domain: "d.example",
		Env: "pr-7"}
	if _, err := New(good); err != nil {
		t.Fatalf("New(good) = %v", err)
	}

	for name, edit := range map[string]func(*Options){
		"no token":   func(o *Options) { o.APIToken = "" },
		"no account": func(o *Options) { o.AccountID = "" },
		"no zone":    func(o *Options) { o.ZoneID = " " },
		"no domain":  func(o *Options) { o.Domain = "" },
		"bad domain": func(o *Options) { o.Domain = "Not A Domain" },
		"no env":     func(o *Options) { o.Env = "" },
		"bad env":    func(o *Options) { o.Env = "PR 7" },
		"negative":   func(o *Options) { o.MaxAttempts = -1 },
	} {
		o := good
		edit(&o)
		if _, err := New(o); err == nil {
			t.Errorf("New(%s) succeeded", name)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("New(%s) error shows the token: %v", name, err)
		}
	}
}
