package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// env returns a getenv over vars.
func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestFromEnv(t *testing.T) {
	got, err := FromEnv(env(map[string]string{
		"DD_POLICY_MRTD":            " " + strings.ToUpper(mrtdB) + ",\n" + mrtdA + " ",
		"DD_POLICY_RTMR0":           rtmrX,
		"DD_POLICY_RTMR3":           rtmrX + " " + rtmrY,
		"DD_POLICY_TCB_STATUS":      "UpToDate, outofdate",
		"DD_POLICY_OUTOFDATE_GRACE": "720h",
		"DD_POLICY_MODE":            " Observe ",
	}))
	if err != nil {
		t.Fatalf("FromEnv: %v", err)
	}

	want := &Policy{
		MRTD:           []string{mrtdA, mrtdB},
		RTMR:           [4][]string{{rtmrX}, nil, nil, {rtmrX, rtmrY}},
		TCBStatuses:    []string{"UpToDate", "OutOfDate"},
		OutOfDateGrace: 720 * time.Hour,
		Mode:           Observe,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("policy (-want +got):\n%s", diff)
	}
}

func TestFromEnvDefaults(t *testing.T) {
	got, err := FromEnv(env(map[string]string{"DD_POLICY_MRTD": mrtdA}))
	if err != nil {
		t.Fatal(err)
	}
	want := &Policy{MRTD: []string{mrtdA}, TCBStatuses: []string{"UpToDate"}, Mode: Enforce}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("policy (-want +got):\n%s", diff)
	}

	// Observe mode with nothing pinned is valid, and Empty, so that
	// production can refuse it.
	p, err := FromEnv(env(map[string]string{"DD_POLICY_MODE": "observe"}))
	if err != nil || !p.Empty() {
		t.Errorf("observe only: %+v, %v; want an Empty policy", p, err)
	}
}

func TestFromEnvRejects(t *testing.T) {
	tests := map[string]struct {
		vars    map[string]string
		wantErr string
	}{
		"nothing set": {map[string]string{}, "DD_POLICY_MRTD is required"},
		"enforce, rtmr": {map[string]string{"DD_POLICY_RTMR0": rtmrX, "DD_POLICY_MODE": "enforce"},
			"DD_POLICY_MRTD"},
		"short mrtd": {map[string]string{"DD_POLICY_MRTD": "abc"}, "mrtd"},
		"bad rtmr2":  {withMRTD("DD_POLICY_RTMR2", "x"), "rtmr2"},
		"status":     {withMRTD("DD_POLICY_TCB_STATUS", "Good"), "DD_POLICY_TCB_STATUS"},
		"revoked":    {withMRTD("DD_POLICY_TCB_STATUS", "Revoked"), "DD_POLICY_TCB_STATUS"},
		"grace":      {withMRTD("DD_POLICY_OUTOFDATE_GRACE", "30d"), "DD_POLICY_OUTOFDATE_GRACE"},
		"neg grace":  {withMRTD("DD_POLICY_OUTOFDATE_GRACE", "-1h"), "DD_POLICY_OUTOFDATE_GRACE"},
		"mode":       {withMRTD("DD_POLICY_MODE", "warn"), "mode"},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := FromEnv(env(tt.vars))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("FromEnv = %+v, %v; want an error mentioning %q", p, err, tt.wantErr)
			}
		})
	}
}

// withMRTD returns variables pinning mrtdA plus key=val.
func withMRTD(key, val string) map[string]string {
	return map[string]string{"DD_POLICY_MRTD": mrtdA, key: val}
}
