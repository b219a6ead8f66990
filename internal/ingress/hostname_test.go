package ingress

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLabelHostname(t *testing.T) {
	tests := []struct{ host, label, want string }{
		{"pr-144.devopsdefender.com", "shell", "pr-144-shell.devopsdefender.com"},
		{"dd-pr-144-agent-abc.devopsdefender.com", "api", "dd-pr-144-agent-abc-api.devopsdefender.com"},
		{"app.devopsdefender.com", "shell", "app-shell.devopsdefender.com"},
		{"app.example.com", "shell", "app-shell.example.com"},
		{"localhost", "shell", "localhost-shell"},
		{"web.dev.localhost", "oracle", "web-oracle.dev.localhost"},
	}
	for _, tt := range tests {
		if got := LabelHostname(tt.host, tt.label); got != tt.want {
			t.Errorf("LabelHostname(%q, %q) = %q, want %q", tt.host, tt.label, got, tt.want)
		}
	}
}

func TestAgentAPIHostname(t *testing.T) {
	tests := []struct{ host, want string }{
		{"dd-pr-144-agent-abc.devopsdefender.com", "dd-pr-144-api-abc.devopsdefender.com"},
		{"dd-production-agent-73744f46-0a97-4628-ad8b-dd37a07b1e10.devopsdefender.com",
			"dd-production-api-73744f46-0a97-4628-ad8b-dd37a07b1e10.devopsdefender.com"},
		{"app.example.com", "app-agent-api.example.com"},
		{"localhost", "localhost-agent-api"},
		{"dd-x-agent-ff", "dd-x-api-ff"},
		// An env named "agent" keeps its name; the reference produced
		// "dd-api-agent-ff" (cf.md §9 item 9).
		{"dd-agent-agent-ff.d.com", "dd-agent-api-ff.d.com"},
		// Only the first label is looked at.
		{"web.dd-x-agent-ff.com", "web-agent-api.dd-x-agent-ff.com"},
	}
	for _, tt := range tests {
		if got := AgentAPIHostname(tt.host); got != tt.want {
			t.Errorf("AgentAPIHostname(%q) = %q, want %q", tt.host, got, tt.want)
		}
	}
}

func TestExtraHostname(t *testing.T) {
	host := "dd-pr-7-agent-ab12.d.com"
	if got, want := ExtraHostname(host, "agent-api"), "dd-pr-7-api-ab12.d.com"; got != want {
		t.Errorf("ExtraHostname(agent-api) = %q, want %q", got, want)
	}
	if got, want := ExtraHostname(host, "web"), "dd-pr-7-agent-ab12-web.d.com"; got != want {
		t.Errorf("ExtraHostname(web) = %q, want %q", got, want)
	}
}

func TestValidateLabel(t *testing.T) {
	tests := []struct {
		label string
		ok    bool
	}{
		{"web", true},
		{"oracle-1", true},
		{"a", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"Web", false},
		{"-web", false},
		{"web-", false},
		{"a.b", false},
		{"a_b", false},
		{"agent-api", false},
		{"app", false},
		{"api", false},
		{"shell", false},
		{"cp", false},
		{"my-api", false},
		{"agent-ui", false},
		{"agents", true},
		{"capi", true},
	}
	for _, tt := range tests {
		if err := ValidateLabel(tt.label); (err == nil) != tt.ok {
			t.Errorf("ValidateLabel(%q) = %v, want ok=%v", tt.label, err, tt.ok)
		}
	}
}

func TestValidateClaims(t *testing.T) {
	host := "dd-pr-7-agent-ab12cd34.d.com"
	tests := []struct {
		name    string
		claims  []Claim
		wantErr string // substring; "" means valid
	}{
		{"empty", nil, ""},
		{"two apps", []Claim{{"a", "web", 9000}, {"b", "oracle", 9001}}, ""},
		{"port zero", []Claim{{"a", "web", 0}}, "1..65535"},
		{"port too high", []Claim{{"a", "web", 65536}}, "1..65535"},
		{"reserved", []Claim{{"a", "agent-api", 9000}}, "reserved"},
		{"uppercase", []Claim{{"a", "Web", 9000}}, "lowercase"},
		{"shared label", []Claim{{"a", "web", 9000}, {"b", "web", 9001}}, `claimed by both "a" and "b"`},
		{"app twice", []Claim{{"a", "web", 9000}, {"a", "www", 9001}}, "more than one label"},
		{"flattened too long", []Claim{{"a", strings.Repeat("x", 41), 9000}}, "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateClaims(host, tt.claims)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateClaims = %v, want nil", err)
				}
				return
			}

			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateClaims = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestWithClaim(t *testing.T) {
	claims := []Claim{{"a", "web", 9000}, {"b", "oracle", 9001}}
	got := WithClaim(claims, Claim{"a", "www", 9002})
	want := []Claim{{"a", "www", 9002}, {"b", "oracle", 9001}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("WithClaim replace (-want +got):\n%s", diff)
	}
	got = WithClaim(claims, Claim{"c", "extra", 9003})

	want = append(claims[:2:2], Claim{"c", "extra", 9003})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("WithClaim append (-want +got):\n%s", diff)
	}
	if len(claims) != 2 || claims[0].Label != "web" {
		t.Errorf("WithClaim changed its input: %v", claims)
	}
}

// The worked example of cf.md §3: an agent with boot extra web:9000.
func TestAgentIngressRules(t *testing.T) {
	in := AgentIngress("dd-pr-7-agent-ab12.d.com", []Claim{{"site", "web", 9000}})
	want := []Rule{
		{"dd-pr-7-agent-ab12-web.d.com", "http://localhost:9000"},
		{"dd-pr-7-api-ab12.d.com", "http://localhost:8081"},
		{"dd-pr-7-agent-ab12.d.com", "http://localhost:8080"},
		{"", "http_status:404"},
	}
	if diff := cmp.Diff(want, in.Rules()); diff != "" {
		t.Errorf("Rules (-want +got):\n%s", diff)
	}

	wantHosts := []string{"dd-pr-7-agent-ab12.d.com", "dd-pr-7-agent-ab12-web.d.com",
		"dd-pr-7-api-ab12.d.com"}
	if diff := cmp.Diff(wantHosts, in.Hostnames()); diff != "" {
		t.Errorf("Hostnames (-want +got):\n%s", diff)
	}
	if err := in.Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}
}

func TestControlPlaneIngress(t *testing.T) {
	want := []Rule{
		{"pr-7-shell.d.com", "http://localhost:7682"},
		{"pr-7.d.com", "http://localhost:8080"},
		{"", "http_status:404"},
	}
	if diff := cmp.Diff(want, ControlPlaneIngress("pr-7.d.com").Rules()); diff != "" {
		t.Errorf("Rules (-want +got):\n%s", diff)
	}
}

func TestIngressValidate(t *testing.T) {
	tests := []struct {
		name string
		in   Ingress
		ok   bool
	}{
		{"default service", Ingress{Hostname: "a.d.com"}, true},
		{"status service", Ingress{Hostname: "a.d.com", Service: "http_status:503"}, true},
		{"no hostname", Ingress{}, false},
		{"dotless", Ingress{Hostname: "localhost"}, false},
		{"uppercase", Ingress{Hostname: "A.d.com"}, false},
		{"wildcard", Ingress{Hostname: "*.d.com"}, false},
		{"duplicate", Ingress{Hostname: "a.d.com",
			Extras: []Rule{{"a.d.com", "http://localhost:1"}}}, false},
		{"bad service", Ingress{Hostname: "a.d.com",
			Extras: []Rule{{"b.d.com", "tcp://localhost:22"}}}, false},
		{"service with query", Ingress{Hostname: "a.d.com",
			Extras: []Rule{{"b.d.com", "http://localhost:1/?x=1"}}}, false},
	}
	for _, tt := range tests {
		if err := tt.in.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestParseResourceName(t *testing.T) {
	tests := []struct {
		name string
		want ResourceName
		ok   bool
	}{
		{"dd-pr-42-agent-0a97", ResourceName{"pr-42", RoleAgent, "0a97"}, true},
		{"dd-pr-42-cp-73744f46-0a97-4628-ad8b-dd37a07b1e10",
			ResourceName{"pr-42", RoleCP, "73744f46-0a97-4628-ad8b-dd37a07b1e10"}, true},
		{"dd-pr-42-api-c.devopsdefender.com", ResourceName{"pr-42", RoleAPI, "c"}, true},
		{"dd-pr-42-agent-ab12-web.d.com", ResourceName{"pr-42", RoleAgent, "ab12-web"}, true},
		{"dd-production-agent-ff", ResourceName{"production", RoleAgent, "ff"}, true},
		// Envs that contain role markers (cf.md §9 item 9).
		{"dd-agent-agent-ff", ResourceName{"agent", RoleAgent, "ff"}, true},
		{"dd-x-cp-1-agent-ab", ResourceName{"x-cp-1", RoleAgent, "ab"}, true},
		{"dd-a-agent-agent-ff", ResourceName{"a-agent", RoleAgent, "ff"}, true},
		{"dd-no-marker-here", ResourceName{}, false},
		{"dd--agent-ff", ResourceName{}, false},
		{"dd-prod-agent-ff", ResourceName{}, false}, // "prod" is not an env
		{"pr-42.d.com", ResourceName{}, false},
		{"dd-pr-42-agent-", ResourceName{}, false},
		{"dd-pr-42-agent-xyz", ResourceName{}, false},
	}
	for _, tt := range tests {
		got, ok := ParseResourceName(tt.name)
		if ok != tt.ok || got != tt.want {
			t.Errorf("ParseResourceName(%q) = %+v, %v; want %+v, %v", tt.name, got, ok,
				tt.want, tt.ok)
		}
	}
}

func TestRecordTunnelID(t *testing.T) {
	tests := []struct {
		r    Record
		want string
	}{
		{Record{Type: "CNAME", Content: "abc.cfargotunnel.com"}, "abc"},
		{Record{Type: "CNAME", Content: "ABC.cfargotunnel.com"}, "abc"},
		{Record{Type: "CNAME", Content: "example.com"}, ""},
		{Record{Type: "CNAME", Content: "a.b.cfargotunnel.com"}, ""},
		{Record{Type: "A", Content: "abc.cfargotunnel.com"}, ""},
	}
	for _, tt := range tests {
		if got := tt.r.TunnelID(); got != tt.want {
			t.Errorf("%+v.TunnelID() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestZeroViewIsDegraded(t *testing.T) {
	var v View
	if !v.Degraded() {
		t.Error("zero View is not degraded")
	}
	v = View{Complete: true}
	if v.Degraded() {
		t.Error("complete View is degraded")
	}

	v.Errors = append(v.Errors, FetchError{What: "dns", Err: "boom"})
	if !v.Degraded() || !v.Failed("dns") || v.Failed("tunnels") {
		t.Errorf("View with a dns error: Degraded=%v Failed(dns)=%v Failed(tunnels)=%v",
			v.Degraded(), v.Failed("dns"), v.Failed("tunnels"))
	}
}
