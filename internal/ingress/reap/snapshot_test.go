package reap

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

const cpHost = "pr-7.d.example"

func snapshotInput() SnapshotInput {
	return SnapshotInput{
		Env: env, Hostname: cpHost, CPTunnelID: "cp-new", AccountID: "acct", ZoneID: "zone",
		Agents: []AgentState{
			{AgentID: "dd-pr-7-agent-aaaa0001", Hostname: knownHost, Status: "healthy",
				LastSeen: now, TunnelID: "known", Extras: []Extra{{"web", 9000}}},
			{AgentID: "dd-pr-7-agent-cccc0003", Hostname: "dd-pr-7-agent-cccc0003.d.example",
				Status: "registering", TunnelID: "lost"},
			{AgentID: "control-plane", Hostname: cpHost},
		},
		View: ingress.View{Complete: true, FetchedAt: now.In(time.FixedZone("x", 3600)),
			Tunnels: []ingress.TunnelInfo{
				tunnel("known", "dd-pr-7-agent-aaaa0001", time.Hour),
				tunnel("orphan", "dd-pr-7-agent-bbbb0002", time.Hour),
				tunnel("cp-new", "dd-pr-7-cp-0002", time.Hour),
				tunnel("cp-old", "dd-pr-7-cp-0001", 2*time.Hour),
				tunnel("other", "dd-pr-8-agent-0001", time.Hour),
			},
			Records: []ingress.Record{
				cname("r1", cpHost, "cp-new", time.Hour),
				cname("r2", "pr-7-shell.d.example", "cp-new", time.Hour),
				cname("r3", knownHost, "known", time.Hour),
				cname("r4", knownAPI, "known", time.Hour),
				cname("r5", "dd-pr-7-agent-bbbb0002.d.example", "orphan", time.Hour),
				cname("r6", "dd-pr-7-agent-9999.d.example", "gone", time.Hour),
				cname("r7", "dd-pr-8-agent-0001.d.example", "other", time.Hour),
			},
			Apps: []ingress.App{
				{ID: "a1", Name: "old", Domain: "pr-7-term.d.example", PolicyKind: "bypass",
					Targets: []string{"pr-7-term.d.example"}},
				{ID: "a2", Name: "agent", Domain: knownHost + "/deploy", PolicyKind: "human",
					Targets: []string{knownHost + "/deploy"}},
				{ID: "a3", Name: "unrelated", Domain: "shop.d.example", PolicyKind: "human",
					Targets: []string{"shop.d.example"}},
			},
		},
	}
}

func TestBuildSnapshot(t *testing.T) {
	s := BuildSnapshot(snapshotInput())
	if s.Degraded || !s.APIReachable || len(s.FetchErrors) != 0 {
		t.Errorf("flags: degraded %v reachable %v errors %v", s.Degraded, s.APIReachable,
			s.FetchErrors)
	}
	if s.FetchedAt.Location() != time.UTC {
		t.Errorf("fetched_at in %v, want UTC", s.FetchedAt.Location())
	}

	var tunnels, dns, apps []string
	for _, x := range s.CFState.Tunnels {
		tunnels = append(tunnels, x.Name)
	}

	for _, x := range s.CFState.DNS {
		dns = append(dns, x.Name)
	}

	for _, x := range s.CFState.Apps {
		apps = append(apps, x.Name)
	}

	wantState := [][]string{
		{"dd-pr-7-agent-aaaa0001", "dd-pr-7-agent-bbbb0002", "dd-pr-7-cp-0001", "dd-pr-7-cp-0002"},
		{"dd-pr-7-agent-9999.d.example", knownHost, "dd-pr-7-agent-bbbb0002.d.example",
			knownAPI, "pr-7-shell.d.example", cpHost},
		{"agent", "old"},
	}
	if diff := cmp.Diff(wantState, [][]string{tunnels, dns, apps}); diff != "" {
		t.Errorf("cf_state tunnels, dns, apps (-want +got):\n%s", diff)
	}

	want := Drift{
		OrphanTunnels: []Orphan{
			{"orphan", "dd-pr-7-agent-bbbb0002", "agent tunnel no registered agent holds"},
			{"cp-old", "dd-pr-7-cp-0001", "an older control plane's tunnel"},
		},
		OrphanDNS: []Orphan{
			{"r6", "dd-pr-7-agent-9999.d.example", "no registered agent uses the hostname"},
			{"r5", "dd-pr-7-agent-bbbb0002.d.example", "no registered agent uses the hostname"},
		},
		OrphanApps: []Orphan{
			{"a2", "agent", "legacy Access application; DevOps Defender creates none"},
			{"a1", "old", "legacy Access application; DevOps Defender creates none"},
		},
		MissingTunnels: []Missing{{"lost", "dd-pr-7-agent-cccc0003",
			"the registry's tunnel is not in Cloudflare"}},
		MissingDNS: []Missing{
			{"dd-pr-7-agent-aaaa0001-web.d.example", "dd-pr-7-agent-aaaa0001", "no DNS record"},
			{"dd-pr-7-agent-cccc0003.d.example", "dd-pr-7-agent-cccc0003", "no DNS record"},
			{"dd-pr-7-api-cccc0003.d.example", "dd-pr-7-agent-cccc0003", "no DNS record"},
		},
		MissingApps:    []Missing{},
		AccessMismatch: []Mismatch{{"a1", "pr-7-term.d.example", "human", "bypass"}},
	}
	if diff := cmp.Diff(want, s.Drift); diff != "" {
		t.Errorf("drift (-want +got):\n%s", diff)
	}

	if s.CPState.Agents[0].AgentID != "control-plane" {
		t.Errorf("agents not sorted by id: %v", s.CPState.Agents)
	}
}

func TestSnapshotDegradedHasNoDrift(t *testing.T) {
	in := snapshotInput()
	in.View.Complete = false
	in.View.Errors = []ingress.FetchError{{What: "tunnels", Err: "500"}}
	s := BuildSnapshot(in)
	if !s.Degraded || !s.APIReachable {
		t.Errorf("degraded %v reachable %v", s.Degraded, s.APIReachable)
	}

	if diff := cmp.Diff(emptyDrift(), s.Drift); diff != "" {
		t.Errorf("drift of a degraded view (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"tunnels: 500"}, s.FetchErrors); diff != "" {
		t.Errorf("fetch errors (-want +got):\n%s", diff)
	}

	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}

	for _, key := range []string{`"orphan_tunnels":[]`, `"cf_fetch_errors":["tunnels: 500"]`,
		`"extras":[["web",9000]]`, `"deleted_at":null`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("snapshot JSON lacks %s: %s", key, b)
		}
	}

	in.View.Errors = append(in.View.Errors, ingress.FetchError{What: "dns", Err: "500"})
	if BuildSnapshot(in).APIReachable {
		t.Error("API reachable with both tunnels and dns failing")
	}
}

func TestExtraJSON(t *testing.T) {
	var e Extra
	if err := json.Unmarshal([]byte(`["web", 9000]`), &e); err != nil || e != (Extra{"web", 9000}) {
		t.Errorf("Unmarshal = %+v, %v", e, err)
	}
	if err := json.Unmarshal([]byte(`{"label":"web"}`), &e); err == nil {
		t.Error("Unmarshal of an object succeeded")
	}
}

func TestBuildMap(t *testing.T) {
	v := ingress.View{Complete: true, FetchedAt: now, Tunnels: []ingress.TunnelInfo{
		tunnel("t1", "dd-pr-7-agent-0001", time.Hour),
		tunnel("t2", "dd-pr-7-cp-0001", time.Hour),
		tunnel("t3", "dd-production-agent-0001", time.Hour),
		tunnel("t4", "dd-no-marker-here", time.Hour),
		tunnel("t5", "someone-elses", time.Hour),
	}, Records: []ingress.Record{
		cname("r1", "dd-pr-7-agent-0001.d.example", "t1", time.Hour),
		cname("r2", "app.d.example", "t3", time.Hour),
		cname("r3", "leaked.d.example", "gone", time.Hour),
		cname("r4", "x.d.example", "t5", time.Hour),
		{ID: "r5", Name: "www.d.example", Type: "CNAME", Content: "example.net"},
	}, Apps: []ingress.App{{ID: "a1", Name: "dd-pr-7-agent-0001-app", Domain: "x"}}}

	m := BuildMap(MapInput{View: v, ServingEnv: "pr-7", AccountID: "acct", ZoneID: "zone",
		KnownAgents: 4})

	type summary struct {
		Env, Kind              string
		LiveCP, Serving        bool
		Known, Tuns, DNS, Apps int
	}

	var got []summary
	for _, i := range m.Installations {
		got = append(got, summary{i.Env, i.Kind, i.HasLiveCP, i.IsServingEnv, i.KnownAgents,
			len(i.Tunnels), len(i.DNS), len(i.Apps)})
	}

	want := []summary{
		{"pr-7", "preview", true, true, 4, 2, 1, 1},
		{"production", "production", false, false, 0, 1, 1, 0},
		{Unattributed, "unattributed", false, false, 0, 1, 2, 0},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("installations (-want +got):\n%s", diff)
	}
}

func TestKind(t *testing.T) {
	for env, want := range map[string]string{"production": "production", "staging": "staging",
		"dev": "dev", "pr-42": "preview", "pr-": "named", "team-a": "named",
		Unattributed: "unattributed"} {
		if got := kind(env); got != want {
			t.Errorf("kind(%q) = %q, want %q", env, got, want)
		}
	}
}
