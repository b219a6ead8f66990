package ita

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// Attester types the local [Authority] writes into its tokens. ITA writes
// "TDX" for TDX quotes.
const (
	attesterTDX       = "TDX"
	attesterSimulated = "simulated"
)

// teeClaims are the TDX and attester claims of an ITA token, named as in
// Intel's EAT profile (portal.trustauthority.intel.com/eat_profile.html).
// Version 1 tokens carry them at the top level; version 2 tokens nest them
// in a "tdx" object. Byte strings are lowercase hex, except
// attester_held_data (base64) and the nonce fields (base64).
type teeClaims struct {
	AttesterType   string            `json:"attester_type,omitempty"`
	TCBStatus      string            `json:"attester_tcb_status,omitempty"`
	TCBDate        string            `json:"attester_tcb_date,omitempty"`
	AdvisoryIDs    []string          `json:"attester_advisory_ids,omitempty"`
	HeldData       string            `json:"attester_held_data,omitempty"`
	DbgStat        string            `json:"dbgstat,omitempty"`
	VerifierNonce  *VerifierNonce    `json:"verifier_nonce,omitempty"`
	TEETCBSVN      string            `json:"tdx_tee_tcb_svn,omitempty"`
	MRSEAM         string            `json:"tdx_mrseam,omitempty"`
	MRSignerSEAM   string            `json:"tdx_mrsignerseam,omitempty"`
	SEAMAttributes string            `json:"tdx_seam_attributes,omitempty"`
	TDAttributes   string            `json:"tdx_td_attributes,omitempty"`
	XFAM           string            `json:"tdx_xfam,omitempty"`
	MRTD           string            `json:"tdx_mrtd,omitempty"`
	MRConfigID     string            `json:"tdx_mrconfigid,omitempty"`
	MROwner        string            `json:"tdx_mrowner,omitempty"`
	MROwnerConfig  string            `json:"tdx_mrownerconfig,omitempty"`
	RTMR0          string            `json:"tdx_rtmr0,omitempty"`
	RTMR1          string            `json:"tdx_rtmr1,omitempty"`
	RTMR2          string            `json:"tdx_rtmr2,omitempty"`
	RTMR3          string            `json:"tdx_rtmr3,omitempty"`
	ReportData     string            `json:"tdx_report_data,omitempty"`
	AttrDebug      bool              `json:"tdx_td_attributes_debug,omitempty"`
	IsDebuggable   bool              `json:"tdx_is_debuggable,omitempty"`
	Collateral     *collateralClaims `json:"tdx_collateral,omitempty"`
}

// collateralClaims describe the collateral ITA appraised a quote with; we
// read only the platform family.
type collateralClaims struct {
	FMSPC string `json:"fmspc,omitempty"`
}

// claimSet is a whole token payload.
type claimSet struct {
	jwt.Claims
	teeClaims
	TDX                 *teeClaims `json:"tdx,omitempty"`
	VerifierInstanceIDs []string   `json:"verifier_instance_ids,omitempty"`
	Version             string     `json:"ver,omitempty"`
	// LocalAuthority marks tokens of the local [Authority], so that no
	// reader mistakes them for Intel's whatever their issuer.
	LocalAuthority bool `json:"dd_local_authority,omitempty"`
}

// decodeClaims parses a token payload and maps its TDX claims into an
// appraisal. It checks shapes (hex lengths, encodings, conflicts between
// the flat and nested forms) but no times, issuer or signature.
func decodeClaims(payload []byte) (*claimSet, *Appraisal, error) {
	var cs claimSet
	if err := json.Unmarshal(payload, &cs); err != nil {
		return nil, nil, err
	}
	tc, err := mergeTEE(&cs.teeClaims, cs.TDX)
	if err != nil {
		return nil, nil, err
	}

	a, err := tc.appraisal()
	if err != nil {
		return nil, nil, err
	}

	a.Source, a.Issuer, a.TokenID = SourceToken, cs.Issuer, cs.ID
	a.VerifierInstanceIDs = cs.VerifierInstanceIDs
	if cs.IssuedAt != nil {
		a.IssuedAt = cs.IssuedAt.Time().UTC()
	}
	if cs.Expiry != nil {
		a.ExpiresAt = cs.Expiry.Time().UTC()
	}

	return &cs, a, nil
}

// mergeTEE combines the flat and nested forms of the TEE claims. A claim
// may appear in either; one that appears in both must agree, so that a
// reader looking at one form cannot be shown other values than we judged.
func mergeTEE(flat, nested *teeClaims) (*teeClaims, error) {
	if nested == nil {
		return flat, nil
	}
	out := *nested

	fv, ov := reflect.ValueOf(flat).Elem(), reflect.ValueOf(&out).Elem()
	for i := range ov.NumField() {
		f, o := fv.Field(i), ov.Field(i)
		if f.IsZero() {
			continue
		}
		if o.IsZero() {
			o.Set(f)
			continue
		}
		if !reflect.DeepEqual(f.Interface(), o.Interface()) {
			name, _, _ := strings.Cut(ov.Type().Field(i).Tag.Get("json"), ",")
			return nil, fmt.Errorf("claim %s differs between top level and tdx", name)
		}
	}

	return &out, nil
}

// appraisal maps the claims to an Appraisal (without the token fields).
func (t *teeClaims) appraisal() (*Appraisal, error) {
	typ, err := attesterKind(t.AttesterType)
	if err != nil {
		return nil, err
	}
	m, err := t.measurements()
	if err != nil {
		return nil, err
	}

	tcb, err := t.tcb()
	if err != nil {
		return nil, err
	}

	a := &Appraisal{Type: typ, AttesterType: t.AttesterType, Measurements: *m, TCB: tcb,
		VerifierNonce: t.VerifierNonce}
	if t.HeldData != "" {
		if a.HeldData, err = base64.StdEncoding.DecodeString(t.HeldData); err != nil {
			return nil, fmt.Errorf("claim attester_held_data: %w", err)
		}
	}

	if t.Collateral != nil {
		a.FMSPC = strings.ToLower(t.Collateral.FMSPC)
	}
	return a, nil
}

// errAttesterType reports a token about something other than a TD.
var errAttesterType = errors.New("attester type is not TDX")

// attesterKind maps an attester_type claim to tdx.TypeTDX or
// tdx.TypeSimulated. Other TEEs (SGX, SEV-SNP, Azure's vTPM-wrapped TDX)
// carry no TD quote body and are refused.
func attesterKind(s string) (string, error) {
	switch {
	case strings.EqualFold(s, attesterTDX):
		return tdx.TypeTDX, nil
	case s == attesterSimulated:
		return tdx.TypeSimulated, nil
	case s == "":
		return "", errors.New("no attester_type claim")
	}

	return "", fmt.Errorf("%w: %q", errAttesterType, s)
}

// measurements decodes the TD quote body claims. MRTD, the RTMRs and the
// report data are required: a policy and the binding check read them.
func (t *teeClaims) measurements() (*tdx.Measurements, error) {
	var m tdx.Measurements
	fields := []struct {
		name     string
		val      string
		size     int
		required bool
		dst      *tdx.Hex
	}{
		{"tdx_tee_tcb_svn", t.TEETCBSVN, 16, false, &m.TEETCBSVN},
		{"tdx_mrseam", t.MRSEAM, 48, false, &m.MRSEAM},
		{"tdx_mrsignerseam", t.MRSignerSEAM, 48, false, &m.MRSignerSEAM},
		{"tdx_seam_attributes", t.SEAMAttributes, 8, false, &m.SEAMAttributes},
		{"tdx_td_attributes", t.TDAttributes, 8, false, &m.TDAttributes},
		{"tdx_xfam", t.XFAM, 8, false, &m.XFAM},
		{"tdx_mrtd", t.MRTD, 48, true, &m.MRTD},
		{"tdx_mrconfigid", t.MRConfigID, 48, false, &m.MRConfigID},
		{"tdx_mrowner", t.MROwner, 48, false, &m.MROwner},
		{"tdx_mrownerconfig", t.MROwnerConfig, 48, false, &m.MROwnerConfig},
		{"tdx_rtmr0", t.RTMR0, 48, true, &m.RTMR[0]},
		{"tdx_rtmr1", t.RTMR1, 48, true, &m.RTMR[1]},
		{"tdx_rtmr2", t.RTMR2, 48, true, &m.RTMR[2]},
		{"tdx_rtmr3", t.RTMR3, 48, true, &m.RTMR[3]},
	}

	for _, f := range fields {
		b, err := hexClaim(f.name, f.val, f.size, f.required)
		if err != nil {
			return nil, err
		}
		*f.dst = b
	}

	rd, err := hexClaim("tdx_report_data", t.ReportData, len(m.ReportData), true)
	if err != nil {
		return nil, err
	}
	copy(m.ReportData[:], rd)
	m.Debug = t.debug(m.TDAttributes)
	return &m, nil
}

// debug is true if any debug signal of the token says so: the attribute
// claims, TDATTRIBUTES.DEBUG (bit 0) or an EAT dbgstat other than
// "disabled…". Disagreeing signals count as debug.
func (t *teeClaims) debug(attrs []byte) bool {
	dbg := t.AttrDebug || t.IsDebuggable
	if len(attrs) > 0 && attrs[0]&1 != 0 {
		dbg = true
	}
	if t.DbgStat != "" && !strings.HasPrefix(t.DbgStat, "disabled") {
		dbg = true
	}
	return dbg
}

// tcb returns the appraised TCB level, or nil if the token has none.
func (t *teeClaims) tcb() (*tdx.TCB, error) {
	if t.TCBStatus == "" {
		if t.TCBDate != "" {
			return nil, errors.New("claim attester_tcb_date without attester_tcb_status")
		}
		return nil, nil
	}

	tcb := &tdx.TCB{Status: t.TCBStatus, AdvisoryIDs: t.AdvisoryIDs}
	if t.TCBDate != "" {
		d, err := time.Parse(time.RFC3339, t.TCBDate)
		if err != nil {
			return nil, fmt.Errorf("claim attester_tcb_date: %w", err)
		}
		tcb.Date = d.UTC()
	}

	return tcb, nil
}

// hexClaim decodes a hex claim of exactly size bytes. Intel writes
// lowercase hex; any case is accepted, as is a "0x" prefix.
func hexClaim(name, s string, size int, required bool) (tdx.Hex, error) {
	if s == "" {
		if required {
			return nil, fmt.Errorf("no %s claim", name)
		}
		return nil, nil
	}

	b, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil {
		return nil, fmt.Errorf("claim %s: %w", name, err)
	}
	if len(b) != size {
		return nil, fmt.Errorf("claim %s: %d bytes, want %d", name, len(b), size)
	}
	return b, nil
}
