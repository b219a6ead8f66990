// Package fleetenv names the installation a process belongs to
// (production, staging, dev, a pull-request preview, or another named
// environment) and decides what that installation may use: local
// stand-ins for TDX, Trust Authority, GitHub and Cloudflare are refused in
// production and staging, whatever else the configuration says.
package fleetenv

import (
	"fmt"
	"regexp"
	"strings"
)

// Env is a validated environment label.
type Env string

// Well-known environments.
const (
	Production Env = "production"
	Staging    Env = "staging"
	Dev        Env = "dev"
)

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// Parse validates an environment label: a lowercase DNS-safe name of at
// most 32 characters, because it becomes part of hostnames and resource
// names. "prod" is refused as ambiguous; write "production".
func Parse(label string) (Env, error) {
	label = strings.TrimSpace(label)
	if !labelRE.MatchString(label) {
		return "", fmt.Errorf("fleetenv: %q must be 1-32 lowercase letters, digits or '-'", label)
	}
	if label == "prod" {
		return "", fmt.Errorf("fleetenv: %q is ambiguous; use %q", label, Production)
	}

	return Env(label), nil
}

// Protected reports whether e holds real users' workloads: production and
// staging.
func (e Env) Protected() bool { return e == Production || e == Staging }

// RequireReal returns an error when a protected environment is configured
// with the named local stand-in (e.g. "the local OIDC issuer").
func (e Env) RequireReal(standIn string, used bool) error {
	if used && e.Protected() {
		return fmt.Errorf("fleetenv: %s is a local stand-in and is refused in %s", standIn, e)
	}
	return nil
}
