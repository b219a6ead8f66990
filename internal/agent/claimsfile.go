package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"

	"github.com/google/renameio/v2"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
)

// Claims survive a restart of the agent (not of the VM): the runtime keeps
// running the deployed workloads when the agent process restarts, so the
// agent, with [Options.ClaimsPath], keeps their hostname claims in a file
// and publishes them again after it registers. Claims of workloads the
// runtime no longer runs are dropped then, and boot workloads' claims
// always come from [Options.Expose].

// maxClaimsFile bounds the claims file; a few hundred claims fit easily.
const maxClaimsFile = 1 << 20

// loadClaims returns the boot claims followed by the claims of deployed
// workloads kept in path. The file only saves publishing again by hand,
// so one whose content is bad is ignored, and a kept claim that is no
// longer valid with the boot claims (a label a boot workload now takes)
// is dropped; both are logged. A file that cannot be read at all is an
// error. A missing file keeps none.
func loadClaims(path, vmName string, boot []ingress.Claim,
	log *slog.Logger) ([]ingress.Claim, error) {
	claims := slices.Clone(boot)
	if path == "" {
		return claims, nil
	}

	kept, err := readClaims(path)
	if errors.Is(err, errBadClaimsFile) {
		log.Warn("ignoring the kept hostname claims", "path", path, "err", err)
		return claims, nil
	}
	if err != nil {
		// Not knowing what the file holds, the agent must not write over it.
		return nil, err
	}

	for _, c := range kept {
		if isBootApp(boot, c.App) {
			continue // a boot workload's claim always comes from the options
		}
		next := ingress.WithClaim(claims, c)
		if err := validateBootClaims(vmName, next); err != nil {
			log.Warn("dropping a kept hostname claim", "app", c.App, "label", c.Label,
				"err", err)
			continue
		}
		claims = next
	}
	return claims, nil
}

// errBadClaimsFile is matched by readClaims' error for a file whose
// content is not a claims list.
var errBadClaimsFile = errors.New("bad claims file")

// readClaims reads the claims file; a missing file holds none.
func readClaims(path string) ([]ingress.Claim, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading claims: %w", err)
	}
	if len(data) > maxClaimsFile {
		return nil, fmt.Errorf("%w: over %d bytes", errBadClaimsFile, maxClaimsFile)
	}

	var kept []ingress.Claim
	if err := json.Unmarshal(data, &kept); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadClaimsFile, err)
	}
	return kept, nil
}

func isBootApp(boot []ingress.Claim, app string) bool {
	return slices.ContainsFunc(boot, func(c ingress.Claim) bool { return c.App == app })
}

// saveClaims keeps claims in the claims file, if there is one. A failure
// is logged: the claims still hold in memory, and the next change writes
// the file again.
func (a *Agent) saveClaims(claims []ingress.Claim) {
	if a.opts.ClaimsPath == "" {
		return
	}
	if claims == nil {
		claims = []ingress.Claim{}
	}

	data, err := json.Marshal(claims)
	if err == nil {
		err = renameio.WriteFile(a.opts.ClaimsPath, data, 0o600)
	}
	if err != nil {
		a.log.Error("keeping hostname claims failed", "path", a.opts.ClaimsPath, "err", err)
	}
}

// pruneClaims drops the kept claims of deployed workloads that the
// runtime no longer runs: stopped or finished meanwhile, or unknown after
// the VM restarted with the same disk. It keeps everything when the
// runtime cannot be asked.
func (a *Agent) pruneClaims(ctx context.Context) {
	if a.opts.ClaimsPath == "" {
		return
	}
	deps, err := a.opts.Runtime.List(ctx)
	if err != nil {
		a.log.Warn("listing workloads to check kept claims failed", "err", err)
		return
	}

	a.expose.deployMu.Lock()
	defer a.expose.deployMu.Unlock()
	a.expose.mu.Lock()
	cur := slices.Clone(a.expose.claims)
	a.expose.mu.Unlock()

	next := slices.DeleteFunc(slices.Clone(cur), func(c ingress.Claim) bool {
		return !isBootApp(a.opts.Expose, c.App) && !slices.ContainsFunc(deps,
			func(d runtime.Deployment) bool {
				return d.AppName == c.App && !runtime.Terminal(d.Status)
			})
	})

	if len(next) != len(cur) {
		a.log.Info("dropped the kept claims of workloads the runtime no longer runs",
			"kept", len(next), "dropped", len(cur)-len(next))
		a.setClaims(next)
	}
}
