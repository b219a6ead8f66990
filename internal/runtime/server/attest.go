package server

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Attester produces an attestation quote whose report data is reportData,
// the caller's bytes zero-padded to 64. attestationType and quoteFormat are
// reported to the caller as they are, e.g. "tdx" and "tdx".
type Attester interface {
	Attest(ctx context.Context, reportData [64]byte) (quote []byte, attestationType, quoteFormat string, err error)
}

const (
	attestationNone = "none"

	// LocalQuoteMagic opens every blob of [LocalQuote].
	LocalQuoteMagic = "EE-LOCAL-NOT-A-QUOTE-v1"

	// errNoAttestation is the error of a runtime that refuses to attest
	// (easyenclave.md §7.6).
	errNoAttestation = "no attestation backend (configfs-tsm not available)"
)

// LocalQuote is what a runtime without an [Attester] returns as its quote:
// [LocalQuoteMagic], the 64 padded report-data bytes, then the SHA-256 of
// both (easyenclave.md §7.6). It proves nothing; any real verifier rejects
// it, which is the point.
func LocalQuote(reportData [64]byte) []byte {
	blob := append([]byte(LocalQuoteMagic), reportData[:]...)
	sum := sha256.Sum256(blob)
	return append(blob, sum[:]...)
}

// QuoteProvider is a source of TDX-format quotes, such as the configfs-tsm
// provider or the simulator of internal/tdx.
type QuoteProvider interface {
	Quote(ctx context.Context, reportData [64]byte) ([]byte, error)
	Type() string
}

// ProviderAttester adapts p to an [Attester]. The attestation type is
// p.Type(), e.g. "tdx" or "simulated"; the quote format is "tdx", since the
// bytes are a TDX quote either way.
func ProviderAttester(p QuoteProvider) Attester { return providerAttester{p} }

type providerAttester struct{ p QuoteProvider }

func (a providerAttester) Attest(ctx context.Context, rd [64]byte) ([]byte, string, string, error) {
	q, err := a.p.Quote(ctx, rd)
	return q, a.p.Type(), "tdx", err
}

// localAttester is the default on hosts without TDX. It never claims "tdx".
type localAttester struct{}

func (localAttester) Attest(_ context.Context, rd [64]byte) ([]byte, string, string, error) {
	return LocalQuote(rd), attestationNone, attestationNone, nil
}

// reportData decodes the caller's report data (easyenclave.md §4.1): a
// string report_data_b64 (standard base64) wins; otherwise a string nonce is
// hex when it is non-empty, of even length and all hex digits, else standard
// base64. Nothing, or an empty string, is no report data. More than 64
// bytes is refused.
func reportData(fields map[string]json.RawMessage) ([]byte, error) {
	var data []byte
	if b64, ok := stringField(fields, "report_data_b64"); ok {
		d, err := decodeB64("report_data_b64", b64)
		if err != nil {
			return nil, err
		}
		data = d
	} else if nonce, ok := stringField(fields, "nonce"); ok {
		d, err := decodeNonce(nonce)
		if err != nil {
			return nil, err
		}
		data = d
	}

	if len(data) > 64 {
		return nil, fmt.Errorf("TDX report data is %d bytes; maximum is 64", len(data))
	}
	return data, nil
}

func decodeB64(field, v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}

	d, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("invalid %s base64: %v", field, err)
	}
	return d, nil
}

// decodeNonce reads the legacy nonce. A base64 nonce made only of hex
// digits is read as hex, as EasyEnclave does; dd's nonces end in "==".
func decodeNonce(v string) ([]byte, error) {
	if !isHex(v) {
		return decodeB64("nonce", v)
	}

	d, err := hex.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("invalid nonce hex: %v", err)
	}
	return d, nil
}

func isHex(v string) bool {
	if v == "" || len(v)%2 != 0 {
		return false
	}

	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}

	return true
}

// attest answers "attest".
func (s *Server) attest(ctx context.Context, fields map[string]json.RawMessage) any {
	data, err := reportData(fields)
	if err != nil {
		return attestError{AttestationType: s.attType, Error: err.Error()}
	}
	if s.opts.RefuseAttest {
		return attestError{AttestationType: s.attType, Error: errNoAttestation}
	}

	var padded [64]byte
	copy(padded[:], data)
	quote, typ, format, err := s.attester.Attest(ctx, padded)
	if err != nil {
		s.log.Warn("attesting", "err", err)
		return attestError{AttestationType: s.attType, Error: err.Error()}
	}

	r := attestReply{OK: true}
	r.AttestationType = typ
	r.QuoteFormat = format
	r.QuoteB64 = base64.StdEncoding.EncodeToString(quote)
	r.ReportDataB64 = base64.StdEncoding.EncodeToString(data)
	r.ReportDataLen = len(data)
	return r
}
