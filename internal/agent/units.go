package agent

import (
	"context"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
)

// units lists the runtime's deployments as units, sorted by app name.
func (a *Agent) units(ctx context.Context) ([]agentapi.Unit, error) {
	deps, err := a.opts.Runtime.List(ctx)
	if err != nil {
		return []agentapi.Unit{}, err
	}

	units := make([]agentapi.Unit, 0, len(deps))
	for _, d := range deps {
		units = append(units, agentapi.Unit{
			ID: d.ID, AppName: d.AppName, Kind: unitKind(d.AppName), Status: d.Status,
			Source: publicSource(d.Source), StartedAt: d.StartedAt, FinishedAt: d.FinishedAt,
			ErrorMessage: d.ErrorMessage, ExitCode: d.ExitCode, PID: d.PID,
		})
	}

	sort.Slice(units, func(i, j int) bool {
		if units[i].AppName != units[j].AppName {
			return units[i].AppName < units[j].AppName
		}
		return units[i].StartedAt < units[j].StartedAt
	})
	return units, nil
}

// unitKind classifies an app by its name (reference agent.md §6).
func unitKind(app string) string {
	switch {
	case app == "dd-agent":
		return "agent"
	case app == "dd-shell" || app == "confidential-shell" || app == "codex-podman-shell":
		return "shell"
	case app == "cloudflared":
		return "tunnel"
	case app == "mount-data":
		return "storage"
	case strings.HasPrefix(app, "podman-"):
		return "runtime"
	default:
		return "workload"
	}
}

// releaseRefRE matches a release source as the runtime reports it,
// "owner/repo@tag".
var releaseRefRE = regexp.MustCompile(`^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+@[^\s]+$`)

// publicSource shortens a deployment's source for the public /health and
// /api/units: a release reference stays, but of a command line only the
// program's name is shown, because arguments may carry secrets.
func publicSource(src string) string {
	if releaseRefRE.MatchString(src) {
		return src
	}

	prog, _, _ := strings.Cut(strings.TrimSpace(src), " ")
	if prog == "" {
		return ""
	}
	return path.Base(prog)
}
