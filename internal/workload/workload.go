// Package workload defines the workload specification that CI posts to an
// agent and that the runtime executes: EasyEnclave's deploy request
// (reference easyenclave.md §2) plus the fields DevOps Defender adds
// (expose, oracle, requires_agent_mode).
//
// Parse validates a spec at the edge so that a malformed name or path never
// reaches the runtime: app names become file names, and release assets
// become paths under the runtime's bin directory.
package workload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
)

// DefaultAppName is the name EasyEnclave gives a workload that has none.
const DefaultAppName = "unnamed"

// Spec is one workload. Unknown JSON fields are ignored, as EasyEnclave
// ignores them.
type Spec struct {
	// AppName identifies the workload for replacement and logs. Empty
	// means [DefaultAppName].
	AppName string `json:"app_name,omitempty"`

	// Cmd is the argv; Cmd[0] is looked up on the workload's PATH. When a
	// GitHubRelease is set, Cmd[0] is replaced by the fetched binary.
	Cmd []string `json:"cmd,omitempty"`

	// Env holds "KEY=VALUE" entries layered over the runtime environment.
	Env []string `json:"env,omitempty"`

	// TTY runs the process on a pseudo-terminal.
	TTY bool `json:"tty,omitempty"`

	// GitHubRelease, when set, names a release asset to fetch first.
	GitHubRelease *Release `json:"github_release,omitempty"`

	// InheritToken hands the runtime's socket token to a boot workload.
	// The runtime ignores it on deploys made through the socket.
	InheritToken bool `json:"inherit_token,omitempty"`

	// Expose asks the agent to publish a port under a hostname label.
	Expose *Expose `json:"expose,omitempty"`

	// Oracle describes a JSON document the workload serves for scraping.
	Oracle *Oracle `json:"oracle,omitempty"`

	// RequiresAgentMode is "read_only" or "read_write" when set.
	RequiresAgentMode string `json:"requires_agent_mode,omitempty"`
}

// Release is a GitHub release asset source (easyenclave.md §2.3).
type Release struct {
	Repo   string `json:"repo"`
	Asset  string `json:"asset"`
	Tag    string `json:"tag,omitempty"`
	Rename string `json:"rename,omitempty"`
}

// Expose publishes a workload port under a hostname label.
type Expose struct {
	HostnameLabel string `json:"hostname_label"`
	Port          int    `json:"port"`
}

// Oracle is the metadata of a workload that serves a JSON status document.
type Oracle struct {
	Title        string `json:"title,omitempty"`
	Path         string `json:"path,omitempty"`
	IntervalSecs int    `json:"interval_secs,omitempty"`
}

// Name returns the app name, or [DefaultAppName] when none is set.
func (s *Spec) Name() string {
	if s.AppName == "" {
		return DefaultAppName
	}
	return s.AppName
}

// Source describes where the workload comes from, in the form EasyEnclave
// reports in its list: "owner/repo@tag" for releases, else the argv.
func (s *Spec) Source() string {
	if r := s.GitHubRelease; r != nil {
		tag := r.Tag
		if tag == "" {
			tag = "latest"
		}
		return r.Repo + "@" + tag
	}
	return strings.Join(s.Cmd, " ")
}

var (
	appNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	repoRE    = regexp.MustCompile(`^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$`)
	envKeyRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// ValidAppName reports whether name is safe to use as an app name: it is
// used as a file name, so only [A-Za-z0-9._-] is allowed, and "." and ".."
// are refused.
func ValidAppName(name string) bool {
	return appNameRE.MatchString(name) && name != "." && name != ".."
}

// Parse decodes and validates one spec. The input must be a JSON object.
func Parse(data []byte) (Spec, error) {
	var s Spec
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return s, errors.New("workload: spec must be a JSON object")
	}
	if err := rejectNullCmd(trimmed); err != nil {
		return s, err
	}

	if err := json.Unmarshal(trimmed, &s); err != nil {
		return s, fmt.Errorf("workload: decoding spec: %w", err)
	}
	if err := s.Validate(); err != nil {
		return s, err
	}
	return s, nil
}

// rejectNullCmd refuses an explicit "cmd": null, which EasyEnclave treats as
// a parse error rather than as an empty argv.
func rejectNullCmd(data []byte) error {
	var probe struct {
		Cmd json.RawMessage `json:"cmd"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return fmt.Errorf("workload: decoding spec: %w", err)
	}
	if string(probe.Cmd) == "null" {
		return errors.New("workload: cmd must be an array of strings, not null")
	}
	return nil
}

// Validate checks every field that later becomes a path, a name or a port.
func (s *Spec) Validate() error {
	var errs []error
	if s.AppName != "" && !ValidAppName(s.AppName) {
		errs = append(errs, fmt.Errorf("app_name %q must match [A-Za-z0-9._-]{1,128}", s.AppName))
	}

	for _, kv := range s.Env {
		k, _, ok := strings.Cut(kv, "=")
		if ok && !envKeyRE.MatchString(k) {
			errs = append(errs, fmt.Errorf("env name %q is not a valid variable name", k))
		}
	}

	if s.GitHubRelease != nil {
		errs = append(errs, s.GitHubRelease.validate())
	}
	if s.Expose != nil {
		errs = append(errs, s.Expose.validate())
	}

	switch s.RequiresAgentMode {
	case "", "read_only", "read_write":
	default:
		errs = append(errs, fmt.Errorf("requires_agent_mode %q must be read_only or read_write",
			s.RequiresAgentMode))
	}

	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("workload: invalid spec: %w", err)
	}
	return nil
}

func (r *Release) validate() error {
	var errs []error
	if !repoRE.MatchString(r.Repo) {
		errs = append(errs, fmt.Errorf("github_release.repo %q must be owner/name", r.Repo))
	}
	if r.Asset == "" || strings.Contains(r.Asset, "/") || !safeRelPath(r.Asset) {
		errs = append(errs, fmt.Errorf("github_release.asset %q must be a plain file name", r.Asset))
	}

	if r.Rename != "" && !safeRelPath(r.Rename) {
		errs = append(errs, fmt.Errorf("github_release.rename %q must be a relative path "+
			"without ..", r.Rename))
	}
	if strings.ContainsAny(r.Tag, "/?#") {
		errs = append(errs, fmt.Errorf("github_release.tag %q contains a URL delimiter", r.Tag))
	}

	return errors.Join(errs...)
}

// safeRelPath reports whether p stays inside the directory it is joined to.
func safeRelPath(p string) bool {
	if p == "" || path.IsAbs(p) || strings.ContainsRune(p, 0) {
		return false
	}

	for _, elem := range strings.Split(p, "/") {
		if elem == ".." {
			return false
		}
	}
	return true
}

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidLabel reports whether l is a lowercase RFC 1123 DNS label.
func ValidLabel(l string) bool { return labelRE.MatchString(l) }

func (e *Expose) validate() error {
	var errs []error
	if !ValidLabel(e.HostnameLabel) {
		errs = append(errs, fmt.Errorf("expose.hostname_label %q must be a lowercase DNS label",
			e.HostnameLabel))
	}
	if e.Port < 1 || e.Port > 65535 {
		errs = append(errs, fmt.Errorf("expose.port %d must be in 1..65535", e.Port))
	}
	return errors.Join(errs...)
}
