package policy

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// Measurement values of the tests, as hex.
var (
	mrtdA = strings.Repeat("a1", 48)
	mrtdB = strings.Repeat("b2", 48)
	rtmrX = strings.Repeat("0c", 48)
	rtmrY = strings.Repeat("0d", 48)
	zero  = strings.Repeat("00", 48)
)

var now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func mustHex(s string) tdx.Hex {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// goodTD is evidence every test policy accepts unless it changes it.
func goodTD() *tdx.Measurements {
	return &tdx.Measurements{
		MRTD: mustHex(mrtdA),
		RTMR: [4]tdx.Hex{mustHex(rtmrX), mustHex(rtmrX), mustHex(zero), mustHex(zero)},
	}
}

func upToDate() *tdx.TCB {
	return &tdx.TCB{Status: "UpToDate", Date: now.AddDate(0, -2, 0)}
}

// basePolicy pins MRTD and RTMR0 and accepts UpToDate.
func basePolicy() *Policy {
	p := &Policy{MRTD: []string{mrtdB, strings.ToUpper(mrtdA)}, RTMR: [4][]string{{rtmrX}},
		Now: func() time.Time { return now }}
	if err := p.Validate(); err != nil {
		panic(err)
	}
	return p
}

func TestEvaluate(t *testing.T) {
	tests := map[string]struct {
		policy func(p *Policy)
		td     func(m *tdx.Measurements)
		tcb    *tdx.TCB
		want   []*Mismatch
	}{
		"accepted": {tcb: upToDate()},
		"mrtd": {td: func(m *tdx.Measurements) { m.MRTD = mustHex(zero) }, tcb: upToDate(),
			want: []*Mismatch{{Field: "mrtd", Got: zero, Want: []string{mrtdA, mrtdB}}}},
		"rtmr0": {td: func(m *tdx.Measurements) { m.RTMR[0] = mustHex(rtmrY) }, tcb: upToDate(),
			want: []*Mismatch{{Field: "rtmr0", Got: rtmrY, Want: []string{rtmrX}}}},
		"unchecked rtmr1": {td: func(m *tdx.Measurements) { m.RTMR[1] = mustHex(rtmrY) },
			tcb: upToDate()},
		"rtmr3 any of": {policy: func(p *Policy) { p.RTMR[3] = []string{rtmrY, zero} },
			tcb: upToDate()},
		"rtmr2": {policy: func(p *Policy) { p.RTMR[2] = []string{rtmrY} }, tcb: upToDate(),
			want: []*Mismatch{{Field: "rtmr2", Got: zero, Want: []string{rtmrY}}}},
		"debug": {td: func(m *tdx.Measurements) { m.Debug = true }, tcb: upToDate(),
			want: []*Mismatch{{Field: "debug", Got: "true", Want: []string{"false"}}}},
		"tcb not appraised": {tcb: nil,
			want: []*Mismatch{
				{Field: "tcb_status", Got: "not appraised", Want: []string{"UpToDate"}},
			}},
		"tcb out of date": {tcb: &tdx.TCB{Status: "OutOfDate", Date: now},
			want: []*Mismatch{{Field: "tcb_status", Got: "OutOfDate", Want: []string{"UpToDate"}}}},
		"tcb listed": {
			policy: func(p *Policy) { p.TCBStatuses = []string{"UpToDate", "SWHardeningNeeded"} },
			tcb:    &tdx.TCB{Status: "SWHardeningNeeded"}},
		"everything wrong": {
			td: func(m *tdx.Measurements) {
				m.MRTD, m.RTMR[0], m.Debug = mustHex(zero), mustHex(zero), true
			},
			tcb: &tdx.TCB{Status: "Revoked"},
			want: []*Mismatch{
				{Field: "mrtd", Got: zero, Want: []string{mrtdA, mrtdB}},
				{Field: "rtmr0", Got: zero, Want: []string{rtmrX}},
				{Field: "tcb_status", Got: "Revoked", Want: []string{"UpToDate"}},
				{Field: "debug", Got: "true", Want: []string{"false"}},
			}},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			p := basePolicy()
			if tt.policy != nil {
				tt.policy(p)
				if err := p.Validate(); err != nil {
					t.Fatal(err)
				}
			}

			m := goodTD()
			if tt.td != nil {
				tt.td(m)
			}
			v := p.Evaluate(m, tt.tcb)
			if diff := cmp.Diff(tt.want, v.Violations); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
			err := p.Check(m, tt.tcb)
			if (err == nil) != (len(tt.want) == 0) || v.OK() != (len(tt.want) == 0) {
				t.Errorf("Check = %v, OK = %v; want failure %v", err, v.OK(), len(tt.want) > 0)
			}

			for _, want := range tt.want {
				var mm *Mismatch
				if !errors.As(err, &mm) || !strings.Contains(err.Error(), want.Field+" "+want.Got) {
					t.Errorf("Check error %q does not name %s", err, want.Field)
				}
			}
		})
	}
}

func TestObserveMode(t *testing.T) {
	p := basePolicy()
	p.Mode = Observe
	m := goodTD()
	m.MRTD, m.Debug = mustHex(zero), true

	v := p.Evaluate(m, upToDate())
	if v.OK() || len(v.Violations) != 2 || v.Joined() == nil {
		t.Errorf("observe: violations %v, want mrtd and debug", v.Violations)
	}
	if err := v.Err(); err != nil {
		t.Errorf("observe: Err = %v, want nil", err)
	}
	if err := p.Check(m, upToDate()); err != nil {
		t.Errorf("observe: Check = %v, want nil", err)
	}
}

func TestOutOfDateGrace(t *testing.T) {
	tcbDate := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
	listed := []string{"UpToDate", "OutOfDate"}
	tests := map[string]struct {
		statuses []string
		grace    time.Duration
		at       time.Time
		tcb      *tdx.TCB
		ok       bool
	}{
		"within the window": {grace: 720 * time.Hour, at: tcbDate.Add(719 * time.Hour), ok: true},
		"window closed":     {grace: 720 * time.Hour, at: tcbDate.Add(720 * time.Hour)},
		"long after":        {grace: 720 * time.Hour, at: tcbDate.AddDate(1, 0, 0)},
		"no grace":          {at: tcbDate},
		"listed, no grace":  {statuses: listed, at: tcbDate.AddDate(5, 0, 0), ok: true},
		"listed, bounded":   {statuses: listed, grace: time.Hour, at: tcbDate.Add(2 * time.Hour)},
		"unknown date": {grace: 720 * time.Hour, at: tcbDate,
			tcb: &tdx.TCB{Status: "OutOfDate"}},
		"other out-of-date": {grace: 720 * time.Hour, at: tcbDate,
			tcb: &tdx.TCB{Status: "OutOfDateConfigurationNeeded", Date: tcbDate}},
		"up to date, grace": {grace: 720 * time.Hour, at: tcbDate.AddDate(2, 0, 0),
			tcb: &tdx.TCB{Status: "UpToDate", Date: tcbDate}, ok: true},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			p := basePolicy()
			p.TCBStatuses, p.OutOfDateGrace = tt.statuses, tt.grace
			p.Now = func() time.Time { return tt.at }
			if err := p.Validate(); err != nil {
				t.Fatal(err)
			}

			tcb := tt.tcb
			if tcb == nil {
				tcb = &tdx.TCB{Status: "OutOfDate", Date: tcbDate}
			}
			err := p.Check(goodTD(), tcb)
			if tt.ok != (err == nil) {
				t.Errorf("Check = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := map[string]*Policy{
		"enforce without mrtd": {RTMR: [4][]string{{rtmrX}}},
		"short mrtd":           {MRTD: []string{"abcd"}},
		"mrtd not hex":         {MRTD: []string{strings.Repeat("zz", 48)}},
		"bad rtmr":             {MRTD: []string{mrtdA}, RTMR: [4][]string{nil, nil, {"00"}}},
		"unknown status":       {MRTD: []string{mrtdA}, TCBStatuses: []string{"Fine"}},
		"revoked":              {MRTD: []string{mrtdA}, TCBStatuses: []string{"Revoked"}},
		"lowercase status":     {MRTD: []string{mrtdA}, TCBStatuses: []string{"uptodate"}},
		"negative grace":       {MRTD: []string{mrtdA}, OutOfDateGrace: -time.Hour},
		"bad mode":             {MRTD: []string{mrtdA}, Mode: "audit"},
	}

	for name, p := range tests {
		if err := p.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, p)
		}
	}

	p := &Policy{MRTD: []string{strings.ToUpper(mrtdA), mrtdA}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}

	want := &Policy{MRTD: []string{mrtdA}, TCBStatuses: []string{"UpToDate"}, Mode: Enforce}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("normalised policy (-want +got):\n%s", diff)
	}
	if observe := (&Policy{Mode: Observe}); observe.Validate() != nil || !observe.Empty() {
		t.Error("an observe policy without allowlists should be valid and Empty")
	}
	if p.Empty() || (&Policy{RTMR: [4][]string{nil, {rtmrX}}}).Empty() {
		t.Error("a policy with an allowlist is not Empty")
	}
}

func TestMismatchError(t *testing.T) {
	m := &Mismatch{Field: "rtmr1", Got: "ab", Want: []string{"cd", "ef"}}
	if got, want := m.Error(), "policy: rtmr1 ab not allowed (want one of cd, ef)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
