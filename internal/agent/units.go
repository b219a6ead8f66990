package agent

import (
	"context"
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
			Source: d.Source, StartedAt: d.StartedAt, FinishedAt: d.FinishedAt,
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
