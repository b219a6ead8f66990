package cloudflare

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/cloudflare/cloudflare-go/v6/shared"
	"github.com/cloudflare/cloudflare-go/v6/zero_trust"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// rollbackTimeout bounds removing a half-made tunnel after a failed
// create, which runs even when the caller's context has ended.
const rollbackTimeout = 2 * time.Minute

// CreateTunnel implements [ingress.Provider]: POST cfd_tunnel with
// config_src "cloudflare" (cloudflared ignores a remote configuration
// otherwise, cf.md §1), read the token, PUT the ingress rules, and upsert
// one proxied CNAME per hostname, primary first (cf.md §2.2). The records
// are looked up first: if one may not be taken ([Provider.mayTake]) no
// tunnel is made. If any step after the POST fails, the tunnel and its
// records are deleted again, instead of being left for reaping (cf.md §9
// item 15).
func (p *Provider) CreateTunnel(ctx context.Context, name string,
	in ingress.Ingress) (ingress.Tunnel, error) {
	if name == "" {
		return ingress.Tunnel{}, errors.New("cloudflare: tunnel name is required")
	}
	if err := p.checkIngress(in); err != nil {
		return ingress.Tunnel{}, err
	}

	held, err := p.lookupRecords(ctx, "", in.Hostnames())
	if err != nil {
		return ingress.Tunnel{}, fmt.Errorf("cloudflare: creating tunnel %s: %w", name, err)
	}

	t, err := p.newTunnel(ctx, name)
	if err != nil {
		return ingress.Tunnel{}, fmt.Errorf("cloudflare: creating tunnel %s: %w", name, err)
	}
	if err := p.setUp(ctx, &t, in, held); err != nil {
		p.rollback(ctx, t)
		return ingress.Tunnel{}, fmt.Errorf("cloudflare: setting up tunnel %s: %w", name, err)
	}

	p.log.InfoContext(ctx, "tunnel created", "tunnel_id", t.ID, "name", name,
		"hostnames", in.Hostnames())
	return t, nil
}

// newTunnel creates the tunnel with a fresh 32-byte secret, the minimum
// Cloudflare documents (the reference sent 16, cf.md §9 item 16). The
// secret is unused in token mode but must be valid.
func (p *Provider) newTunnel(ctx context.Context, name string) (ingress.Tunnel, error) {
	secret := make([]byte, 32)
	rand.Read(secret)
	var params zero_trust.TunnelCloudflaredNewParams
	set(&params.AccountID, p.opts.AccountID)
	set(&params.Name, name)
	set(&params.ConfigSrc, zero_trust.TunnelCloudflaredNewParamsConfigSrcCloudflare)
	set(&params.TunnelSecret, base64.StdEncoding.EncodeToString(secret))

	res, err := p.tunnels.New(ctx, params, p.call(ctx, nil)...)
	if err != nil {
		return ingress.Tunnel{}, err
	}
	if res.ID == "" {
		return ingress.Tunnel{}, errors.New("the answer has no tunnel id")
	}
	return ingress.Tunnel{ID: res.ID, Name: res.Name, CreatedAt: res.CreatedAt}, nil
}

// setUp gives a new tunnel its token, rules and the records looked up
// for in's hostnames.
func (p *Provider) setUp(ctx context.Context, t *ingress.Tunnel, in ingress.Ingress,
	held []heldName) error {
	token, err := p.token(ctx, t.ID)
	if err != nil {
		return err
	}

	t.Token = token
	if err := p.putIngress(ctx, t.ID, in); err != nil {
		return err
	}
	if err := p.upsertRecords(ctx, t.ID, held); err != nil {
		return err
	}

	p.cleanupAccess(ctx, in.Hostnames())
	return nil
}

func (p *Provider) rollback(ctx context.Context, t ingress.Tunnel) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	if err := p.DeleteTunnel(ctx, t.ID); err != nil {
		p.log.ErrorContext(ctx, "removing a half-made tunnel failed; reaping will retry",
			"tunnel_id", t.ID, "name", t.Name, "err", err)
	}
}

func (p *Provider) token(ctx context.Context, tunnelID string) (string, error) {
	var params zero_trust.TunnelCloudflaredTokenGetParams
	set(&params.AccountID, p.opts.AccountID)
	tok, err := p.tunnels.Token.Get(ctx, tunnelID, params, p.call(ctx, nil)...)
	if err != nil {
		return "", fmt.Errorf("reading the tunnel token: %w", err)
	}

	if tok == nil || *tok == "" {
		return "", errors.New("reading the tunnel token: the answer is empty")
	}
	return *tok, nil
}

// putIngress replaces the tunnel's whole configuration with in's rules
// (cf.md §2.3).
func (p *Provider) putIngress(ctx context.Context, tunnelID string, in ingress.Ingress) error {
	type rule = zero_trust.TunnelCloudflaredConfigurationUpdateParamsConfigIngress
	var rules []rule
	for _, r := range in.Rules() {
		var x rule
		if r.Hostname != "" {
			set(&x.Hostname, r.Hostname)
		}
		set(&x.Service, r.Service)
		rules = append(rules, x)
	}

	var cfg zero_trust.TunnelCloudflaredConfigurationUpdateParamsConfig
	set(&cfg.Ingress, rules)
	var params zero_trust.TunnelCloudflaredConfigurationUpdateParams
	set(&params.AccountID, p.opts.AccountID)

	set(&params.Config, cfg)
	if _, err := p.tunnels.Configurations.Update(ctx, tunnelID, params,
		p.call(ctx, nil)...); err != nil {
		return fmt.Errorf("writing ingress rules: %w", err)
	}
	return nil
}

// ReplaceIngress implements [ingress.Provider] (cf.md §2.6). Unlike the
// reference it also removes the records of hostnames the new rules drop
// (cf.md §9 item 12), but only records still pointing at this tunnel. If
// the old rules cannot be read, the change still goes ahead and the
// dropped records are left for reaping. A hostname whose record may not
// be taken ([Provider.mayTake]) fails the call before the rules change.
func (p *Provider) ReplaceIngress(ctx context.Context, tunnelID string,
	in ingress.Ingress) error {
	if err := p.checkIngress(in); err != nil {
		return err
	}

	old, err := p.TunnelIngress(ctx, tunnelID)
	if errors.Is(err, ingress.ErrNotFound) {
		return err
	}

	if err != nil {
		p.log.WarnContext(ctx, "reading old ingress rules failed", "tunnel_id", tunnelID,
			"err", err)
	}
	held, err := p.lookupRecords(ctx, tunnelID, in.Hostnames())
	if err != nil {
		return fmt.Errorf("cloudflare: replacing ingress of %s: %w", tunnelID, err)
	}

	if err := p.putIngress(ctx, tunnelID, in); err != nil {
		return fmt.Errorf("cloudflare: replacing ingress of %s: %w", tunnelID, err)
	}
	if err := p.upsertRecords(ctx, tunnelID, held); err != nil {
		return fmt.Errorf("cloudflare: replacing ingress of %s: %w", tunnelID, err)
	}

	if err := p.dropRecords(ctx, tunnelID, dropped(old, in)); err != nil {
		p.log.WarnContext(ctx, "removing records of dropped hostnames failed",
			"tunnel_id", tunnelID, "err", err)
	}
	p.cleanupAccess(ctx, in.Hostnames())
	return nil
}

// dropped returns the hostnames of old rules that in no longer routes.
func dropped(old []ingress.Rule, in ingress.Ingress) []string {
	keep := map[string]bool{}
	for _, h := range in.Hostnames() {
		keep[h] = true
	}

	var out []string
	for _, r := range old {
		if r.Hostname != "" && !keep[r.Hostname] {
			out = append(out, r.Hostname)
		}
	}

	return out
}

// DeleteTunnel implements [ingress.Provider] (cf.md §2.7): connections
// first, because Cloudflare refuses to delete a tunnel with live
// connectors (code 1022); once more if a connector came back in between;
// then every record that still points at the tunnel.
func (p *Provider) DeleteTunnel(ctx context.Context, tunnelID string) error {
	if tunnelID == "" {
		return errors.New("cloudflare: tunnel id is required")
	}

	err := p.deleteTunnelOnce(ctx, tunnelID)
	if apiErr, ok := asAPIError(err); ok && apiErr.HasCode(CodeActiveConnections) {
		err = p.deleteTunnelOnce(ctx, tunnelID)
	}

	if err != nil && !errors.Is(err, ingress.ErrNotFound) {
		return fmt.Errorf("cloudflare: deleting tunnel %s: %w", tunnelID, err)
	}
	if err := p.deleteRecordsOf(ctx, tunnelID); err != nil {
		return fmt.Errorf("cloudflare: deleting records of tunnel %s: %w", tunnelID, err)
	}

	p.log.InfoContext(ctx, "tunnel deleted", "tunnel_id", tunnelID)
	return nil
}

func (p *Provider) deleteTunnelOnce(ctx context.Context, tunnelID string) error {
	var conns zero_trust.TunnelCloudflaredConnectionDeleteParams
	set(&conns.AccountID, p.opts.AccountID)
	if _, err := p.tunnels.Connections.Delete(ctx, tunnelID, conns,
		p.call(ctx, nil)...); err != nil {
		return err
	}

	var params zero_trust.TunnelCloudflaredDeleteParams
	set(&params.AccountID, p.opts.AccountID)
	_, err := p.tunnels.Delete(ctx, tunnelID, params, p.call(ctx, nil)...)
	return err
}

// Tunnel implements [ingress.Provider] (cf.md C14): a soft-deleted tunnel
// comes back with DeletedAt set.
func (p *Provider) Tunnel(ctx context.Context, tunnelID string) (ingress.TunnelInfo, error) {
	var params zero_trust.TunnelCloudflaredGetParams
	set(&params.AccountID, p.opts.AccountID)
	t, err := p.tunnels.Get(ctx, tunnelID, params, p.call(ctx, nil)...)
	if err != nil {
		return ingress.TunnelInfo{}, fmt.Errorf("cloudflare: reading tunnel %s: %w", tunnelID, err)
	}
	return tunnelInfo(t), nil
}

func tunnelInfo(t *shared.CloudflareTunnel) ingress.TunnelInfo {
	return ingress.TunnelInfo{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt,
		DeletedAt: t.DeletedAt, Status: string(t.Status)}
}

// TunnelIngress implements [ingress.Provider] (cf.md H1).
func (p *Provider) TunnelIngress(ctx context.Context, tunnelID string) ([]ingress.Rule, error) {
	var params zero_trust.TunnelCloudflaredConfigurationGetParams
	set(&params.AccountID, p.opts.AccountID)
	cfg, err := p.tunnels.Configurations.Get(ctx, tunnelID, params, p.call(ctx, nil)...)
	if err != nil {
		return nil, fmt.Errorf("cloudflare: reading ingress of %s: %w", tunnelID, err)
	}

	rules := make([]ingress.Rule, 0, len(cfg.Config.Ingress))
	for _, r := range cfg.Config.Ingress {
		rules = append(rules, ingress.Rule{Hostname: r.Hostname, Service: r.Service})
	}

	return rules, nil
}
