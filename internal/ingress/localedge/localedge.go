// Package localedge is the local stand-in for Cloudflare's edge in the
// single-machine fleet: one loopback HTTP port that routes requests by
// Host header to the origin published for that hostname, the way a tunnel's
// ingress rules route a public hostname to a service behind cloudflared.
//
// [Provider] is the stand-in for the Cloudflare account and zone: an
// [ingress.Provider] whose tunnels and records route on the edge, so the
// control plane's registration, expose, reaping and fencing code runs
// unchanged in the dev fleet. [Connector] is the stand-in for cloudflared:
// it holds a tunnel with the tunnel token and maps the tunnel's
// "http://localhost:PORT" services to origins on this machine.
//
// [NewAPI] serves a Provider over HTTP, and [Client] is the provider, and
// the connectors' [Linker], of another process on that edge: a second
// control plane started next to a running dev fleet creates its tunnels
// and holds them on the first one's edge.
//
// Hostnames live under a domain that defaults to "localhost", whose
// subdomains browsers resolve to loopback. Go's resolver does not, so
// [Dialer] maps them to 127.0.0.1 for the fleet's own HTTP clients.
package localedge

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// Options configures an [Edge].
type Options struct {
	// Domain is the parent domain of every routed hostname. Empty means
	// "localhost".
	Domain string

	// Port is the port the edge listens on, used to build public URLs.
	// Required.
	Port int

	// Logger receives routing events. Nil discards them.
	Logger *slog.Logger
}

// Edge routes hostnames to origins. It is safe for concurrent use.
type Edge struct {
	opts Options
	log  *slog.Logger

	// transport reaches origins; "localhost" and its subdomains dial
	// loopback, as in [HTTPClient].
	transport http.RoundTripper

	mu       sync.RWMutex
	routes   map[string]route // hostname -> route
	provider *Provider        // tunnel records, consulted after routes
}

type route struct {
	owner string
	proxy *httputil.ReverseProxy
}

// New returns an edge with no routes.
func New(opts Options) (*Edge, error) {
	if opts.Port <= 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("localedge: port %d out of range", opts.Port)
	}

	if opts.Domain == "" {
		opts.Domain = "localhost"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Edge{opts: opts, log: log.With("component", "localedge"),
		transport: HTTPClient().Transport, routes: map[string]route{}}, nil
}

// Domain returns the parent domain of routed hostnames.
func (e *Edge) Domain() string { return e.opts.Domain }

// Port returns the edge's port.
func (e *Edge) Port() int { return e.opts.Port }

// URL returns the public URL of hostname on this edge.
func (e *Edge) URL(hostname string) string {
	return fmt.Sprintf("http://%s:%d", hostname, e.opts.Port)
}

// Publish routes hostname to origin on behalf of owner (an agent or the
// control plane) and returns the hostname's public URL. Like an upserted
// DNS record, publishing a hostname that another owner holds moves it to
// the new owner: the control plane decides who holds a name.
func (e *Edge) Publish(ctx context.Context, owner, hostname, origin string) (string, error) {
	hostname = strings.ToLower(hostname)
	if !strings.HasSuffix(hostname, "."+e.opts.Domain) {
		return "", fmt.Errorf("localedge: hostname %q is not under %q", hostname, e.opts.Domain)
	}

	target, err := url.Parse(origin)
	if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
		return "", fmt.Errorf("localedge: origin %q is not an absolute http URL", origin)
	}

	e.mu.Lock()
	defer e.mu.Unlock()

	prev := e.routes[hostname].owner
	e.routes[hostname] = route{owner: owner, proxy: e.newProxy(hostname, target)}
	e.log.Info("route published", "hostname", hostname, "origin", origin, "owner", owner,
		"previous_owner", prev)
	return e.URL(hostname), nil
}

// Unpublish removes every route that owner still holds.
func (e *Edge) Unpublish(ctx context.Context, owner string) error {
	e.mu.Lock()
	defer e.mu.Unlock()

	for h, r := range e.routes {
		if r.owner == owner {
			delete(e.routes, h)
			e.log.Info("route removed", "hostname", h, "owner", owner)
		}
	}

	return nil
}

// Routes returns the published hostnames and their owners.
func (e *Edge) Routes() map[string]string {
	e.mu.RLock()
	defer e.mu.RUnlock()

	out := make(map[string]string, len(e.routes))
	for h, r := range e.routes {
		out[h] = r.owner
	}
	return out
}

// ClientIPHeader is the header in which Cloudflare's edge, and this one,
// tell an origin the address of the client.
const ClientIPHeader = "CF-Connecting-IP"

func (e *Edge) newProxy(hostname string, target *url.URL) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Transport: e.transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
			// Origins see the public hostname and, in CF-Connecting-IP, the
			// client's address, as behind cloudflared.
			pr.Out.Host = pr.In.Host
			if host, _, err := net.SplitHostPort(pr.In.RemoteAddr); err == nil {
				pr.Out.Header.Set(ClientIPHeader, host)
			}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			e.log.Warn("origin unreachable", "hostname", hostname, "err", err)
			httpapi.WriteError(e.log, w, r, httpapi.Upstream("origin unreachable", err))
		},
	}
}

// ServeHTTP routes r by its Host header: a published route first, then
// the record of a tunnel of the edge's [Provider]. An unknown hostname
// gets 404 and an unreachable origin 502, as Cloudflare's catch-all rule
// and edge do.
func (e *Edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := strings.ToLower(r.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}

	e.mu.RLock()
	rt, ok := e.routes[host]
	p := e.provider
	e.mu.RUnlock()

	if ok {
		rt.proxy.ServeHTTP(w, r)
		return
	}
	if p != nil && p.serve(w, r, host) {
		return
	}
	httpapi.WriteError(e.log, w, r, httpapi.NotFound("no route for host "+host))
}

// Dialer dials like net.Dialer but resolves "localhost" and every
// "*.localhost" name to 127.0.0.1, as browsers do (RFC 6761 §6.3).
type Dialer struct {
	net.Dialer
}

// DialContext implements the http.Transport dial hook.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("localedge: %w", err)
	}

	if IsLocalhost(host) {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	return d.Dialer.DialContext(ctx, network, addr)
}

// IsLocalhost reports whether host is "localhost" or a subdomain of it.
func IsLocalhost(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// HTTPClient returns a client whose dialer resolves *.localhost to
// loopback. Other names resolve normally.
func HTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	d := &Dialer{}
	t.DialContext = d.DialContext
	return &http.Client{Transport: t}
}
