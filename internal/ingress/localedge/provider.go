package localedge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// StatusTunnelDown is what the edge answers for a hostname whose tunnel
// is deleted or has no connector, as Cloudflare answers 530 (error 1033).
// The collector counts it as a dead signal (reference cf.md §5.1).
const StatusTunnelDown = 530

// CodeTunnelDown is the error code of a [StatusTunnelDown] reply.
const CodeTunnelDown = "TUNNEL_DOWN"

// ProviderOptions configures a [Provider].
type ProviderOptions struct {
	// Now stamps created_at and deleted_at. Nil means time.Now.
	Now func() time.Time

	// Logger receives tunnel and record events. Nil discards them.
	Logger *slog.Logger
}

// Provider is the local stand-in for a Cloudflare account and zone: an
// [ingress.Provider] whose tunnels, ingress rules and DNS records live in
// memory and route requests on its [Edge], so the dev fleet runs the same
// control-plane code as production (reference cf.md §10).
//
// It keeps Cloudflare's semantics where the control plane depends on
// them: a tunnel routes only while a connector ([Connector], the stand-in
// for cloudflared) holds it, and its services "http://localhost:PORT" are
// reached through that connector; one record per hostname points at one
// tunnel, and creating or replacing an ingress moves the hostname to the
// new tunnel (the control plane's cutover) if the old one is of the same
// environment, and fails with [ingress.ErrHostnameTaken] otherwise;
// deleting a tunnel drops its connections, which makes its connectors
// exit, soft-deletes it, and removes the records still pointing at it.
// An unknown hostname gets 404, a deleted or unconnected tunnel 530, an
// unreachable origin 502, and a hostname no rule matches the catch-all's
// status.
//
// It is safe for concurrent use.
type Provider struct {
	edge *Edge
	opts ProviderOptions
	log  *slog.Logger

	mu      sync.Mutex
	tunnels map[string]*tunnel // by id
	order   []string           // tunnel ids in creation order
	records map[string]*record // by hostname
	last    time.Time          // the latest created_at handed out
	faults  map[string]error   // list name -> injected failure
}

type tunnel struct {
	info  ingress.TunnelInfo
	token string
	rules []ingress.Rule
	conns []*Connection // oldest first
}

type record struct {
	id       string
	name     string
	tunnelID string
	created  time.Time
}

var (
	_ ingress.Provider = (*Provider)(nil)
	_ Linker           = (*Provider)(nil)
)

// errTokenRefused is matched by [Provider.Connect]'s error when no live
// tunnel has the token, so that the API can tell it from a bad origin.
var errTokenRefused = errors.New("localedge: tunnel token refused")

// NewProvider returns a provider that routes on e. An edge has at most
// one provider; its own [Edge.Publish] routes take precedence over
// tunnel records.
func NewProvider(e *Edge, opts ProviderOptions) (*Provider, error) {
	if e == nil {
		return nil, errors.New("localedge: an edge is required")
	}

	if opts.Now == nil {
		opts.Now = time.Now
	}

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Provider{edge: e, opts: opts, log: log.With("component", "localedge-provider"),
		tunnels: map[string]*tunnel{}, records: map[string]*record{},
		faults: map[string]error{}}

	e.mu.Lock()
	defer e.mu.Unlock()

	if e.provider != nil {
		return nil, errors.New("localedge: the edge already has a provider")
	}

	e.provider = p
	return p, nil
}

// newID returns a random id in the UUID layout Cloudflare uses.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// nowLocked returns the current time, strictly after every time handed
// out before, so that creation order is also created_at order (fencing
// compares them).
func (p *Provider) nowLocked() time.Time {
	now := p.opts.Now().UTC()
	if !now.After(p.last) {
		now = p.last.Add(time.Microsecond)
	}
	p.last = now
	return now
}

// checkIngress validates in and that every hostname is under the edge's
// domain.
func (p *Provider) checkIngress(in ingress.Ingress) error {
	if err := in.Validate(); err != nil {
		return err
	}

	for _, h := range in.Hostnames() {
		if !strings.HasSuffix(h, "."+p.edge.Domain()) {
			return fmt.Errorf("localedge: hostname %q is not under %q", h, p.edge.Domain())
		}
	}

	return nil
}

// CreateTunnel implements [ingress.Provider].
func (p *Provider) CreateTunnel(ctx context.Context, name string,
	in ingress.Ingress) (ingress.Tunnel, error) {
	if name == "" {
		return ingress.Tunnel{}, errors.New("localedge: tunnel name is required")
	}
	if err := p.checkIngress(in); err != nil {
		return ingress.Tunnel{}, err
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	if err := p.mayTakeLocked(name, "", in.Hostnames()); err != nil {
		return ingress.Tunnel{}, err
	}

	t := &tunnel{info: ingress.TunnelInfo{ID: newID(), Name: name, CreatedAt: p.nowLocked(),
		Status: "inactive"}, token: "ledge_" + strings.ReplaceAll(newID()+newID(), "-", ""),
		rules: in.Rules()}
	p.tunnels[t.info.ID] = t
	p.order = append(p.order, t.info.ID)

	p.upsertLocked(t.info.ID, in.Hostnames())
	p.log.InfoContext(ctx, "tunnel created", "tunnel_id", t.info.ID, "name", name,
		"hostnames", in.Hostnames())
	return ingress.Tunnel{ID: t.info.ID, Name: name, CreatedAt: t.info.CreatedAt,
		Token: t.token}, nil
}

// mayTakeLocked checks that the tunnel named name (id "" for one not yet
// made) may take every hostname's record: a record moves only from a
// tunnel, live or deleted, of the same environment by name
// ([ingress.ParseResourceName]), as the Cloudflare provider moves only
// its own environment's. The edge stands in for a zone that several
// environments could share, so the taking tunnel's name says which
// environment is asking. Anything else fails with
// [ingress.ErrHostnameTaken].
func (p *Provider) mayTakeLocked(name, tunnelID string, hostnames []string) error {
	taker, takerOK := ingress.ParseResourceName(name)
	for _, h := range hostnames {
		r, ok := p.records[h]
		if !ok || r.tunnelID == tunnelID {
			continue
		}

		holder, known := p.tunnels[r.tunnelID]
		if !known {
			return fmt.Errorf("localedge: %s points at unknown tunnel %s: %w", h, r.tunnelID,
				ingress.ErrHostnameTaken)
		}

		if n, ok := ingress.ParseResourceName(holder.info.Name); !ok || !takerOK ||
			n.Env != taker.Env {
			return fmt.Errorf("localedge: %s is held by tunnel %s (%q) of another "+
				"environment: %w", h, r.tunnelID, holder.info.Name, ingress.ErrHostnameTaken)
		}
	}

	return nil
}

// upsertLocked points a record for each hostname at the tunnel; check
// [Provider.mayTakeLocked] first.
func (p *Provider) upsertLocked(tunnelID string, hostnames []string) {
	for _, h := range hostnames {
		if r, ok := p.records[h]; ok {
			if r.tunnelID != tunnelID {
				p.log.Info("record moved", "hostname", h, "from", r.tunnelID, "to", tunnelID)
			}
			r.tunnelID = tunnelID
			continue
		}
		p.records[h] = &record{id: strings.ReplaceAll(newID(), "-", ""), name: h,
			tunnelID: tunnelID, created: p.nowLocked()}
	}
}

// live returns the tunnel if it exists and is not deleted.
func (p *Provider) liveLocked(tunnelID string) (*tunnel, error) {
	t, ok := p.tunnels[tunnelID]
	if !ok || t.info.Deleted() {
		return nil, fmt.Errorf("localedge: tunnel %s: %w", tunnelID, ingress.ErrNotFound)
	}
	return t, nil
}

// ReplaceIngress implements [ingress.Provider].
func (p *Provider) ReplaceIngress(ctx context.Context, tunnelID string,
	in ingress.Ingress) error {
	if err := p.checkIngress(in); err != nil {
		return err
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	t, err := p.liveLocked(tunnelID)
	if err != nil {
		return err
	}
	if err := p.mayTakeLocked(t.info.Name, tunnelID, in.Hostnames()); err != nil {
		return err
	}

	old := t.rules
	t.rules = in.Rules()
	hostnames := in.Hostnames()
	p.upsertLocked(tunnelID, hostnames)

	for _, r := range old {
		if r.Hostname == "" || slices.Contains(hostnames, r.Hostname) {
			continue
		}
		if rec, ok := p.records[r.Hostname]; ok && rec.tunnelID == tunnelID {
			delete(p.records, r.Hostname)
		}
	}

	p.log.InfoContext(ctx, "ingress replaced", "tunnel_id", tunnelID, "hostnames", hostnames)
	return nil
}

// DeleteTunnel implements [ingress.Provider]: the tunnel's connections
// are dropped, so its connectors exit.
func (p *Provider) DeleteTunnel(ctx context.Context, tunnelID string) error {
	if tunnelID == "" {
		return errors.New("localedge: tunnel id is required")
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	t, ok := p.tunnels[tunnelID]
	if !ok {
		return nil
	}

	for _, c := range t.conns {
		c.closeLocked()
	}

	t.conns = nil
	if !t.info.Deleted() {
		t.info.DeletedAt = p.nowLocked()
	}

	for h, r := range p.records {
		if r.tunnelID == tunnelID {
			delete(p.records, h)
		}
	}

	p.log.InfoContext(ctx, "tunnel deleted", "tunnel_id", tunnelID, "name", t.info.Name)
	return nil
}

// DeleteRecord implements [ingress.Provider].
func (p *Provider) DeleteRecord(ctx context.Context, recordID string) error {
	p.mu.Lock()
	defer p.mu.Unlock()

	for h, r := range p.records {
		if r.id == recordID {
			delete(p.records, h)
			p.log.InfoContext(ctx, "record deleted", "hostname", h)
		}
	}

	return nil
}

// Tunnel implements [ingress.Provider].
func (p *Provider) Tunnel(ctx context.Context, tunnelID string) (ingress.TunnelInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()

	t, ok := p.tunnels[tunnelID]
	if !ok {
		return ingress.TunnelInfo{}, fmt.Errorf("localedge: tunnel %s: %w", tunnelID,
			ingress.ErrNotFound)
	}
	return p.infoLocked(t), nil
}

func (p *Provider) infoLocked(t *tunnel) ingress.TunnelInfo {
	info := t.info
	switch {
	case info.Deleted():
		info.Status = "down"
	case len(t.conns) > 0:
		info.Status = "healthy"
	}

	return info
}

// TunnelIngress implements [ingress.Provider].
func (p *Provider) TunnelIngress(ctx context.Context, tunnelID string) ([]ingress.Rule, error) {
	p.mu.Lock()
	defer p.mu.Unlock()

	t, ok := p.tunnels[tunnelID]
	if !ok {
		return nil, fmt.Errorf("localedge: tunnel %s: %w", tunnelID, ingress.ErrNotFound)
	}
	return slices.Clone(t.rules), nil
}

// List implements [ingress.Provider]. The view is complete unless a
// failure was injected with [Provider.FailList]. There are no Access
// applications.
func (p *Provider) List(ctx context.Context, opts ingress.ListOptions) ingress.View {
	p.mu.Lock()
	defer p.mu.Unlock()

	v := ingress.View{FetchedAt: p.opts.Now().UTC(), Tunnels: []ingress.TunnelInfo{},
		Records: []ingress.Record{}}

	if err := p.faults["dns"]; err != nil {
		v.Errors = append(v.Errors, ingress.FetchError{What: "dns", Err: err.Error()})
	} else {
		v.Records = p.recordsLocked()
	}

	if err := p.faults["tunnels"]; err != nil {
		v.Errors = append(v.Errors, ingress.FetchError{What: "tunnels", Err: err.Error()})
	} else {
		v.Tunnels = p.tunnelsLocked(opts.IngressPrefix)
	}

	v.Complete = len(v.Errors) == 0
	return v
}

func (p *Provider) recordsLocked() []ingress.Record {
	out := make([]ingress.Record, 0, len(p.records))
	for _, r := range p.records {
		out = append(out, ingress.Record{ID: r.id, Name: r.name, Type: "CNAME",
			Content: ingress.TunnelTarget(r.tunnelID), Proxied: true, CreatedAt: r.created})
	}

	slices.SortFunc(out, func(a, b ingress.Record) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// tunnelsLocked lists the live tunnels in creation order, with the
// hostnames of those named with prefix.
func (p *Provider) tunnelsLocked(prefix string) []ingress.TunnelInfo {
	out := []ingress.TunnelInfo{}
	for _, id := range p.order {
		t := p.tunnels[id]
		if t.info.Deleted() {
			continue
		}

		info := p.infoLocked(t)
		if prefix != "" && strings.HasPrefix(info.Name, prefix) {
			for _, r := range t.rules {
				if r.Hostname != "" {
					info.Hostnames = append(info.Hostnames, r.Hostname)
				}
			}
			info.IngressListed = true
		}

		out = append(out, info)
	}

	return out
}

// FailList makes [Provider.List] report the list what ("tunnels" or
// "dns") as failed, or stops doing so when err is nil, so that tests can
// show that a degraded view deletes nothing.
func (p *Provider) FailList(what string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()

	if err == nil {
		delete(p.faults, what)
		return
	}
	p.faults[what] = err
}

// Hostnames returns which tunnel each hostname's record points at.
func (p *Provider) Hostnames() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()

	out := make(map[string]string, len(p.records))
	for h, r := range p.records {
		out[h] = r.tunnelID
	}
	return out
}

// Connection is one connector's hold on a tunnel, as cloudflared holds
// connections to Cloudflare's edge. It ends when the tunnel is deleted
// or the connector closes it.
type Connection struct {
	p        *Provider
	tunnelID string
	services map[string]*url.URL
	done     chan struct{}
	closed   bool // guarded by p.mu
}

// Connect opens a connection for the tunnel whose token is token, as
// cloudflared does with TUNNEL_TOKEN. services maps a rule's service
// ("http://localhost:8080") to the origin that serves it on this machine
// ("http://127.0.0.1:43121"); a service without an entry is dialled as
// written. It fails when no live tunnel has the token.
func (p *Provider) Connect(token string, services map[string]string) (*Connection, error) {
	parsed := map[string]*url.URL{}
	for svc, origin := range services {
		u, err := url.Parse(origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("localedge: origin %q of %s is not an absolute http URL",
				origin, svc)
		}
		parsed[strings.TrimSuffix(svc, "/")] = u
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	for _, t := range p.tunnels {
		if token == "" || t.token != token {
			continue
		}
		if t.info.Deleted() {
			return nil, fmt.Errorf("%w: the tunnel was deleted", errTokenRefused)
		}

		c := &Connection{p: p, tunnelID: t.info.ID, services: parsed, done: make(chan struct{})}
		t.conns = append(t.conns, c)
		p.log.Info("connector connected", "tunnel_id", t.info.ID, "name", t.info.Name)
		return c, nil
	}

	return nil, fmt.Errorf("%w: no live tunnel has it", errTokenRefused)
}

// Link implements [Linker] with [Provider.Connect]. ctx is not used: a
// connection opens without waiting.
func (p *Provider) Link(ctx context.Context, token string,
	services map[string]string) (Link, error) {
	c, err := p.Connect(token, services)
	if err != nil {
		// A nil *Connection in a Link would not compare equal to nil.
		return nil, err
	}
	return c, nil
}

// TunnelID returns the id of the connection's tunnel.
func (c *Connection) TunnelID() string { return c.tunnelID }

// Done is closed when the connection ends.
func (c *Connection) Done() <-chan struct{} { return c.done }

// Close ends the connection. It is safe to call more than once.
func (c *Connection) Close() {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	if t, ok := c.p.tunnels[c.tunnelID]; ok {
		t.conns = slices.DeleteFunc(t.conns, func(x *Connection) bool { return x == c })
	}
	c.closeLocked()
}

func (c *Connection) closeLocked() {
	if !c.closed {
		c.closed = true
		close(c.done)
	}
}

// origin returns the origin URL of a rule's service.
func (c *Connection) origin(service string) (*url.URL, error) {
	if u, ok := c.services[strings.TrimSuffix(service, "/")]; ok {
		return u, nil
	}

	u, err := url.Parse(service)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("service %q is not a URL", service)
	}
	return u, nil
}

// routed is how a hostname is served: by conn under rule, or not at all
// because of down.
type routed struct {
	conn *Connection
	rule ingress.Rule
	down error
}

// route finds the connection and rule serving host. It reports false
// when no record has the hostname.
func (p *Provider) route(host string) (routed, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()

	rec, found := p.records[host]
	if !found {
		return routed{}, false
	}

	t, live := p.tunnels[rec.tunnelID]
	switch {
	case !live || t.info.Deleted():
		return routed{down: errors.New("the hostname's tunnel was deleted")}, true
	case len(t.conns) == 0:
		return routed{down: errors.New("the tunnel has no connector")}, true
	}

	rt := routed{conn: t.conns[len(t.conns)-1], rule: ingress.CatchAll}
	i := slices.IndexFunc(t.rules, func(r ingress.Rule) bool {
		return r.Hostname == "" || r.Hostname == host
	})
	if i >= 0 {
		rt.rule = t.rules[i]
	}
	return rt, true
}

// serve answers a request for host through its tunnel, reporting false
// when no record has the hostname.
func (p *Provider) serve(w http.ResponseWriter, r *http.Request, host string) bool {
	rt, ok := p.route(host)
	if !ok {
		return false
	}

	log := p.edge.log
	if rt.down != nil {
		// Expected while connectors start or after a tunnel is deleted,
		// so it is no error of the edge's.
		log.Info("tunnel down", "hostname", host, "reason", rt.down.Error())
		httpapi.WriteJSON(w, StatusTunnelDown, httpapi.Body{Code: CodeTunnelDown,
			Message: rt.down.Error()})
		return true
	}

	if code, isStatus := strings.CutPrefix(rt.rule.Service, "http_status:"); isStatus {
		status, err := strconv.Atoi(code)
		if err != nil {
			status = http.StatusNotFound
		}
		httpapi.WriteError(log, w, r, &httpapi.Error{Status: status,
			Code: httpapi.CodeNotFound, Message: "no ingress rule for host " + host})
		return true
	}

	target, err := rt.conn.origin(rt.rule.Service)
	if err != nil {
		httpapi.WriteError(log, w, r, httpapi.Upstream("origin unreachable", err))
		return true
	}

	p.edge.newProxy(host, target).ServeHTTP(w, r)
	return true
}
