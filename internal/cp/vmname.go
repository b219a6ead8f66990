package cp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"

	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// A VM name is held by the record registered under it. An attested
// registration alone does not prove it comes from the holder's VM: any TD
// that passes the policy can quote arbitrary report data. So the name
// changes hands only when the registrant shows the holder's signing key
// (the same agent, restarted), or when the holder has not been seen for
// StaleAfter and does not answer as itself either; in that last case the
// tenant stays behind (see fleet.Register).

// conflict returns a 409 whose message is safe to show.
func conflict(msg string) *httpapi.Error {
	return &httpapi.Error{Status: http.StatusConflict, Code: httpapi.CodeConflict, Message: msg}
}

// nameHolder decides whether a registration with keys may take vmName.
// It returns the record the registration would replace (nil when the name
// is free), with a 409 when that holder is alive and keeps the name. It
// may probe the holder, so call it without regMu held and confirm the
// answer with [Server.confirmHolder] under it.
func (s *Server) nameHolder(ctx context.Context, vmName string,
	keys attestbind.Keys) (*fleet.Agent, error) {
	old, err := s.store.ByVMName(ctx, vmName)
	switch {
	case errors.Is(err, fleet.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("looking up vm %s: %w", vmName, err)
	}

	if fleet.SameSigningKey(&old, &fleet.Agent{SigningKey: keys.Signing}) {
		return &old, nil
	}
	// A holder seen lately keeps its name through a failed probe, as it
	// keeps its status through a failed scrape: one lost request must not
	// hand a live agent's name to whoever keeps asking.
	if s.recentlySeen(&old) {
		return &old, conflict(fmt.Sprintf("vm_name is held by an agent seen within %s; "+
			"it can be taken over once that agent has been gone that long", s.opts.StaleAfter))
	}
	if err := s.probeHolder(ctx, &old); err != nil {
		s.log.InfoContext(ctx, "vm name holder does not answer as itself", "vm_name", vmName,
			"holder", old.ID, "err", err)
		return &old, nil
	}

	return &old, conflict("vm_name is held by a live agent with other keys")
}

// recentlySeen reports whether the collector last saw agent a (or a
// registered) within StaleAfter.
func (s *Server) recentlySeen(a *fleet.Agent) bool {
	seen := a.LastSeen
	if seen.IsZero() {
		seen = a.RegisteredAt
	}
	return s.opts.Now().Sub(seen) < s.opts.StaleAfter
}

// probeHolder asks the agent of record a for its /health the way the
// collector does, and returns nil only if it answers as a with a's
// signing key.
func (s *Server) probeHolder(ctx context.Context, a *fleet.Agent) error {
	h, err := s.fetchHealth(ctx, a)
	if err != nil {
		return err
	}
	key, err := base64.StdEncoding.DecodeString(h.SigningKey)
	if err != nil || len(a.SigningKey) == 0 || !bytes.Equal(key, a.SigningKey) {
		return errors.New("/health shows another signing key")
	}

	return nil
}

// confirmHolder returns a 409, which the agent retries, unless vmName is
// still held by holder (nil: by none), the record [Server.nameHolder]
// decided on; else the holder's current record. Call it with regMu held.
func (s *Server) confirmHolder(ctx context.Context, vmName string,
	holder *fleet.Agent) (*fleet.Agent, error) {
	now, err := s.store.ByVMName(ctx, vmName)
	switch {
	case errors.Is(err, fleet.ErrNotFound):
		if holder == nil {
			return nil, nil
		}
	case err != nil:
		return nil, fmt.Errorf("looking up vm %s: %w", vmName, err)
	case holder != nil && now.ID == holder.ID:
		return &now, nil
	}

	return nil, conflict("vm_name changed hands during registration; retry")
}

// holderID returns the id of holder, or "" for none.
func holderID(holder *fleet.Agent) string {
	if holder == nil {
		return ""
	}
	return holder.ID
}

// droppedTenant returns the tenant of a replaced record that the new
// registration a did not take over, because it came with other keys.
func droppedTenant(a *fleet.Agent, replaced []fleet.Agent) *ghoidc.Principal {
	for _, old := range replaced {
		if old.Tenant != nil && !fleet.SameSigningKey(&old, a) {
			return old.Tenant
		}
	}
	return nil
}
