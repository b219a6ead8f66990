package reap

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// AgentState is one registry entry as the snapshot shows it.
type AgentState struct {
	AgentID  string    `json:"agent_id"`
	VMName   string    `json:"vm_name"`
	Hostname string    `json:"hostname"`
	Status   string    `json:"status"`
	LastSeen time.Time `json:"last_seen"`
	TunnelID string    `json:"tunnel_id"`
	Extras   []Extra   `json:"extras"`
}

// Extra is a published label and port, encoded as ["label", port] as the
// reference's snapshot does.
type Extra struct {
	Label string
	Port  int
}

// MarshalJSON encodes e as a two-element array.
func (e Extra) MarshalJSON() ([]byte, error) { return json.Marshal([]any{e.Label, e.Port}) }

// UnmarshalJSON decodes a two-element array.
func (e *Extra) UnmarshalJSON(b []byte) error {
	var pair []json.RawMessage
	if err := json.Unmarshal(b, &pair); err != nil || len(pair) != 2 {
		return fmt.Errorf("reap: extra must be [label, port]: %s", b)
	}

	if err := json.Unmarshal(pair[0], &e.Label); err != nil {
		return fmt.Errorf("reap: extra label: %w", err)
	}
	if err := json.Unmarshal(pair[1], &e.Port); err != nil {
		return fmt.Errorf("reap: extra port: %w", err)
	}
	return nil
}

// TunnelState is a tunnel in the operator views.
type TunnelState struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at,omitzero"`
	DeletedAt *time.Time `json:"deleted_at"`
}

// DNSState is a record in the operator views; TunnelIDRef is the bare
// tunnel id its CNAME points at.
type DNSState struct {
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	Content     string  `json:"content"`
	Proxied     bool    `json:"proxied"`
	TunnelIDRef *string `json:"tunnel_id_ref"`
}

// AppState is a legacy Access application in the operator views.
type AppState struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Domain     string `json:"domain"`
	PolicyKind string `json:"policy_kind"`
}

// Orphan is a resource nothing expects.
type Orphan struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Missing is a resource something expects that does not exist.
type Missing struct {
	Expected string `json:"expected"`
	ForAgent string `json:"for_agent"`
	Reason   string `json:"reason"`
}

// Mismatch is an app whose policy is not the one expected.
type Mismatch struct {
	ID             string `json:"id"`
	Domain         string `json:"domain"`
	ExpectedPolicy string `json:"expected_policy"`
	ActualPolicy   string `json:"actual_policy"`
}

// Drift compares the registry with the provider. Every list is empty
// when the view is degraded: a list that was not read must not produce
// false orphans or false missing entries.
type Drift struct {
	OrphanTunnels  []Orphan   `json:"orphan_tunnels"`
	OrphanDNS      []Orphan   `json:"orphan_dns"`
	OrphanApps     []Orphan   `json:"orphan_apps"`
	MissingTunnels []Missing  `json:"missing_tunnels"`
	MissingDNS     []Missing  `json:"missing_dns"`
	MissingApps    []Missing  `json:"missing_apps"`
	AccessMismatch []Mismatch `json:"access_mismatch"`
}

// CPState is the registry side of a snapshot.
type CPState struct {
	ControlPlaneHostname string       `json:"control_plane_hostname"`
	EnvLabel             string       `json:"env_label"`
	Agents               []AgentState `json:"agents"`
}

// CFState is the provider side of a snapshot, this environment only.
type CFState struct {
	Tunnels []TunnelState `json:"tunnels"`
	DNS     []DNSState    `json:"dns"`
	Apps    []AppState    `json:"apps"`
}

// Snapshot is the body of GET /admin/cf/snapshot (cf.md §6.1).
type Snapshot struct {
	FetchedAt    time.Time `json:"fetched_at"`
	AccountID    string    `json:"cf_account_id"`
	ZoneID       string    `json:"cf_zone_id"`
	APIReachable bool      `json:"cf_api_reachable"`
	Degraded     bool      `json:"degraded"`
	FetchErrors  []string  `json:"cf_fetch_errors"`
	CPState      CPState   `json:"cp_state"`
	CFState      CFState   `json:"cf_state"`
	Drift        Drift     `json:"drift"`
}

// SnapshotInput is what [BuildSnapshot] reads.
type SnapshotInput struct {
	// View should be listed with Apps set.
	View ingress.View

	Env               string
	Hostname          string // the control plane's public hostname
	CPTunnelID        string // this control plane's tunnel; other CP tunnels are stale
	AccountID, ZoneID string
	Agents            []AgentState
}

// BuildSnapshot compares the registry with the view, for this
// environment. Unlike the reference it expects the API and "-shell"
// hostnames (no false orphans), reports older control-plane tunnels and
// records whose tunnel is gone, sorts every list, and writes times in UTC
// (cf.md §9 items 8 and 18).
func BuildSnapshot(in SnapshotInput) Snapshot {
	agents := slices.Clone(in.Agents)
	slices.SortFunc(agents, func(a, b AgentState) int {
		return strings.Compare(a.AgentID, b.AgentID)
	})

	s := Snapshot{
		FetchedAt: in.View.FetchedAt.UTC(), AccountID: in.AccountID, ZoneID: in.ZoneID,
		Degraded: in.View.Degraded(), FetchErrors: fetchErrors(in.View),
		APIReachable: !in.View.Failed("tunnels") || !in.View.Failed("dns"),
		CPState: CPState{ControlPlaneHostname: in.Hostname, EnvLabel: in.Env,
			Agents: nonNil(agents)},
	}

	sc := newScope(in)
	s.CFState = sc.cfState()
	s.Drift = emptyDrift()
	if !s.Degraded {
		s.Drift = sc.drift()
	}
	return s
}

func fetchErrors(v ingress.View) []string {
	out := []string{}
	for _, e := range v.Errors {
		out = append(out, e.String())
	}

	if !v.Complete && len(out) == 0 {
		out = append(out, "the view was not read")
	}
	return out
}

func emptyDrift() Drift {
	return Drift{OrphanTunnels: []Orphan{}, OrphanDNS: []Orphan{}, OrphanApps: []Orphan{},
		MissingTunnels: []Missing{}, MissingDNS: []Missing{}, MissingApps: []Missing{},
		AccessMismatch: []Mismatch{}}
}

func nonNil[T any](xs []T) []T {
	if xs == nil {
		return []T{}
	}
	return xs
}

// scope selects this environment's resources from the view.
type scope struct {
	in       SnapshotInput
	tunnels  []ingress.TunnelInfo // this env's agent and cp tunnels
	tunnelID map[string]bool
	records  []ingress.Record
	apps     []ingress.App
	expected map[string]string // expected hostname -> agent id ("" for the CP)
}

func newScope(in SnapshotInput) *scope {
	sc := &scope{in: in, tunnelID: map[string]bool{}, expected: expectedHostnames(in)}
	for _, t := range in.View.Tunnels {
		if rn, ok := ingress.ParseResourceName(t.Name); ok && rn.Env == in.Env &&
			(rn.Role == ingress.RoleAgent || rn.Role == ingress.RoleCP) {
			sc.tunnels = append(sc.tunnels, t)
			sc.tunnelID[strings.ToLower(t.ID)] = true
		}
	}

	for _, r := range in.View.Records {
		if sc.recordInScope(&r) {
			sc.records = append(sc.records, r)
		}
	}

	for _, a := range in.View.Apps {
		if sc.appInScope(a) {
			sc.apps = append(sc.apps, a)
		}
	}

	slices.SortFunc(sc.tunnels, func(a, b ingress.TunnelInfo) int {
		return strings.Compare(a.Name, b.Name)
	})
	slices.SortFunc(sc.records, func(a, b ingress.Record) int {
		return strings.Compare(a.Name, b.Name)
	})
	slices.SortFunc(sc.apps, func(a, b ingress.App) int { return strings.Compare(a.Domain, b.Domain) })
	return sc
}

// expectedHostnames maps every hostname the registry implies to its
// agent: the control plane's and its shell, and each agent's primary,
// API and extra hostnames.
func expectedHostnames(in SnapshotInput) map[string]string {
	exp := map[string]string{}
	if in.Hostname != "" {
		exp[in.Hostname] = ""
		exp[ingress.LabelHostname(in.Hostname, "shell")] = ""
	}

	for _, a := range in.Agents {
		if a.Hostname == "" || a.TunnelID == "" {
			continue // the control plane's own entry, or not yet published
		}
		exp[a.Hostname] = a.AgentID
		exp[ingress.AgentAPIHostname(a.Hostname)] = a.AgentID
		for _, e := range a.Extras {
			exp[ingress.ExtraHostname(a.Hostname, e.Label)] = a.AgentID
		}
	}

	return exp
}

// recordInScope: a CNAME to one of this env's tunnels, or one named like
// this env's resources whose tunnel is gone (a leaked record).
func (sc *scope) recordInScope(r *ingress.Record) bool {
	tid := r.TunnelID()
	if tid == "" {
		return false
	}
	if sc.tunnelID[tid] {
		return true
	}

	rn, ok := ingress.ParseResourceName(r.Name)
	return ok && rn.Env == sc.in.Env && !sc.liveAnywhere(tid)
}

func (sc *scope) liveAnywhere(tunnelID string) bool {
	return slices.ContainsFunc(sc.in.View.Tunnels, func(t ingress.TunnelInfo) bool {
		return strings.EqualFold(t.ID, tunnelID)
	})
}

// appInScope: an app protecting the control plane's or an agent's
// hostname space, or named after this environment.
func (sc *scope) appInScope(a ingress.App) bool {
	if rn, ok := ingress.ParseResourceName(a.Name); ok && rn.Env == sc.in.Env {
		return true
	}

	bases := []string{sc.in.Hostname}
	for _, ag := range sc.in.Agents {
		bases = append(bases, ag.Hostname)
	}

	for _, t := range a.Targets {
		host, _, _ := strings.Cut(strings.ToLower(t), "/")
		for _, b := range bases {
			if b != "" && derivedFrom(host, b) {
				return true
			}
		}
	}

	return false
}

// derivedFrom reports whether host is base or a flattened label of it
// ("<first>-<label>.<rest>").
func derivedFrom(host, base string) bool {
	bFirst, bRest, _ := strings.Cut(base, ".")
	hFirst, hRest, _ := strings.Cut(host, ".")
	return host == base || (hRest == bRest && strings.HasPrefix(hFirst, bFirst+"-"))
}

func (sc *scope) cfState() CFState {
	st := CFState{Tunnels: []TunnelState{}, DNS: []DNSState{}, Apps: []AppState{}}
	for _, t := range sc.tunnels {
		st.Tunnels = append(st.Tunnels, tunnelState(t))
	}

	for _, r := range sc.records {
		st.DNS = append(st.DNS, dnsState(r))
	}

	for _, a := range sc.apps {
		st.Apps = append(st.Apps, appState(a))
	}

	return st
}

func tunnelState(t ingress.TunnelInfo) TunnelState {
	ts := TunnelState{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt.UTC()}
	if t.Deleted() {
		d := t.DeletedAt.UTC()
		ts.DeletedAt = &d
	}
	return ts
}

func dnsState(r ingress.Record) DNSState {
	ds := DNSState{ID: r.ID, Name: r.Name, Content: r.Content, Proxied: r.Proxied}
	if id := r.TunnelID(); id != "" {
		ds.TunnelIDRef = &id
	}
	return ds
}

func appState(a ingress.App) AppState {
	return AppState{ID: a.ID, Name: a.Name, Domain: a.Domain, PolicyKind: a.PolicyKind}
}

func (sc *scope) drift() Drift {
	d := emptyDrift()
	d.OrphanTunnels, d.MissingTunnels = sc.tunnelDrift()
	d.OrphanDNS, d.MissingDNS = sc.dnsDrift()
	for _, a := range sc.apps {
		d.OrphanApps = append(d.OrphanApps, Orphan{ID: a.ID, Name: a.Name,
			Reason: "legacy Access application; DevOps Defender creates none"})
		if m, ok := sc.mismatch(a); ok {
			d.AccessMismatch = append(d.AccessMismatch, m)
		}
	}

	return d
}

func (sc *scope) tunnelDrift() ([]Orphan, []Missing) {
	orphans, missing := []Orphan{}, []Missing{}
	registered := map[string]bool{}
	for _, a := range sc.in.Agents {
		if a.TunnelID == "" {
			continue
		}
		registered[a.TunnelID] = true
		if !sc.tunnelID[a.TunnelID] {
			missing = append(missing, Missing{Expected: a.TunnelID, ForAgent: a.AgentID,
				Reason: "the registry's tunnel is not in Cloudflare"})
		}
	}

	for _, t := range sc.tunnels {
		rn, _ := ingress.ParseResourceName(t.Name)
		switch {
		case rn.Role == ingress.RoleAgent && !registered[t.ID]:
			orphans = append(orphans, Orphan{ID: t.ID, Name: t.Name,
				Reason: "agent tunnel no registered agent holds"})
		case rn.Role == ingress.RoleCP && sc.in.CPTunnelID != "" && t.ID != sc.in.CPTunnelID:
			orphans = append(orphans, Orphan{ID: t.ID, Name: t.Name,
				Reason: "an older control plane's tunnel"})
		}
	}

	return orphans, missing
}

func (sc *scope) dnsDrift() ([]Orphan, []Missing) {
	orphans, missing := []Orphan{}, []Missing{}
	for _, r := range sc.records {
		switch _, want := sc.expected[r.Name]; {
		case !want:
			orphans = append(orphans, Orphan{ID: r.ID, Name: r.Name,
				Reason: "no registered agent uses the hostname"})
		case !sc.liveAnywhere(r.TunnelID()):
			orphans = append(orphans, Orphan{ID: r.ID, Name: r.Name,
				Reason: "points at a tunnel that no longer exists"})
		}
	}

	have := map[string]bool{}
	for _, r := range sc.in.View.Records {
		have[r.Name] = true
	}

	for _, h := range sortedKeys(sc.expected) {
		if !have[h] {
			missing = append(missing, Missing{Expected: h, ForAgent: sc.expected[h],
				Reason: "no DNS record"})
		}
	}

	return orphans, missing
}

// mismatch flags a "-term" or "-block" app of the control plane's domain
// whose policy is not human-gated (cf.md §6.1).
func (sc *scope) mismatch(a ingress.App) (Mismatch, bool) {
	_, rest, _ := strings.Cut(sc.in.Hostname, ".")
	host, _, _ := strings.Cut(strings.ToLower(a.Domain), "/")
	for _, kind := range []string{"-term", "-block"} {
		if (strings.HasSuffix(host, kind+"."+rest) || strings.HasSuffix(host, kind)) &&
			a.PolicyKind != "human" {
			return Mismatch{ID: a.ID, Domain: a.Domain, ExpectedPolicy: "human",
				ActualPolicy: a.PolicyKind}, true
		}
	}

	return Mismatch{}, false
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
