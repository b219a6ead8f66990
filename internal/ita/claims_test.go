package ita

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDecodeClaimsFlatAndNested(t *testing.T) {
	mixed := nestedClaims(IntelIssuer, t0)
	// A v2 token may repeat a claim at the top level; equal values are fine.
	mixed["attester_type"] = "TDX"
	mixed["tdx_mrtd"] = testMRTD

	for name, claims := range map[string]map[string]any{
		"v1 flat":   flatClaims(IntelIssuer, t0),
		"v2 nested": nestedClaims(IntelIssuer, t0),
		"mixed":     mixed,
	} {
		t.Run(name, func(t *testing.T) {
			_, got, err := decodeClaims(mustJSON(t, claims))
			if err != nil {
				t.Fatalf("decodeClaims: %v", err)
			}
			if diff := cmp.Diff(wantAppraisal(IntelIssuer, t0), got); diff != "" {
				t.Errorf("appraisal (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeClaimsDebug(t *testing.T) {
	tests := map[string]func(c map[string]any){
		"td attributes bit": func(c map[string]any) { c["tdx_td_attributes"] = "0100001000000000" },
		"attribute claim":   func(c map[string]any) { c["tdx_td_attributes_debug"] = true },
		"is debuggable":     func(c map[string]any) { c["tdx_is_debuggable"] = true },
		"dbgstat enabled":   func(c map[string]any) { c["dbgstat"] = "enabled" },
	}

	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			c := flatClaims(IntelIssuer, t0)
			mutate(c)
			_, a, err := decodeClaims(mustJSON(t, c))
			if err != nil {
				t.Fatalf("decodeClaims: %v", err)
			}

			if !a.Measurements.Debug {
				t.Error("Debug = false, want true")
			}
		})
	}
}

func TestDecodeClaimsRejects(t *testing.T) {
	tests := map[string]struct {
		mutate  func(c map[string]any)
		wantErr string
	}{
		"no mrtd":         {del("tdx_mrtd"), "no tdx_mrtd"},
		"no rtmr2":        {del("tdx_rtmr2"), "no tdx_rtmr2"},
		"no report data":  {del("tdx_report_data"), "no tdx_report_data"},
		"short mrtd":      {set("tdx_mrtd", "abcd"), "2 bytes, want 48"},
		"mrtd not hex":    {set("tdx_mrtd", strings.Repeat("zz", 48)), "tdx_mrtd"},
		"mrtd number":     {set("tdx_mrtd", 7), "tdx_mrtd"},
		"no type":         {del("attester_type"), "no attester_type"},
		"sgx":             {set("attester_type", "SGX"), "not TDX"},
		"bad tcb date":    {set("attester_tcb_date", "yesterday"), "attester_tcb_date"},
		"date no status":  {del("attester_tcb_status"), "without"},
		"held not base64": {set("attester_held_data", "!!"), "attester_held_data"},
		"bad nonce":       {set("verifier_nonce", map[string]any{"val": "%"}), "base64"},
		"conflict": {func(c map[string]any) {
			c["tdx"] = map[string]any{"tdx_mrtd": strings.Repeat("ff", 48)}
		}, "tdx_mrtd differs"},
		"exp string": {set("exp", "tomorrow"), ""},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := flatClaims(IntelIssuer, t0)
			tt.mutate(c)
			_, _, err := decodeClaims(mustJSON(t, c))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("decodeClaims error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCheckBinding(t *testing.T) {
	other := tdx.ReportData{9}
	direct := &Appraisal{Measurements: tdx.Measurements{ReportData: other}}
	held := &Appraisal{Measurements: tdx.Measurements{ReportData: ReportData(testNonce, other[:])},
		HeldData: other[:], VerifierNonce: testNonce}
	heldNoNonce := &Appraisal{Measurements: tdx.Measurements{ReportData: ReportData(nil, other[:])},
		HeldData: other[:]}
	// Held data that is not the expected value binds nothing, even if the
	// report data is its hash.
	heldOther := &Appraisal{Measurements: tdx.Measurements{ReportData: testReportData},
		HeldData: testHeldData, VerifierNonce: testNonce}

	tests := map[string]struct {
		a    *Appraisal
		want tdx.ReportData
		ok   bool
	}{
		"report data is want":     {direct, other, true},
		"held data and nonce":     {held, other, true},
		"held data without nonce": {heldNoNonce, other, true},
		"report data differs":     {direct, tdx.ReportData{8}, false},
		"held data differs":       {heldOther, other, false},
		"held data, no nonce": {&Appraisal{Measurements: held.Measurements,
			HeldData: other[:]}, other, false},
		"zero report data, zero want": {&Appraisal{}, tdx.ReportData{}, true},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			err := tt.a.CheckBinding(tt.want)
			if tt.ok != (err == nil) {
				t.Fatalf("CheckBinding = %v, want ok %v", err, tt.ok)
			}

			var ee *EvidenceError
			if err != nil && (!errors.As(err, &ee) || ee.Reason != ReasonBinding ||
				!errors.Is(err, ErrBinding)) {
				t.Errorf("error = %#v, want an EvidenceError with ReasonBinding", err)
			}
		})
	}
}

func TestReportData(t *testing.T) {
	n := &VerifierNonce{Val: []byte{1, 2}, Iat: []byte{3}, Signature: []byte{4}}
	if got, want := ReportData(n, []byte{5, 6}), sha512Of([]byte{1, 2, 3, 5, 6}); got != want {
		t.Errorf("ReportData = %x, want SHA-512(val||iat||runtime) = %x", got, want)
	}
	if got, want := ReportData(nil, []byte{5}), sha512Of([]byte{5}); got != want {
		t.Errorf("ReportData(nil) = %x, want %x", got, want)
	}
}

// FuzzDecodeClaims: any payload either decodes into a well-formed
// appraisal or fails; it never panics.
func FuzzDecodeClaims(f *testing.F) {
	f.Add(mustJSON(f, flatClaims(IntelIssuer, t0)))
	f.Add(mustJSON(f, nestedClaims(IntelIssuer, t0)))
	f.Add([]byte(`{"tdx":{"tdx_mrtd":"00"},"tdx_mrtd":"01"}`))
	f.Add([]byte(`{"tdx":null,"exp":1e308,"iat":-1}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		_, a, err := decodeClaims(payload)
		if err != nil {
			return
		}

		m := &a.Measurements
		if len(m.MRTD) != 48 || len(m.RTMR[0]) != 48 || len(m.RTMR[3]) != 48 {
			t.Fatalf("accepted claims with MRTD %d and RTMR sizes %d, %d bytes",
				len(m.MRTD), len(m.RTMR[0]), len(m.RTMR[3]))
		}
		if a.Type != tdx.TypeTDX && a.Type != tdx.TypeSimulated {
			t.Fatalf("accepted type %q", a.Type)
		}
		if a.TCB != nil && a.TCB.Status == "" {
			t.Fatal("TCB without status")
		}
	})
}
