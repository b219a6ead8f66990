package reap

import (
	"slices"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// Unattributed is the bucket of resources that follow the "dd-" naming
// but name no valid environment, and of records whose tunnel is gone.
const Unattributed = "(unattributed)"

// Installation is every resource of one environment in the account.
type Installation struct {
	Env          string        `json:"env"`
	Kind         string        `json:"kind"`
	HasLiveCP    bool          `json:"has_live_cp"`
	IsServingEnv bool          `json:"is_serving_env"`
	KnownAgents  int           `json:"known_agents"`
	Tunnels      []TunnelState `json:"tunnels"`
	DNS          []DNSState    `json:"dns"`
	Apps         []AppState    `json:"apps"`
}

// Map is the body of GET /admin/cf/map (cf.md §6.2): the whole account by
// environment. Nothing is decided from it; Degraded flags a partial view.
type Map struct {
	FetchedAt     time.Time      `json:"fetched_at"`
	AccountID     string         `json:"cf_account_id"`
	ZoneID        string         `json:"cf_zone_id"`
	Degraded      bool           `json:"degraded"`
	FetchErrors   []string       `json:"cf_fetch_errors"`
	ServingEnv    string         `json:"serving_env"`
	Installations []Installation `json:"installations"`
}

// MapInput is what [BuildMap] reads.
type MapInput struct {
	// View should be listed with Apps set.
	View ingress.View

	// ServingEnv is this control plane's environment.
	ServingEnv string

	AccountID, ZoneID string

	// KnownAgents is the number of registered agents with a tunnel; it
	// is reported for the serving environment only.
	KnownAgents int
}

// BuildMap sorts the account's "dd-" tunnels, the CNAMEs to them and the
// "dd-" named apps into installations by environment, sorted by env with
// [Unattributed] last. Buckets without resources are left out.
func BuildMap(in MapInput) Map {
	m := Map{FetchedAt: in.View.FetchedAt.UTC(), AccountID: in.AccountID, ZoneID: in.ZoneID,
		Degraded: in.View.Degraded(), FetchErrors: fetchErrors(in.View),
		ServingEnv: in.ServingEnv, Installations: []Installation{}}
	buckets := map[string]*Installation{}

	bucket := func(env string) *Installation {
		if b, ok := buckets[env]; ok {
			return b
		}

		b := &Installation{Env: env, Kind: kind(env), IsServingEnv: env == in.ServingEnv,
			Tunnels: []TunnelState{}, DNS: []DNSState{}, Apps: []AppState{}}
		if b.IsServingEnv {
			b.KnownAgents = in.KnownAgents
		}
		buckets[env] = b
		return b
	}

	// Tunnels first: a record's environment is that of its tunnel.
	tunnelEnv := map[string]string{}
	for _, t := range in.View.Tunnels {
		env, ok := attribute(t.Name)
		if !ok {
			continue
		}

		tunnelEnv[strings.ToLower(t.ID)] = env
		b := bucket(env)
		b.Tunnels = append(b.Tunnels, tunnelState(t))
		if rn, _ := ingress.ParseResourceName(t.Name); rn.Role == ingress.RoleCP && !t.Deleted() {
			b.HasLiveCP = true
		}
	}

	for _, r := range in.View.Records {
		if tid := r.TunnelID(); tid != "" {
			env, ok := tunnelEnv[tid]
			if !ok {
				env = Unattributed // leaked: its tunnel is gone or not ours
			}
			b := bucket(env)
			b.DNS = append(b.DNS, dnsState(r))
		}
	}

	for _, a := range in.View.Apps {
		if env, ok := attribute(a.Name); ok {
			b := bucket(env)
			b.Apps = append(b.Apps, appState(a))
		}
	}

	for _, b := range buckets {
		m.Installations = append(m.Installations, *b)
	}

	slices.SortFunc(m.Installations, func(a, b Installation) int {
		if (a.Env == Unattributed) != (b.Env == Unattributed) {
			if a.Env == Unattributed {
				return 1
			}
			return -1
		}
		return strings.Compare(a.Env, b.Env)
	})

	return m
}

// attribute returns the env of a "dd-" name, Unattributed for a "dd-"
// name that parses as none, and false for other names.
func attribute(name string) (string, bool) {
	if !strings.HasPrefix(name, "dd-") {
		return "", false
	}
	if rn, ok := ingress.ParseResourceName(name); ok {
		return rn.Env, true
	}
	return Unattributed, true
}

// kind classifies an environment as cf.md §6.2 does.
func kind(env string) string {
	switch {
	case env == Unattributed:
		return "unattributed"
	case env == "production" || env == "staging" || env == "dev":
		return env
	case strings.HasPrefix(env, "pr-") && len(env) > 3:
		return "preview"
	}

	return "named"
}
