// Package reap decides which tunnels and DNS records of an environment
// nobody uses any more, and which older control planes a new one must
// fence, from one [ingress.View] (reference cf.md §5 and §7). It also
// builds the operator views of GET /admin/cf/snapshot and /admin/cf/map
// (cf.md §6).
//
// The decisions are pure functions of their input, so every safety rule
// is a table test. Relative to the reference they refuse to act on a
// degraded view (a list failed or came back short: cf.md §9 item 3), need
// several failed probes spread over the grace period rather than one
// (item 6), never touch a tunnel younger than the grace period, another
// environment's resources, or a DNS record a known agent uses, and do
// clean up workload records whose tunnel is gone (items 5 and 7).
package reap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// Defaults of [Input].
const (
	// DefaultGrace is longer than an agent takes to boot and register, as
	// the reference's 900 s was (cf.md §5.1).
	DefaultGrace = 15 * time.Minute

	// DefaultMinFailures is how many probes in a row must fail.
	DefaultMinFailures = 3
)

// Probe is the probe history of one tunnel: how many probes of its agent
// API in a row failed, and when the first of them did. A success resets
// it.
type Probe struct {
	Failures     int       `json:"failures"`
	FirstFailure time.Time `json:"first_failure,omitzero"`
}

// Probes keeps the probe history of tunnels by id, for the collector. It
// is not safe for concurrent use.
type Probes map[string]Probe

// Observe records one probe of a tunnel at time at.
func (p Probes) Observe(tunnelID string, ok bool, at time.Time) {
	if ok {
		delete(p, tunnelID)
		return
	}

	h := p[tunnelID]
	if h.Failures == 0 {
		h.FirstFailure = at
	}
	h.Failures++
	p[tunnelID] = h
}

// Retain forgets every tunnel that is not in ids, e.g. tunnels that are
// gone from the latest complete view.
func (p Probes) Retain(ids []string) {
	for id := range p {
		if !slices.Contains(ids, id) {
			delete(p, id)
		}
	}
}

// Input is everything [Decide] looks at.
type Input struct {
	// View is the provider's state. Nothing is deleted if it is degraded.
	View ingress.View

	// Env is this installation's environment label; only its resources
	// ("dd-<env>-agent-…", "dd-<env>-api-…") are candidates. Required.
	Env string

	// Domain is the zone; records outside it are never touched. Required.
	Domain string

	// KnownTunnels are the tunnel ids of the agents in the registry.
	KnownTunnels []string

	// KnownHostnames are every hostname a registered agent uses (primary,
	// API and workload hostnames). Their records are never deleted.
	KnownHostnames []string

	// Probes is the probe history by tunnel id.
	Probes map[string]Probe

	// Grace is how old a tunnel or record must be, and how long its
	// probes must have been failing, before it may go. Zero means
	// [DefaultGrace].
	Grace time.Duration

	// MinFailures is how many probes in a row must have failed. Zero
	// means [DefaultMinFailures].
	MinFailures int

	// Now is the time of the decision. Required.
	Now time.Time
}

// Action is one resource that may be deleted, or was kept, and why.
type Action struct {
	ID   string `json:"id"`
	Name string `json:"name"`

	// TunnelID is, for a record, the tunnel it points at.
	TunnelID string `json:"tunnel_id,omitempty"`

	// Records are, for a tunnel, the names of the records that go with it
	// ([ingress.Provider.DeleteTunnel] deletes them).
	Records []string `json:"records,omitempty"`

	Reason string `json:"reason"`
}

// Decision is what [Decide] allows.
type Decision struct {
	// Refused, when set, says why nothing at all may be deleted.
	Refused string `json:"refused,omitempty"`

	// Tunnels may be deleted, with the records pointing at them.
	Tunnels []Action `json:"tunnels"`

	// Records may be deleted: records of this environment whose tunnel is
	// gone.
	Records []Action `json:"records"`

	// Kept are candidates a rule protected, for the log and the operator.
	Kept []Action `json:"kept"`
}

// Decide returns what may be deleted from in.View. The rules, in order:
//   - nothing from a degraded view, or without env, domain and clock;
//   - only agent tunnels of this environment that no registered agent
//     holds, whose created_at is older than the grace period, whose
//     records serve no known hostname, and whose probes failed at least
//     MinFailures times in a row over at least the grace period;
//   - only records in the zone, named like this environment's agent or
//     API hostnames, older than the grace period, whose tunnel is absent
//     from the (complete) view, and that no registered agent uses.
func Decide(in Input) Decision {
	d := Decision{Tunnels: []Action{}, Records: []Action{}, Kept: []Action{}}
	if why := in.refusal(); why != "" {
		d.Refused = why
		return d
	}

	in.setDefaults()
	s := newState(in)
	for i := range in.View.Tunnels {
		s.decideTunnel(&in.View.Tunnels[i], &d)
	}

	for i := range in.View.Records {
		s.decideRecord(&in.View.Records[i], &d)
	}

	return d
}

func (in *Input) refusal() string {
	switch {
	case in.Env == "" || in.Domain == "" || in.Now.IsZero():
		return "env, domain and time are required"
	case in.View.Degraded():
		errs := make([]string, 0, len(in.View.Errors))
		for _, e := range in.View.Errors {
			errs = append(errs, e.String())
		}
		return "the view is degraded: " + strings.Join(errs, "; ")
	}

	return ""
}

func (in *Input) setDefaults() {
	if in.Grace <= 0 {
		in.Grace = DefaultGrace
	}
	if in.MinFailures <= 0 {
		in.MinFailures = DefaultMinFailures
	}
}

// state indexes the input for the per-resource rules.
type state struct {
	in         Input
	knownIDs   map[string]bool
	knownHosts map[string]bool
	live       map[string]bool              // tunnel ids in the view
	byTunnel   map[string][]*ingress.Record // records by the tunnel they point at
	reaped     map[string]bool              // tunnels this decision deletes
}

func newState(in Input) *state {
	s := &state{in: in, knownIDs: set(in.KnownTunnels), knownHosts: set(in.KnownHostnames),
		live: map[string]bool{}, byTunnel: map[string][]*ingress.Record{},
		reaped: map[string]bool{}}

	for _, t := range in.View.Tunnels {
		if !t.Deleted() {
			s.live[strings.ToLower(t.ID)] = true
		}
	}

	for i := range in.View.Records {
		r := &in.View.Records[i]
		if id := r.TunnelID(); id != "" {
			s.byTunnel[id] = append(s.byTunnel[id], r)
		}
	}

	return s
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[strings.ToLower(x)] = true
	}
	return m
}

func (s *state) ours(name string, roles ...ingress.Role) bool {
	rn, ok := ingress.ParseResourceName(name)
	return ok && rn.Env == s.in.Env && slices.Contains(roles, rn.Role)
}

func (s *state) decideTunnel(t *ingress.TunnelInfo, d *Decision) {
	id := strings.ToLower(t.ID)
	if t.Deleted() || !s.ours(t.Name, ingress.RoleAgent) || s.knownIDs[id] {
		return
	}

	a := Action{ID: t.ID, Name: t.Name}
	for _, r := range s.byTunnel[id] {
		a.Records = append(a.Records, r.Name)
	}

	if why := s.protectTunnel(t); why != "" {
		a.Reason = why
		d.Kept = append(d.Kept, a)
		return
	}

	p := s.in.Probes[t.ID]
	a.Reason = fmt.Sprintf("no registered agent holds it; %d probes failed in a row since %s",
		p.Failures, p.FirstFailure.UTC().Format(time.RFC3339))
	d.Tunnels = append(d.Tunnels, a)
	s.reaped[id] = true
}

// protectTunnel returns why an unknown agent tunnel must stay, or "".
func (s *state) protectTunnel(t *ingress.TunnelInfo) string {
	now, grace := s.in.Now, s.in.Grace
	if t.CreatedAt.IsZero() {
		return "created_at unknown"
	}
	if age := now.Sub(t.CreatedAt); age < grace {
		return fmt.Sprintf("created %s ago, within the grace period of %s", age.Round(time.Second),
			grace)
	}

	for _, r := range s.byTunnel[strings.ToLower(t.ID)] {
		if s.knownHosts[strings.ToLower(r.Name)] {
			return "its record " + r.Name + " serves a registered agent"
		}
	}

	p := s.in.Probes[t.ID]
	if p.Failures < s.in.MinFailures {
		return fmt.Sprintf("%d of %d probes failed in a row", p.Failures, s.in.MinFailures)
	}
	if span := now.Sub(p.FirstFailure); p.FirstFailure.IsZero() || span < grace {
		return fmt.Sprintf("probes failing for %s, within the grace period of %s",
			span.Round(time.Second), grace)
	}
	return ""
}

func (s *state) decideRecord(r *ingress.Record, d *Decision) {
	tid := r.TunnelID()
	name := strings.ToLower(r.Name)
	switch {
	case tid == "", !strings.HasSuffix(name, "."+s.in.Domain),
		s.knownHosts[name], s.knownIDs[tid],
		s.reaped[tid], // goes with its tunnel
		s.live[tid],   // routes to a tunnel that exists
		!s.ours(name, ingress.RoleAgent, ingress.RoleAPI):
		return
	}

	a := Action{ID: r.ID, Name: r.Name, TunnelID: tid}
	if r.CreatedAt.IsZero() {
		a.Reason = "created_at unknown"
		d.Kept = append(d.Kept, a)
		return
	}

	if age := s.in.Now.Sub(r.CreatedAt); age < s.in.Grace {
		a.Reason = fmt.Sprintf("created %s ago, within the grace period of %s",
			age.Round(time.Second), s.in.Grace)
		d.Kept = append(d.Kept, a)
		return
	}

	a.Reason = "its tunnel " + tid + " no longer exists"
	d.Records = append(d.Records, a)
}

// Apply carries out a decision through p: each tunnel is deleted with
// its records; a record is deleted only after p confirms, once more, that
// its tunnel is gone, so that a tunnel the listing missed despite every
// check still keeps its records. Every action is tried; the errors are
// joined. Log may be nil.
func Apply(ctx context.Context, p ingress.Provider, d Decision, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if d.Refused != "" {
		log.InfoContext(ctx, "reaping refused", "reason", d.Refused)
		return nil
	}

	var errs []error
	for _, a := range d.Tunnels {
		if err := p.DeleteTunnel(ctx, a.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		log.InfoContext(ctx, "orphan tunnel reaped", "tunnel_id", a.ID, "name", a.Name,
			"records", a.Records, "reason", a.Reason)
	}

	for _, a := range d.Records {
		errs = append(errs, applyRecord(ctx, p, a, log))
	}

	return errors.Join(errs...)
}

func applyRecord(ctx context.Context, p ingress.Provider, a Action, log *slog.Logger) error {
	t, err := p.Tunnel(ctx, a.TunnelID)
	switch {
	case err == nil && !t.Deleted():
		log.WarnContext(ctx, "record kept: its tunnel exists after all", "record", a.Name,
			"tunnel_id", a.TunnelID)
		return nil
	case err != nil && !errors.Is(err, ingress.ErrNotFound):
		return fmt.Errorf("reap: checking tunnel %s of %s: %w", a.TunnelID, a.Name, err)
	}

	if err := p.DeleteRecord(ctx, a.ID); err != nil {
		return err
	}

	log.InfoContext(ctx, "dangling record reaped", "record", a.Name, "tunnel_id", a.TunnelID)
	return nil
}

// Predecessors returns the control-plane tunnels a new control plane
// fences (cf.md §7): tunnels of env's control planes, other than self,
// created before self, whose ingress routes hostname. Matching by the
// hostname they serve, not by name alone, finds them even though a
// control-plane tunnel's name does not encode its hostname, and leaves
// alone a control plane of the same env serving another hostname. The
// view must be complete and list the ingress of every "dd-<env>-cp-"
// tunnel ([ingress.ListOptions.IngressPrefix]). The result is oldest
// first.
func Predecessors(v ingress.View, env, selfTunnelID, hostname string) ([]ingress.TunnelInfo,
	error) {
	if v.Degraded() {
		return nil, errors.New("reap: the view is degraded")
	}

	isSelf := func(t ingress.TunnelInfo) bool { return t.ID == selfTunnelID }
	i := slices.IndexFunc(v.Tunnels, isSelf)
	if i < 0 {
		return nil, fmt.Errorf("reap: own tunnel %s is not in the view", selfTunnelID)
	}

	self := v.Tunnels[i]
	var out []ingress.TunnelInfo
	for _, t := range v.Tunnels {
		rn, ok := ingress.ParseResourceName(t.Name)
		if t.ID == self.ID || t.Deleted() || !ok || rn.Env != env || rn.Role != ingress.RoleCP {
			continue
		}
		if !t.IngressListed {
			return nil, fmt.Errorf("reap: ingress of %s was not read", t.Name)
		}

		if slices.Contains(t.Hostnames, hostname) && t.CreatedAt.Before(self.CreatedAt) {
			out = append(out, t)
		}
	}

	slices.SortFunc(out, func(a, b ingress.TunnelInfo) int {
		return a.CreatedAt.Compare(b.CreatedAt)
	})
	return out, nil
}
