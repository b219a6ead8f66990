package ingress

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// LabelHostname derives the hostname of a label from host by one-level
// flattening: "-<label>" is inserted before host's first dot, so that
// "app.example.com" + "shell" gives "app-shell.example.com" and a
// "*.example.com" certificate still covers it (cf.md §3). A dotless host
// gets "-<label>" appended.
func LabelHostname(host, label string) string {
	first, rest, ok := strings.Cut(host, ".")
	if !ok {
		return host + "-" + label
	}
	return first + "-" + label + "." + rest
}

// AgentAPIHostname returns the hostname of an agent's API. An agent host
// whose first label holds the role marker "-agent-" gets it replaced by
// "-api-" ("dd-pr-7-agent-U.d.com" → "dd-pr-7-api-U.d.com"); any other
// host gets the label "agent-api" ("app.example.com" →
// "app-agent-api.example.com").
//
// The marker replaced is the last one, not the first as in the reference
// (cf.md §9 item 9): env labels may themselves contain "-agent-", and the
// id after the marker never does.
func AgentAPIHostname(host string) string {
	first, rest, hasDot := strings.Cut(host, ".")
	i := strings.LastIndex(first, "-agent-")
	if i < 0 {
		return LabelHostname(host, AgentAPILabel)
	}

	first = first[:i] + "-api-" + first[i+len("-agent-"):]
	if !hasDot {
		return first
	}
	return first + "." + rest
}

// ExtraHostname returns the hostname a label is published under on host:
// [AgentAPILabel] maps to [AgentAPIHostname], every other label goes
// through [LabelHostname].
func ExtraHostname(host, label string) string {
	if label == AgentAPILabel {
		return AgentAPIHostname(host)
	}
	return LabelHostname(host, label)
}

// AgentAPILabel is the label of the agent API's rule, added by the control
// plane to every agent's ingress.
const AgentAPILabel = "agent-api"

// reservedLabels may not be claimed by workloads, because the name they
// produce is already taken or means something else (cf.md §3, §6.1):
//   - agent-api: the agent's own API rule; a workload claiming it would
//     hide the API from the collector, which then reaps the agent (§9.11);
//   - api: the API hostname form "dd-<env>-api-<id>";
//   - app: the production control plane's hostname "app.<domain>";
//   - shell: the control plane's shell hostname "<cp>-shell";
//   - term, block: names legacy Access policies gated for humans.
var reservedLabels = []string{AgentAPILabel, "api", "app", "shell", "term", "block"}

// ReservedLabel reports whether label is reserved for DevOps Defender.
func ReservedLabel(label string) bool { return slices.Contains(reservedLabels, label) }

// ValidateLabel checks a workload's hostname label: a lowercase RFC 1123
// label of at most 63 characters that is not reserved and holds no role
// marker (see [ParseResourceName]), e.g. "cp" or "my-api".
func ValidateLabel(label string) error {
	if !workload.ValidLabel(label) {
		return fmt.Errorf("label %q must be a lowercase DNS label of 1-63 letters, "+
			"digits or '-'", label)
	}
	if ReservedLabel(label) {
		return fmt.Errorf("label %q is reserved", label)
	}

	if markerRE.MatchString("-" + label + "-") {
		return fmt.Errorf("label %q may not contain the words agent, api or cp between "+
			"hyphens: the hostname would read as another resource's name", label)
	}
	return nil
}

// ValidateHostname checks that h is a lowercase DNS name of at least two
// labels, each of at most 63 characters, and at most 253 in all.
func ValidateHostname(h string) error {
	labels := strings.Split(h, ".")
	if len(h) > 253 || len(labels) < 2 {
		return fmt.Errorf("hostname %q must be a DNS name of two or more labels", h)
	}

	for _, l := range labels {
		if !workload.ValidLabel(l) {
			return fmt.Errorf("hostname %q has an invalid label %q (lowercase, 1-63 "+
				"letters, digits or '-')", h, l)
		}
	}

	return nil
}

// Claim is one workload's request to publish a local port under a label
// of its agent's hostname (a workload spec's "expose").
type Claim struct {
	App   string `json:"app"`
	Label string `json:"hostname_label"`
	Port  int    `json:"port"`
}

// ValidateClaims checks every claim of one agent, whose primary hostname
// is host: labels valid and not reserved, ports in 1..65535, the derived
// hostname a valid name (its first label stays within 63 characters
// after flattening), and no label or app claimed twice.
func ValidateClaims(host string, claims []Claim) error {
	var errs []error
	byLabel := map[string]string{}
	apps := map[string]bool{}
	for _, c := range claims {
		if err := ValidateLabel(c.Label); err != nil {
			errs = append(errs, err)
		} else if err := ValidateHostname(ExtraHostname(host, c.Label)); err != nil {
			errs = append(errs, fmt.Errorf("label %q is too long for %s: %w", c.Label, host, err))
		}

		if c.Port < 1 || c.Port > 65535 {
			errs = append(errs, fmt.Errorf("port %d of %q must be in 1..65535", c.Port, c.App))
		}
		if other, ok := byLabel[c.Label]; ok {
			errs = append(errs, fmt.Errorf("label %q is claimed by both %q and %q",
				c.Label, other, c.App))
		}

		byLabel[c.Label] = c.App
		if apps[c.App] {
			errs = append(errs, fmt.Errorf("app %q claims more than one label", c.App))
		}
		apps[c.App] = true
	}

	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ingress: invalid expose: %w", err)
	}
	return nil
}

// WithClaim returns claims with c's app claiming c instead of whatever it
// claimed before (a redeploy replaces the workload's expose), leaving the
// other apps' claims in order. Validate the result with [ValidateClaims].
func WithClaim(claims []Claim, c Claim) []Claim {
	out := make([]Claim, 0, len(claims)+1)
	replaced := false
	for _, old := range claims {
		if old.App != c.App {
			out = append(out, old)
		} else if !replaced {
			out = append(out, c)
			replaced = true
		}
	}

	if !replaced {
		out = append(out, c)
	}
	return out
}

// AgentIngress is the ingress of an agent whose primary hostname is host:
// each claim's hostname to its local port, in claim order, then the agent
// API (the collector scrapes it), then the dashboard on host (cf.md §2.5,
// worked example in §3).
func AgentIngress(host string, claims []Claim) Ingress {
	extras := make([]Rule, 0, len(claims)+1)
	for _, c := range claims {
		extras = append(extras, Rule{Hostname: ExtraHostname(host, c.Label),
			Service: LocalService(c.Port)})
	}

	extras = append(extras, Rule{Hostname: AgentAPIHostname(host),
		Service: LocalService(AgentAPIPort)})
	return Ingress{Hostname: host, Service: DefaultService, Extras: extras}
}

// ControlPlaneIngress is the ingress of the control plane at host: its
// shell hostname, then the dashboard (cf.md §2.4).
func ControlPlaneIngress(host string) Ingress {
	return Ingress{Hostname: host, Service: DefaultService, Extras: []Rule{
		{Hostname: LabelHostname(host, "shell"), Service: LocalService(ShellPort)},
	}}
}

// Role is the part of a resource name that says what it is for.
type Role string

// Roles of tunnels and hostnames (cf.md §2.1).
const (
	RoleCP    Role = "cp"    // a control plane's tunnel, one per boot
	RoleAgent Role = "agent" // an agent's tunnel and its hostnames
	RoleAPI   Role = "api"   // an agent's API hostname
)

// TunnelName returns the resource name "dd-<env>-<role>-<id>".
func TunnelName(env string, role Role, id string) string {
	return TunnelPrefix(env, role) + id
}

// TunnelPrefix returns "dd-<env>-<role>-", the prefix every resource of
// that environment and role starts with.
func TunnelPrefix(env string, role Role) string {
	return "dd-" + env + "-" + string(role) + "-"
}

// ResourceName is a parsed tunnel name or hostname.
type ResourceName struct {
	Env  string
	Role Role
	// Rest is what follows the role marker: the id, and for hostnames a
	// "-<label>" suffix.
	Rest string
}

var (
	markerRE = regexp.MustCompile(`-(cp|agent|api)-`)
	hexRunRE = regexp.MustCompile(`^[0-9a-f]+`)
)

// ParseResourceName attributes a tunnel name, or a hostname by its first
// label, to an environment and role: "dd-pr-42-agent-0a97…" gives env
// "pr-42", role agent. It reports false for names that do not follow the
// convention.
//
// An env label may itself contain a role marker ("dd-x-cp-1-agent-ab" is
// env "x-cp-1"), so markers are tried from the right, and one counts only
// when the env before it is valid and an id (hex digits ending at "-" or
// the end) follows it. Workload labels never contain a marker
// ([ValidateLabel]), and "agent", "api" and "cp" hold non-hex letters, so
// nothing after the real marker looks like one.
func ParseResourceName(name string) (ResourceName, bool) {
	first, _, _ := strings.Cut(strings.ToLower(name), ".")
	rest, ok := strings.CutPrefix(first, "dd-")
	if !ok {
		return ResourceName{}, false
	}

	markers := allMarkers(rest)
	for i := len(markers) - 1; i >= 0; i-- {
		m := markers[i]
		env, tail := rest[:m[0]], rest[m[1]:]
		if _, err := fleetenv.Parse(env); err != nil || !startsWithID(tail) {
			continue
		}
		return ResourceName{Env: env, Role: Role(rest[m[0]+1 : m[1]-1]), Rest: tail}, true
	}

	return ResourceName{}, false
}

// allMarkers returns every "-role-" position in s, overlapping ones
// included ("-cp-agent-" holds two).
func allMarkers(s string) [][]int {
	var out [][]int
	for off := 0; off < len(s); {
		loc := markerRE.FindStringIndex(s[off:])
		if loc == nil {
			break
		}
		out = append(out, []int{off + loc[0], off + loc[1]})
		off += loc[0] + 1
	}

	return out
}

func startsWithID(s string) bool {
	run := hexRunRE.FindString(s)
	return run != "" && (len(run) == len(s) || s[len(run)] == '-')
}
