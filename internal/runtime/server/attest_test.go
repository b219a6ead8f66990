package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
)

func TestReportData(t *testing.T) {
	t.Parallel()
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name    string
		fields  map[string]any
		want    []byte
		wantErr string
	}{
		{"none", map[string]any{}, nil, ""},
		{"b64", map[string]any{"report_data_b64": b64([]byte("abc"))}, []byte("abc"), ""},
		{"b64 beats nonce", map[string]any{"report_data_b64": b64([]byte("b64")), "nonce": "00ff"},
			[]byte("b64"), ""},
		{"empty b64 still wins", map[string]any{"report_data_b64": "", "nonce": "00ff"}, nil, ""},
		{"b64 not a string falls back", map[string]any{"report_data_b64": 5, "nonce": "00ff"},
			[]byte{0, 0xff}, ""},
		{"hex nonce", map[string]any{"nonce": "00FFaa"}, []byte{0, 0xff, 0xaa}, ""},
		{"base64 nonce", map[string]any{"nonce": b64([]byte("0123456789abcdef"))},
			[]byte("0123456789abcdef"), ""},
		{"odd hex is base64", map[string]any{"nonce": "abc"}, nil, "invalid nonce base64: …"},
		{"empty nonce", map[string]any{"nonce": ""}, nil, ""},
		{"64 bytes", map[string]any{"report_data_b64": b64(bytes.Repeat([]byte{7}, 64))},
			bytes.Repeat([]byte{7}, 64), ""},
		{"65 bytes", map[string]any{"report_data_b64": b64(make([]byte, 65))}, nil,
			"TDX report data is 65 bytes; maximum is 64"},
		{"65 hex bytes", map[string]any{"nonce": strings.Repeat("ab", 65)}, nil,
			"TDX report data is 65 bytes; maximum is 64"},
		{"bad b64", map[string]any{"report_data_b64": "!!"}, nil,
			"invalid report_data_b64 base64: …"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := reportData(rawFields(t, tt.fields))
			if tt.wantErr != "" {
				if err == nil || !matchError(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}

			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("report data %x, want %x", got, tt.want)
			}
		})
	}
}

func rawFields(t testing.TB, m map[string]any) map[string]json.RawMessage {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}

	var f map[string]json.RawMessage
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestAttestLocalBlob(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	a, err := ts.client.Attest(context.Background(), []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}

	quote, err := base64.StdEncoding.DecodeString(a.QuoteB64)
	if err != nil {
		t.Fatal(err)
	}

	var padded [64]byte
	copy(padded[:], "nonce")
	body := append([]byte(LocalQuoteMagic), padded[:]...)
	sum := sha256.Sum256(body)
	if want := append(body, sum[:]...); !bytes.Equal(quote, want) {
		t.Errorf("quote %x, want magic + padded report data + sha256", quote)
	}

	a.QuoteB64 = ""
	want := runtime.Attestation{AttestationType: "none", QuoteFormat: "none",
		ReportDataB64: base64.StdEncoding.EncodeToString([]byte("nonce")), ReportDataLen: 5}
	if diff := cmp.Diff(want, a); diff != "" {
		t.Errorf("attestation mismatch (-want +got):\n%s", diff)
	}
}

func TestAttestErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
		req  map[string]any
		want map[string]any
	}{
		{"refused", Options{RefuseAttest: true}, map[string]any{"method": "attest"},
			map[string]any{"ok": false, "attestation_type": "none",
				"error": "no attestation backend (configfs-tsm not available)"}},
		{"too long", Options{}, map[string]any{"method": "attest", "nonce": strings.Repeat("00", 65)},
			map[string]any{"ok": false, "attestation_type": "none",
				"error": "TDX report data is 65 bytes; maximum is 64"}},
		{"backend failure", Options{Attester: fakeAttester{err: errors.New("tsm busy")},
			AttestationType: "tdx"}, map[string]any{"method": "attest"},
			map[string]any{"ok": false, "attestation_type": "tdx", "error": "tsm busy"}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.opts.Token = testToken
			ts := startServer(t, tt.opts)
			c := dialRaw(t, ts)
			c.send(t, ts.line(t, tt.req))
			if diff := cmp.Diff(tt.want, c.reply(t)); diff != "" {
				t.Errorf("reply mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAttestInjected(t *testing.T) {
	t.Parallel()
	fa := ProviderAttester(fakeProvider{})
	ts := startServer(t, Options{Token: testToken, Attester: fa, AttestationType: "tdx"})
	h, err := ts.client.Health(context.Background())
	if err != nil || h.AttestationType != "tdx" {
		t.Errorf("health %+v, %v; want attestation_type tdx", h, err)
	}

	a, err := ts.client.Attest(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	quote, _ := base64.StdEncoding.DecodeString(a.QuoteB64)
	if a.AttestationType != "tdx" || a.QuoteFormat != "tdx" || !bytes.Equal(quote, make([]byte, 64)) {
		t.Errorf("attestation %+v, want the fake's tdx quote over 64 zero bytes", a)
	}
}

// fakeProvider returns the report data itself as its "quote".
type fakeProvider struct{}

func (fakeProvider) Quote(_ context.Context, rd [64]byte) ([]byte, error) { return rd[:], nil }
func (fakeProvider) Type() string                                         { return "tdx" }

// fakeAttester returns the report data itself as its "quote".
type fakeAttester struct{ err error }

func (f fakeAttester) Attest(_ context.Context, rd [64]byte) ([]byte, string, string, error) {
	if f.err != nil {
		return nil, "", "", f.err
	}
	return rd[:], "tdx", "tdx", nil
}
