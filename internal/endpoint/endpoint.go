// Package endpoint vets the URLs of services we send credentials, tokens
// or keys to: they must be https, except for plain http to a loopback
// host, where the local stand-ins of dev mode (token issuers, the Trust
// Authority) listen.
package endpoint

import (
	"fmt"
	"net"
	"net/url"
)

// Check returns an error unless raw is an absolute URL without user info
// that is https, or http to a loopback host, so that nothing it carries
// crosses a network in clear text. A query is allowed: some endpoints come
// with one, such as the Actions runner's token request URL.
func Check(raw string) error { return check(raw, false) }

// CheckBase is [Check] for a base URL that paths are appended to: it also
// refuses a query or fragment, which would end up before the path.
func CheckBase(raw string) error { return check(raw, true) }

func check(raw string, base bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	switch {
	case u.Host == "":
		return fmt.Errorf("%q is not an absolute URL", raw)
	case u.User != nil:
		return fmt.Errorf("%q carries credentials", raw)
	case base && (u.RawQuery != "" || u.Fragment != ""):
		return fmt.Errorf("%q has a query or fragment", raw)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	}

	return fmt.Errorf("%q must be https (http only to a loopback host)", raw)
}

// isLoopback reports whether host is "localhost" or a loopback address.
// Other names are not resolved: what they point at may change.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
