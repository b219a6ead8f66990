package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Environment variables read by [FromEnv].
const (
	EnvMRTD           = "DD_POLICY_MRTD"
	EnvRTMRPrefix     = "DD_POLICY_RTMR" // then 0, 1, 2 or 3
	EnvTCBStatus      = "DD_POLICY_TCB_STATUS"
	EnvOutOfDateGrace = "DD_POLICY_OUTOFDATE_GRACE"
	EnvMode           = "DD_POLICY_MODE"
)

// FromEnv builds a policy from environment variables, read with getenv
// (os.Getenv, or a map lookup in tests):
//
//	DD_POLICY_MRTD=hex,hex           allowed MRTDs (required in enforce mode)
//	DD_POLICY_RTMR0=hex … RTMR3      allowed values of each RTMR
//	DD_POLICY_TCB_STATUS=UpToDate,…  accepted TCB statuses (default UpToDate)
//	DD_POLICY_OUTOFDATE_GRACE=720h   grace window for OutOfDate
//	DD_POLICY_MODE=enforce|observe   default enforce
//
// Lists split on commas and white space. Hex is 48 bytes in any case;
// status names are Intel's, in any case. Any malformed value is an error
// naming its variable; nothing is silently dropped.
func FromEnv(getenv func(string) string) (*Policy, error) {
	p := &Policy{
		MRTD: splitList(getenv(EnvMRTD)),
		Mode: Mode(strings.ToLower(strings.TrimSpace(getenv(EnvMode)))),
	}
	for i := range p.RTMR {
		p.RTMR[i] = splitList(getenv(EnvRTMRPrefix + strconv.Itoa(i)))
	}

	if raw := splitList(getenv(EnvTCBStatus)); len(raw) > 0 {
		statuses, err := canonicalStatuses(raw)
		if err != nil {
			return nil, fmt.Errorf("policy: %s: %w", EnvTCBStatus, err)
		}
		p.TCBStatuses = statuses
	}

	if raw := strings.TrimSpace(getenv(EnvOutOfDateGrace)); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("policy: %s: %q is not a duration like 720h", EnvOutOfDateGrace,
				raw)
		}
		p.OutOfDateGrace = d
	}

	if (p.Mode == "" || p.Mode == Enforce) && len(p.MRTD) == 0 {
		return nil, fmt.Errorf("policy: %s is required unless %s=observe", EnvMRTD, EnvMode)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w (from the DD_POLICY_* variables)", err)
	}
	return p, nil
}

// splitList splits on commas and white space and drops empty pieces.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
}

// canonicalStatuses maps status names of any case to Intel's spelling.
func canonicalStatuses(raw []string) ([]string, error) {
	out := make([]string, 0, len(raw))
	for _, s := range raw {
		found := ""
		for _, k := range knownStatuses {
			if strings.EqualFold(s, k) {
				found = k
			}
		}

		if found == "" {
			return nil, fmt.Errorf("%q is not one of %s", s, strings.Join(knownStatuses, ", "))
		}
		out = append(out, found)
	}

	return out, nil
}
