package agent

import (
	"context"
	"fmt"
	"net/http"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
)

// syncLoop reads the agent's configuration from the control plane,
// publishes hostname claims it has not applied yet, and forwards pending
// audit entries, every SyncInterval, until ctx ends.
func (a *Agent) syncLoop(ctx context.Context) {
	for {
		if err := a.syncConfig(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("reading configuration from the control plane failed", "err", err)
		}

		a.publishClaims(ctx)
		if a.opts.Audit != nil {
			if _, err := a.opts.Audit.Ship(ctx, a.sendAudit); err != nil && ctx.Err() == nil {
				a.log.Warn("forwarding audit entries failed", "err", err,
					"pending", len(a.opts.Audit.Pending()))
			}
		}

		if sleep(ctx, a.opts.SyncInterval) != nil {
			return
		}
	}
}

// syncConfig applies the tenant the control plane holds for this agent.
func (a *Agent) syncConfig(ctx context.Context) error {
	reg := a.registered()
	var cfg cpapi.AgentConfig
	if err := a.callCP(ctx, http.MethodGet, "/agents/"+reg.agentID+"/config", reg.token, nil,
		&cfg); err != nil {
		return err
	}

	var tenant *ghoidc.Principal
	if p := cfg.Tenant; p != nil {
		parsed, err := ghoidc.ParsePrincipal(p.Kind, p.Name, p.ID.String())
		if err != nil {
			return fmt.Errorf("control plane sent an invalid tenant: %w", err)
		}
		tenant = &parsed
	}

	a.mu.Lock()
	prev := a.tenant
	a.tenant = tenant
	a.mu.Unlock()

	if tenant != nil {
		a.integrity.add(reasonTenant)
	}
	if !samePrincipal(prev, tenant) {
		a.log.Info("tenant changed", "tenant", principalString(tenant),
			"previous", principalString(prev))
	}
	return nil
}

// sendAudit ships audit entries to the control plane.
func (a *Agent) sendAudit(ctx context.Context, entries []audit.Entry) error {
	reg := a.registered()
	var ack cpapi.AuditAck
	return a.callCP(ctx, http.MethodPost, "/agents/"+reg.agentID+"/audit", reg.token,
		cpapi.AuditBatch{Entries: entries}, &ack)
}

// record appends an audit event, if the agent keeps an audit log.
func (a *Agent) record(ctx context.Context, ev audit.Event) {
	if a.opts.Audit == nil {
		return
	}
	if ev.Time.IsZero() {
		ev.Time = a.opts.Now()
	}
	if _, err := a.opts.Audit.Append(ctx, ev); err != nil {
		a.log.Error("audit append failed", "action", ev.Action, "err", err)
	}
}

func samePrincipal(a, b *ghoidc.Principal) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func principalString(p *ghoidc.Principal) string {
	if p == nil {
		return ""
	}
	return p.String()
}
