package websession

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// maxReturnTo bounds a return_to value; it travels in the OAuth state.
const maxReturnTo = 2048

// hostPattern is an allowed return_to host: exact ("host[:port]") or, with
// wildcard set, any subdomain of host ("*.domain[:port]").
type hostPattern struct {
	host     string
	wildcard bool
}

func parseHostPattern(s string) (hostPattern, error) {
	p := hostPattern{host: strings.ToLower(strings.TrimSpace(s))}
	if rest, ok := strings.CutPrefix(p.host, "*."); ok {
		p.host, p.wildcard = rest, true
	}

	u, err := url.Parse("https://" + p.host)
	if err != nil || u.Host != p.host || p.host == "" || strings.Contains(p.host, "*") {
		return hostPattern{}, fmt.Errorf("return host %q is not host[:port] or *.domain[:port]", s)
	}
	return p, nil
}

// match reports whether host (lowercase, with its port if any) is allowed.
// Ports are part of the origin: a pattern without a port matches only
// hosts without one.
func (p hostPattern) match(host string) bool {
	if p.wildcard {
		return strings.HasSuffix(host, "."+p.host)
	}
	return host == p.host
}

var errReturnTo = errors.New("return_to must be a path on this site or a URL on a fleet host")

// checkReturnTo validates where to send the browser after signing in and
// returns it cleaned. A relative path must start with a single "/" (so
// "//evil" and "/\evil", which browsers read as another host, are
// refused); an absolute URL must use the public URL's scheme and an
// allowed host, and carry no user info. Empty means "/".
func (c *config) checkReturnTo(raw string) (string, error) {
	if raw == "" {
		return "/", nil
	}
	if len(raw) > maxReturnTo || strings.ContainsAny(raw, "\\\r\n\t") || hasControl(raw) {
		return "", errReturnTo
	}

	u, err := url.Parse(raw)
	if err != nil {
		return "", errReturnTo
	}

	if !u.IsAbs() {
		if u.Host != "" || u.Opaque != "" || !strings.HasPrefix(raw, "/") ||
			strings.HasPrefix(raw, "//") {
			return "", errReturnTo
		}
		return u.String(), nil
	}

	if u.Scheme != c.public.Scheme || u.User != nil || u.Opaque != "" {
		return "", errReturnTo
	}

	host := strings.ToLower(u.Host)
	for _, p := range c.returnOK {
		if p.match(host) {
			u.Host = host
			return u.String(), nil
		}
	}
	return "", errReturnTo
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}
