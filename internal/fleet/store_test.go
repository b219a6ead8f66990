package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}

	t.Cleanup(func() { s.Close() })
	return s
}

func newAgent(id, vm, token string) Agent {
	return Agent{
		ID:           id,
		VMName:       vm,
		Hostname:     vm + ".localhost",
		URL:          "http://" + vm + ".localhost:8443",
		Origin:       "http://127.0.0.1:9000",
		Status:       StatusRegistering,
		RegisteredAt: t0,
		Attestation: Attestation{
			Type: "simulated", QuoteFormat: "sim", QuoteB64: "cXVvdGU=",
			ReportDataB64: "cmQ=", Status: "unverified",
		},
		TokenHash: HashToken(token),
	}
}

func TestRegisterGetList(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "fleet.db"))

	b := newAgent("dd-dev-agent-0000000b", "bravo", "tok-b")
	a := newAgent("dd-dev-agent-0000000a", "alpha", "tok-a")
	for _, ag := range []Agent{b, a} {
		replaced, err := s.Register(ctx, ag, nil)
		if err != nil || len(replaced) != 0 {
			t.Fatalf("Register(%s) = %v, %v; want nothing replaced", ag.ID, replaced, err)
		}
	}

	got, err := s.Get(ctx, a.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}

	a.Units = []agentapi.Unit{}
	b.Units = []agentapi.Unit{}
	if diff := cmp.Diff(a, got); diff != "" {
		t.Errorf("Get mismatch (-want +got):\n%s", diff)
	}

	list, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if diff := cmp.Diff([]Agent{a, b}, list); diff != "" {
		t.Errorf("List mismatch, want sorted by vm_name (-want +got):\n%s", diff)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown) error = %v, want ErrNotFound", err)
	}
	if _, err := s.ByVMName(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ByVMName(unknown) error = %v, want ErrNotFound", err)
	}

	for _, tt := range []struct {
		names []string
		want  []Agent
	}{
		{nil, nil},
		{[]string{"nope"}, nil},
		{[]string{"bravo", "nope", "alpha"}, []Agent{a, b}},
		{[]string{"bravo"}, []Agent{b}},
	} {
		got, err := s.ByVMNames(ctx, tt.names)
		if err != nil || !cmp.Equal(tt.want, got, cmpopts.EquateEmpty()) {
			t.Errorf("ByVMNames(%q) = %v, %v; want %v", tt.names, ids(got), err, ids(tt.want))
		}
	}
}

func TestRegisterReplacesSameVMName(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "fleet.db"))

	old := newAgent("dd-dev-agent-00000001", "web", "old")
	other := newAgent("dd-dev-agent-00000002", "db", "other")
	for _, ag := range []Agent{old, other} {
		if _, err := s.Register(ctx, ag, nil); err != nil {
			t.Fatal(err)
		}
	}

	replacement := newAgent("dd-dev-agent-00000003", "web", "new")
	replaced, err := s.Register(ctx, replacement, nil)
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	if len(replaced) != 1 || replaced[0].ID != old.ID {
		t.Errorf("replaced = %v, want [%s]", ids(replaced), old.ID)
	}

	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{other.ID, replacement.ID}, ids(list)); diff != "" {
		t.Errorf("after replace (-want +got):\n%s", diff)
	}
}

func TestRegisterRejectsBadInputAndChangesNothing(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "fleet.db"))
	first := newAgent("dd-dev-agent-00000001", "web", "tok")
	if _, err := s.Register(ctx, first, nil); err != nil {
		t.Fatal(err)
	}

	tests := map[string]func(a *Agent){
		"duplicate id":     func(a *Agent) { a.ID = first.ID; a.VMName = "other" },
		"empty id":         func(a *Agent) { a.ID = "" },
		"bad vm_name":      func(a *Agent) { a.VMName = "Web_1" },
		"bad status":       func(a *Agent) { a.Status = "zombie" },
		"no token hash":    func(a *Agent) { a.TokenHash = nil },
		"no registered_at": func(a *Agent) { a.RegisteredAt = time.Time{} },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			a := newAgent("dd-dev-agent-00000009", "web", "tok2")
			mutate(&a)
			if _, err := s.Register(ctx, a, nil); err == nil {
				t.Fatal("Register succeeded, want error")
			}

			list, err := s.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{first.ID}, ids(list)); diff != "" {
				t.Errorf("store changed (-want +got):\n%s", diff)
			}
		})
	}

	a := newAgent(first.ID, "other", "x")
	if _, err := s.Register(ctx, a, nil); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate id error = %v, want ErrExists", err)
	}
}

// TestRegisterRecordsItsAuditEntry checks that a registration and its
// audit entry are committed together: both, or neither when either fails.
func TestRegisterRecordsItsAuditEntry(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "fleet.db"))

	old := newAgent("dd-dev-agent-00000001", "web", "old")
	if _, err := s.Register(ctx, old, nil); err != nil {
		t.Fatal(err)
	}

	var sawReplaced []string
	event := func(action audit.Action) func([]Agent) audit.Event {
		return func(replaced []Agent) audit.Event {
			sawReplaced = ids(replaced)
			return audit.Event{Actor: audit.Agent("dd-dev-agent-00000002"), Action: action,
				Target: "dd-dev-agent-00000002", Outcome: audit.OutcomeOK}
		}
	}

	// An entry the log refuses leaves the registry as it was.
	next := newAgent("dd-dev-agent-00000002", "web", "new")
	if _, err := s.Register(ctx, next, event("")); !errors.Is(err, audit.ErrInvalid) {
		t.Fatalf("Register with an invalid entry = %v, want audit.ErrInvalid", err)
	}
	if got, err := s.ByVMName(ctx, "web"); err != nil || got.ID != old.ID {
		t.Errorf("web after the failed registration = %s, %v; want %s", got.ID, err, old.ID)
	}

	// A refused registration records nothing.
	dup := newAgent(old.ID, "db", "dup")
	if _, err := s.Register(ctx, dup, event(audit.ActionRegistration)); !errors.Is(err,
		ErrExists) {
		t.Fatalf("Register of a taken id = %v, want ErrExists", err)
	}
	if n := auditEntries(t, s); n != 0 {
		t.Fatalf("audit log holds %d entries after two failures, want 0", n)
	}

	if _, err := s.Register(ctx, next, event(audit.ActionRegistration)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{old.ID}, sawReplaced); diff != "" {
		t.Errorf("records the event saw replaced (-want +got):\n%s", diff)
	}
	if n := auditEntries(t, s); n != 1 {
		t.Errorf("audit log holds %d entries, want the registration's 1", n)
	}
}

func auditEntries(t *testing.T, s *Store) int {
	t.Helper()
	page, err := s.Audit().List(context.Background(), audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return len(page.Entries)
}

func TestHealthAndStatusUpdates(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "fleet.db"))
	a := newAgent("dd-dev-agent-00000001", "web", "tok")
	if _, err := s.Register(ctx, a, nil); err != nil {
		t.Fatal(err)
	}

	exit := 3
	units := []agentapi.Unit{{ID: "u1", AppName: "hello", Status: "exited", ExitCode: &exit}}
	seen := t0.Add(5 * time.Second)
	if err := s.SetStatus(ctx, a.ID, StatusStale, "connection refused"); err != nil {
		t.Fatalf("SetStatus: %v", err)
	}
	if err := s.UpdateHealth(ctx, a.ID, seen, units); err != nil {
		t.Fatalf("UpdateHealth: %v", err)
	}

	got, err := s.Get(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusHealthy || !got.LastSeen.Equal(seen) || got.LastError != "" {
		t.Errorf("after UpdateHealth: status %s, last_seen %v, last_error %q",
			got.Status, got.LastSeen, got.LastError)
	}
	if diff := cmp.Diff(units, got.Units); diff != "" {
		t.Errorf("units (-want +got):\n%s", diff)
	}

	c, err := s.Counts(ctx)
	if err != nil || c != (Counts{Agents: 1, Healthy: 1}) {
		t.Errorf("Counts = %+v, %v; want 1 agent, 1 healthy", c, err)
	}

	if err := s.SetStatus(ctx, a.ID, "zombie", ""); err == nil {
		t.Error("SetStatus(invalid) succeeded")
	}
	if err := s.SetStatus(ctx, "nope", StatusDead, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetStatus(unknown) = %v, want ErrNotFound", err)
	}
	if err := s.UpdateHealth(ctx, "nope", seen, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateHealth(unknown) = %v, want ErrNotFound", err)
	}
}

func TestAuthenticateAgent(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "fleet.db"))
	const token = "dd_agent_secret-token"
	a := newAgent("dd-dev-agent-00000001", "web", token)
	if _, err := s.Register(ctx, a, nil); err != nil {
		t.Fatal(err)
	}

	stored, err := s.Get(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(stored.TokenHash, []byte(token)) || string(stored.TokenHash) == token {
		t.Fatal("store holds the token itself")
	}

	if got, err := s.AuthenticateAgent(ctx, a.ID, token); err != nil || got.ID != a.ID {
		t.Errorf("AuthenticateAgent(right) = %s, %v", got.ID, err)
	}
	tests := map[string]struct{ id, token string }{
		"wrong token":   {a.ID, token + "x"},
		"empty token":   {a.ID, ""},
		"unknown agent": {"dd-dev-agent-ffffffff", token},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := s.AuthenticateAgent(ctx, tc.id, tc.token); !errors.Is(err, ErrBadToken) {
				t.Errorf("error = %v, want ErrBadToken", err)
			}
		})
	}
}

func TestRestartKeepsAgents(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}

	a := newAgent("dd-dev-agent-00000001", "web", "tok")
	if _, err := s.Register(ctx, a, nil); err != nil {
		t.Fatal(err)
	}

	code := 0
	units := []agentapi.Unit{{ID: "u1", AppName: "hello", Status: "running", ExitCode: &code}}
	if err := s.UpdateHealth(ctx, a.ID, t0.Add(time.Minute), units); err != nil {
		t.Fatal(err)
	}
	if err := s.SetStatus(ctx, a.ID, StatusStale, "timeout"); err != nil {
		t.Fatal(err)
	}

	before, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s2 := openStore(t, path)
	after, err := s2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("state changed across restart (-before +after):\n%s", diff)
	}
	if _, err := s2.AuthenticateAgent(ctx, a.ID, "tok"); err != nil {
		t.Errorf("token not accepted after restart: %v", err)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s := openStore(t, path)
	if _, err := s.db.ExecContext(ctx, "PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}

	s.Close()
	if s2, err := Open(ctx, path, Options{}); err == nil {
		s2.Close()
		t.Fatal("Open of a newer schema succeeded")
	}
}

func TestOpenRejectsBadPath(t *testing.T) {
	for _, p := range []string{"", "fleet.db?mode=ro"} {
		if s, err := Open(context.Background(), p, Options{}); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

func ids(agents []Agent) []string {
	out := []string{}
	for _, a := range agents {
		out = append(out, a.ID)
	}
	return out
}

// Two stores on one file (two processes, or a restart that overlaps the old
// one) write concurrently; SQLite's locks, not luck, keep them apart.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s1, s2 := openStore(t, path), openStore(t, path)
	const n = 4
	for i := range n {
		a := newAgent(fmt.Sprintf("dd-dev-agent-%08d", i), fmt.Sprintf("vm%d", i), "tok")
		if _, err := s1.Register(ctx, a, nil); err != nil {
			t.Fatal(err)
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	for i := range n {
		id := fmt.Sprintf("dd-dev-agent-%08d", i)
		wg.Go(func() { errs <- s1.UpdateHealth(ctx, id, t0, nil) })
		wg.Go(func() { errs <- s2.SetStatus(ctx, id, StatusStale, "x") })
		wg.Go(func() {
			a := newAgent(fmt.Sprintf("dd-dev-agent-%08d", i+n), fmt.Sprintf("vm%d", i), "t")
			_, err := s2.Register(ctx, a, nil)
			errs <- err
		})
		wg.Go(func() { _, err := s1.List(ctx); errs <- err })
	}

	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("concurrent write: %v", err)
		}
	}

	list, err := s1.List(ctx)
	if err != nil || len(list) != n {
		t.Errorf("List = %d agents, %v; want %d (each vm_name once)", len(list), err, n)
	}
}

func TestAttestationAndKeysRoundTrip(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s := openStore(t, path)
	a := newAgent("dd-test-agent-1", "vm-1", "tok")
	a.SigningKey = bytes.Repeat([]byte{1}, 32)
	a.NoiseKey = bytes.Repeat([]byte{2}, 32)
	if _, err := s.Register(ctx, a, nil); err != nil {
		t.Fatal(err)
	}

	at := Attestation{Type: "simulated", Verified: true, Status: "verified", MRTD: "ab",
		TCBStatus: "UpToDate", VerifiedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		TCBDate:      time.Date(2025, 11, 12, 0, 0, 0, 0, time.UTC),
		Measurements: &tdx.Measurements{MRTD: tdx.Hex{0xab}, Debug: false}}
	if err := s.UpdateAttestation(ctx, a.ID, at); err != nil {
		t.Fatal(err)
	}

	s.Close()

	s = openStore(t, path)
	got, err := s.Get(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(at, got.Attestation, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("attestation after reopen (-want +got):\n%s", diff)
	}
	if !bytes.Equal(got.SigningKey, a.SigningKey) || !bytes.Equal(got.NoiseKey, a.NoiseKey) {
		t.Errorf("keys after reopen = %x %x", got.SigningKey, got.NoiseKey)
	}
	if err := s.UpdateAttestation(ctx, "nope", at); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateAttestation of an unknown agent = %v, want ErrNotFound", err)
	}
}

func TestTenantPersists(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s := openStore(t, path)
	a := newAgent("dd-test-agent-1", "vm-1", "tok")
	if _, err := s.Register(ctx, a, nil); err != nil {
		t.Fatal(err)
	}

	acme := &ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "acme", ID: 7}
	prev, err := s.SetTenant(ctx, a.ID, acme)
	if err != nil || prev != nil {
		t.Fatalf("SetTenant = %v, %v; want no previous tenant", prev, err)
	}

	s.Close()

	s = openStore(t, path)
	got, err := s.Get(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(acme, got.Tenant); diff != "" {
		t.Errorf("tenant after reopen (-want +got):\n%s", diff)
	}

	prev, err = s.SetTenant(ctx, a.ID, nil)
	if err != nil || prev == nil || *prev != *acme {
		t.Errorf("clearing = %v, %v; want the previous tenant", prev, err)
	}
	if got, _ := s.Get(ctx, a.ID); got.Tenant != nil {
		t.Errorf("tenant after clearing = %v", got.Tenant)
	}
	if _, err := s.SetTenant(ctx, "nope", acme); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetTenant of an unknown agent = %v", err)
	}
}

// TestReRegistrationTenant checks that a registration replacing a record
// of the same VM name takes its tenant over only with the same signing
// key.
func TestReRegistrationTenant(t *testing.T) {
	acme := &ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "acme", ID: 7}
	globex := &ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "globex", ID: 8}
	keyA, keyB := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	tests := map[string]struct {
		oldKey, newKey []byte
		newTenant      *ghoidc.Principal
		want           *ghoidc.Principal
	}{
		"same key keeps the tenant":       {oldKey: keyA, newKey: keyA, want: acme},
		"other key starts without tenant": {oldKey: keyA, newKey: keyB},
		"no recorded key proves nothing":  {oldKey: nil, newKey: nil},
		"an explicit tenant wins":         {oldKey: keyA, newKey: keyA, newTenant: globex, want: globex},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t, filepath.Join(t.TempDir(), "fleet.db"))
			old := newAgent("dd-test-agent-1", "vm-1", "tok")
			old.SigningKey = tt.oldKey
			if _, err := s.Register(ctx, old, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetTenant(ctx, old.ID, acme); err != nil {
				t.Fatal(err)
			}

			a := newAgent("dd-test-agent-2", "vm-1", "tok2")
			a.SigningKey, a.Tenant = tt.newKey, tt.newTenant
			replaced, err := s.Register(ctx, a, nil)
			if err != nil || len(replaced) != 1 {
				t.Fatalf("Register = %v, %v; want the old record replaced", ids(replaced), err)
			}

			got, err := s.Get(ctx, a.ID)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got.Tenant); diff != "" {
				t.Errorf("tenant after re-registration (-want +got):\n%s", diff)
			}
			if byName, err := s.ByVMName(ctx, "vm-1"); err != nil || byName.ID != a.ID {
				t.Errorf("ByVMName = %s, %v; want %s", byName.ID, err, a.ID)
			}
		})
	}
}

// TestAuditSharesTheDatabase checks that the audit log lives in the
// registry's file and survives a reopen, and that its migration leaves the
// registry's schema version alone.
func TestAuditSharesTheDatabase(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s := openStore(t, path)
	ev := audit.Event{Actor: audit.System("test"), Action: audit.ActionRegistration,
		Target: "dd-test-agent-1", Outcome: audit.OutcomeOK}
	if _, err := s.Audit().Append(ctx, ev); err != nil {
		t.Fatal(err)
	}

	s.Close()

	s = openStore(t, path)
	head, err := s.Audit().Verify(ctx)
	if err != nil || head.Seq != 1 {
		t.Errorf("audit after reopen: head %+v, %v; want one verified entry", head, err)
	}

	var v int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil ||
		v != len(migrations) {
		t.Errorf("user_version = %d, %v; want %d", v, err, len(migrations))
	}
}

func TestTunnelAndClaimsPersist(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s := openStore(t, path)
	a := newAgent("dd-dev-agent-0000000a", "alpha", "tok-a")
	a.TunnelID = "5f0c2a9e-0000-4000-8000-000000000001"
	if _, err := s.Register(ctx, a, nil); err != nil {
		t.Fatal(err)
	}

	claims := []ingress.Claim{{App: "oracle", Label: "oracle", Port: 8082},
		{App: "web", Label: "www", Port: 9000}}
	if err := s.SetClaims(ctx, a.ID, claims); err != nil {
		t.Fatal(err)
	}
	if err := s.SetClaims(ctx, "nope", claims); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetClaims of an unknown agent: %v, want ErrNotFound", err)
	}

	s.Close()

	got, err := openStore(t, path).Get(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.TunnelID != a.TunnelID {
		t.Errorf("tunnel id = %q, want %q", got.TunnelID, a.TunnelID)
	}
	if diff := cmp.Diff(claims, got.Claims); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
}
