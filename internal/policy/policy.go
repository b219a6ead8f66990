// Package policy decides whether verified TDX evidence may join the fleet:
// which firmware and boot chain (MRTD and RTMR0–3 allowlists), on which
// platform TCB levels (Intel's TCB status, with an optional grace window
// for out-of-date platforms), and never a debug TD.
//
// A [Policy] only judges measurements that package tdx or package ita has
// already verified. In [Enforce] mode a violation rejects the evidence; in
// [Observe] mode the violations are reported and the evidence passes, so
// that a fleet can learn its measurements before pinning them. Unlike the
// reference (auth.md §3.7, §7.3), the policy covers the RTMRs and the debug
// bit, and [Policy.Empty] lets production and staging refuse to run with
// nothing pinned.
package policy

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// Mode says what a violation does.
type Mode string

const (
	// Enforce rejects evidence that violates the policy.
	Enforce Mode = "enforce"
	// Observe reports violations but accepts the evidence.
	Observe Mode = "observe"
)

// Intel's TCB statuses (Intel TDX DCAP Quote Verification, TCB info
// tcbStatus values). "Revoked" is deliberately absent: a revoked
// platform can never be accepted.
const (
	StatusUpToDate              = "UpToDate"
	StatusSWHardeningNeeded     = "SWHardeningNeeded"
	StatusConfigurationNeeded   = "ConfigurationNeeded"
	StatusConfigAndSWHardening  = "ConfigurationAndSWHardeningNeeded"
	StatusOutOfDate             = "OutOfDate"
	StatusOutOfDateConfigNeeded = "OutOfDateConfigurationNeeded"
)

// measurementSize is the size of MRTD and each RTMR (SHA-384).
const measurementSize = 48

// knownStatuses are the statuses a policy may accept.
var knownStatuses = []string{
	StatusUpToDate, StatusSWHardeningNeeded, StatusConfigurationNeeded,
	StatusConfigAndSWHardening, StatusOutOfDate, StatusOutOfDateConfigNeeded,
}

// Policy is a measurement and TCB policy. The zero value is not valid:
// build one with [FromEnv] or fill the fields and call [Policy.Validate].
type Policy struct {
	// MRTD is the set of allowed MRTD values, lowercase hex (48 bytes).
	// Evidence must match one. Required in enforce mode.
	MRTD []string `json:"mrtd,omitempty"`

	// RTMR are the allowed values of RTMR0–3, lowercase hex (48 bytes
	// each). An empty set does not check that register.
	RTMR [4][]string `json:"rtmr"`

	// TCBStatuses are the accepted TCB statuses. Nil means only
	// "UpToDate". Evidence whose TCB was not appraised never passes.
	TCBStatuses []string `json:"tcb_statuses"`

	// OutOfDateGrace, when positive, accepts TCB status "OutOfDate" until
	// this long after the platform's TCB date (the date of the TCB level
	// it runs), because Intel's fixes take time to roll out to a fleet.
	// It applies whether or not TCBStatuses lists "OutOfDate", and bounds
	// it when it does. Zero adds no window.
	OutOfDateGrace time.Duration `json:"outofdate_grace,omitempty"`

	// Mode is [Enforce] or [Observe]. Empty means Enforce.
	Mode Mode `json:"mode"`

	// Now is the clock for the grace window. Nil means time.Now.
	Now func() time.Time `json:"-"`
}

// Validate checks the policy's fields and normalises them: hex values to
// lowercase, an empty mode to Enforce, nil TCBStatuses to "UpToDate".
func (p *Policy) Validate() error {
	var err error
	if p.MRTD, err = normaliseSet("mrtd", p.MRTD); err != nil {
		return err
	}
	for i := range p.RTMR {
		if p.RTMR[i], err = normaliseSet("rtmr"+strconv.Itoa(i), p.RTMR[i]); err != nil {
			return err
		}
	}

	if p.TCBStatuses == nil {
		p.TCBStatuses = []string{StatusUpToDate}
	}
	for _, s := range p.TCBStatuses {
		if !slices.Contains(knownStatuses, s) {
			return fmt.Errorf("policy: TCB status %q is not one of %s", s,
				strings.Join(knownStatuses, ", "))
		}
	}
	if p.OutOfDateGrace < 0 {
		return errors.New("policy: out-of-date grace must not be negative")
	}

	switch p.Mode {
	case "":
		p.Mode = Enforce
	case Enforce, Observe:
	default:
		return fmt.Errorf("policy: mode %q is not enforce or observe", p.Mode)
	}

	if p.Mode == Enforce && len(p.MRTD) == 0 {
		return errors.New("policy: enforce mode requires an MRTD allowlist")
	}
	return nil
}

// normaliseSet checks that every value is 48 bytes of hex and returns
// them lowercase, sorted and without duplicates.
func normaliseSet(field string, vals []string) ([]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}

	out := make([]string, 0, len(vals))
	for _, v := range vals {
		v = strings.ToLower(v)
		if b, err := hex.DecodeString(v); err != nil || len(b) != measurementSize {
			return nil, fmt.Errorf("policy: %s value %q is not %d bytes of hex", field, v,
				measurementSize)
		}
		out = append(out, v)
	}

	slices.Sort(out)
	return slices.Compact(out), nil
}

// Empty reports whether the policy pins no measurement at all, so that
// production and staging can refuse to run with it.
func (p *Policy) Empty() bool {
	if len(p.MRTD) > 0 {
		return false
	}

	for _, set := range p.RTMR {
		if len(set) > 0 {
			return false
		}
	}
	return true
}

// Verdict is the outcome of [Policy.Evaluate].
type Verdict struct {
	// Mode is the policy's mode.
	Mode Mode
	// Violations are the checks the evidence failed, in field order.
	Violations []*Mismatch
}

// OK reports whether the evidence passed every check.
func (v *Verdict) OK() bool { return len(v.Violations) == 0 }

// Joined returns the violations joined into one error, or nil; whatever
// the mode, for logging.
func (v *Verdict) Joined() error {
	errs := make([]error, len(v.Violations))
	for i, m := range v.Violations {
		errs[i] = m
	}
	return errors.Join(errs...)
}

// Err returns the violations in enforce mode and nil in observe mode: the
// error a caller rejects the evidence with.
func (v *Verdict) Err() error {
	if v.Mode == Observe {
		return nil
	}
	return v.Joined()
}

// Check evaluates the evidence and returns [Verdict.Err]: nil when it may
// pass, the joined [*Mismatch] values otherwise.
func (p *Policy) Check(m *tdx.Measurements, tcb *tdx.TCB) error {
	return p.Evaluate(m, tcb).Err()
}

// Evaluate checks verified measurements m and the platform's appraised
// TCB level tcb (nil if it was not appraised) against every rule of the
// policy, and returns all the violations, not only the first.
func (p *Policy) Evaluate(m *tdx.Measurements, tcb *tdx.TCB) *Verdict {
	v := &Verdict{Mode: cmpMode(p.Mode)}
	add := func(mm *Mismatch) {
		if mm != nil {
			v.Violations = append(v.Violations, mm)
		}
	}

	add(checkSet("mrtd", m.MRTD, p.MRTD))
	for i, set := range p.RTMR {
		add(checkSet("rtmr"+strconv.Itoa(i), m.RTMR[i], set))
	}
	add(p.checkTCB(tcb))

	if m.Debug {
		// A debug TD's memory and registers are open to the host, so its
		// measurements prove nothing (Intel TDX module spec, ATTRIBUTES).
		add(&Mismatch{Field: "debug", Got: "true", Want: []string{"false"}})
	}
	return v
}

func cmpMode(m Mode) Mode {
	if m == "" {
		return Enforce
	}
	return m
}

// checkSet checks an any-of allowlist; an empty list checks nothing.
func checkSet(field string, got []byte, allowed []string) *Mismatch {
	if len(allowed) == 0 {
		return nil
	}
	h := hex.EncodeToString(got)
	if slices.Contains(allowed, h) {
		return nil
	}
	return &Mismatch{Field: field, Got: h, Want: allowed}
}

// checkTCB accepts a listed status, or "OutOfDate" within the grace
// window counted from the TCB date.
func (p *Policy) checkTCB(tcb *tdx.TCB) *Mismatch {
	accepted := p.TCBStatuses
	if accepted == nil {
		accepted = []string{StatusUpToDate}
	}

	want := slices.Clone(accepted)
	if p.OutOfDateGrace > 0 {
		want = append(want, StatusOutOfDate+" for "+p.OutOfDateGrace.String()+" after its TCB date")
	}

	switch {
	case tcb == nil || tcb.Status == "":
		return &Mismatch{Field: "tcb_status", Got: "not appraised", Want: want}
	case p.OutOfDateGrace > 0 && tcb.Status == StatusOutOfDate:
		return p.checkGrace(tcb, want)
	case slices.Contains(accepted, tcb.Status):
		return nil
	}

	return &Mismatch{Field: "tcb_status", Got: tcb.Status, Want: want}
}

// checkGrace accepts an out-of-date TCB until its date plus the grace.
func (p *Policy) checkGrace(tcb *tdx.TCB, want []string) *Mismatch {
	if tcb.Date.IsZero() {
		return &Mismatch{Field: "tcb_date", Got: "unknown", Want: want}
	}

	now := time.Now
	if p.Now != nil {
		now = p.Now
	}

	t := now()
	if t.Before(tcb.Date.Add(p.OutOfDateGrace)) {
		return nil
	}

	oldest := t.Add(-p.OutOfDateGrace).UTC().Format(time.RFC3339)
	return &Mismatch{Field: "tcb_date", Got: tcb.Date.UTC().Format(time.RFC3339),
		Want: []string{"after " + oldest + " for status OutOfDate"}}
}

// Mismatch is one failed check: which field, what the evidence has, and
// what the policy allows.
type Mismatch struct {
	// Field is "mrtd", "rtmr0"…"rtmr3", "tcb_status", "tcb_date" or
	// "debug".
	Field string
	// Got is the evidence's value.
	Got string
	// Want lists the accepted values.
	Want []string
}

func (m *Mismatch) Error() string {
	return "policy: " + m.Field + " " + m.Got + " not allowed (want " + wantText(m.Want) + ")"
}

func wantText(want []string) string {
	if len(want) == 1 {
		return want[0]
	}
	return "one of " + strings.Join(want, ", ")
}
