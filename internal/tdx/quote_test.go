package tdx

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
)

func TestParseRealQuote(t *testing.T) {
	m, err := Parse(readRealQuote(t))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	got, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}

	zero48 := strings.Repeat("00", 48)
	want := `{"tee_tcb_svn":"03000400000000000000000000000000",` +
		`"mr_seam":"2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656",` +
		`"mr_signer_seam":"` + zero48 + `","seam_attributes":"0000000000000000",` +
		`"td_attributes":"0000004000000000","xfam":"e71a060000000000",` +
		`"mrtd":"6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb",` +
		`"mr_config_id":"` + zero48 + `","mr_owner":"` + zero48 + `","mr_owner_config":"` + zero48 + `",` +
		`"rtmr":["2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a",` +
		`"2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589c4b56d035c59107c6bc5800db2cacb61",` +
		`"8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e",` +
		`"` + zero48 + `"],` +
		`"report_data":"6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545` +
		`eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113",` +
		`"debug":false}`
	if string(got) != want {
		t.Errorf("JSON of the real quote's measurements:\n got %s\nwant %s", got, want)
	}
}

// TestParseAgreesWithAbi compares Parse with go-tdx-guest's own decoder.
func TestParseAgreesWithAbi(t *testing.T) {
	sim := newTestSimulator(t, SimulatorOptions{RTMR: [4][]byte{1: bytes.Repeat([]byte{7}, 48)}})
	for name, raw := range map[string][]byte{
		"real":      readRealQuote(t),
		"simulated": simQuote(t, sim, ReportData{9, 8, 7}),
	} {
		t.Run(name, func(t *testing.T) {
			m, err := Parse(raw)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(abiMeasurements(t, raw), m); diff != "" {
				t.Errorf("Parse differs from abi.QuoteToProto (-abi +Parse):\n%s", diff)
			}
		})
	}
}

func abiMeasurements(tb testing.TB, raw []byte) *Measurements {
	tb.Helper()
	q, err := abi.QuoteToProto(raw)
	if err != nil {
		tb.Fatalf("abi.QuoteToProto: %v", err)
	}

	b := q.(*pb.QuoteV4).GetTdQuoteBody()
	m := &Measurements{
		TEETCBSVN: b.GetTeeTcbSvn(), MRSEAM: b.GetMrSeam(), MRSignerSEAM: b.GetMrSignerSeam(),
		SEAMAttributes: b.GetSeamAttributes(), TDAttributes: b.GetTdAttributes(),
		XFAM: b.GetXfam(), MRTD: b.GetMrTd(), MRConfigID: b.GetMrConfigId(),
		MROwner: b.GetMrOwner(), MROwnerConfig: b.GetMrOwnerConfig(),
		Debug: b.GetTdAttributes()[0]&1 == 1,
	}

	for i, r := range b.GetRtmrs() {
		m.RTMR[i] = r
	}
	copy(m.ReportData[:], b.GetReportData())
	return m
}

func TestParseRejects(t *testing.T) {
	raw := readRealQuote(t)

	// offsets of the fields the cases corrupt
	signedSize := binary.LittleEndian.Uint32(raw[headerSize+bodySize:])
	qeCert := signedDataOff + signatureSize + attestKeySize
	authSize := qeCert + certHeaderSize + qeReportSize + signatureSize
	pckCert := authSize + 2 + 32

	tests := []struct {
		name  string
		quote []byte
		want  error
	}{
		{"empty", nil, ErrMalformed},
		{"one byte", []byte{4}, ErrMalformed},
		{"SGX quote version 3", withUint16(raw, 0, 3), ErrUnsupportedVersion},
		{"TDX 1.5 quote version 5", withUint16(raw, 0, 5), ErrUnsupportedVersion},
		{"header only", raw[:headerSize], ErrMalformed},
		{"attestation key type 3", withUint16(raw, 2, 3), ErrMalformed},
		{"SGX TEE type", withUint16(raw, 4, 0), ErrMalformed},
		{"signed data cut", raw[:signedDataOff+int(signedSize)-1], ErrMalformed},
		{"signed data size too large", withUint32(raw, headerSize+bodySize, 1<<31), ErrMalformed},
		{"signed data size too small", withUint32(raw, headerSize+bodySize, 100), ErrMalformed},
		{"QE certification data type", withUint16(raw, qeCert, 5), ErrMalformed},
		{"QE certification data size", withUint32(raw, qeCert+2, 1), ErrMalformed},
		{"QE auth data size", withUint16(raw, authSize, 0xffff), ErrMalformed},
		{"PCK chain type", withUint16(raw, pckCert, 6), ErrMalformed},
		{"PCK chain size", withUint32(raw, pckCert+2, 10), ErrMalformed},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.quote); !errors.Is(err, tc.want) {
				t.Errorf("Parse error = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseToleratesTrailingBytes(t *testing.T) {
	raw := append(readRealQuote(t), make([]byte, 100)...)
	if _, err := Parse(raw); err != nil {
		t.Errorf("Parse with zero padding: %v", err)
	}
}

func TestMeasurementsJSONRoundTrip(t *testing.T) {
	m, err := Parse(readRealQuote(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}

	var back Measurements
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, &back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}

	for _, bad := range []string{`{"report_data":"00"}`, `{"mrtd":"xyz"}`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("Unmarshal(%s) succeeded", bad)
		}
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts,
// go-tdx-guest decodes to the same fields without running out of range.
func FuzzParse(f *testing.F) {
	raw := readRealQuote(f)
	f.Add(raw)
	f.Add(raw[:minQuoteSize])
	f.Add(simQuote(f, newTestSimulator(f, SimulatorOptions{}), ReportData{1}))
	f.Add(withUint16(raw, 0, 5))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		if diff := cmp.Diff(abiMeasurements(t, b), m); diff != "" {
			t.Errorf("Parse differs from abi.QuoteToProto (-abi +Parse):\n%s", diff)
		}
	})
}

func withUint32(raw []byte, off int, v uint32) []byte {
	out := bytes.Clone(raw)
	binary.LittleEndian.PutUint32(out[off:], v)
	return out
}
