// Package tdx reads, verifies and produces Intel TDX quotes.
//
// [Parse] turns a TDX DCAP quote (version 4) into [Measurements], the fields
// a measurement policy reads. [Verify] checks a quote's ECDSA signature, its
// QE report and its PCK certificate chain up to a trusted root (Intel's SGX
// Root CA unless told otherwise), and optionally appraises the platform's TCB
// against Intel PCS collateral. The cryptography is done by
// github.com/google/go-tdx-guest; this package adds strict bounds checking in
// front of it, an injectable clock and roots, offline collateral and a typed
// result.
//
// A [Provider] produces quotes: [DetectProvider] finds the kernel's
// configfs-tsm interface inside a real TD, and [Simulator] signs structurally
// valid quotes with a locally generated chain for development fleets, which
// a verifier accepts only when it trusts that chain's root.
package tdx

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Quote layout, from Intel's "TDX DCAP Quoting Library API" (quote format
// version 4), all integers little-endian:
//
//	header          48 bytes   version u16, attestation key type u16, TEE type u32, ...
//	TD quote body  584 bytes   the TD report fields, see [Measurements]
//	signed data size u32
//	signed data:
//	  ECDSA signature over header||body          64 (r||s)
//	  ECDSA attestation key                      64 (x||y)
//	  certification data type u16 (6), size u32
//	    QE report                               384
//	    QE report signature (by the PCK key)     64
//	    QE authentication data size u16, data
//	    certification data type u16 (5), size u32, PEM PCK chain
//
// Bytes after the signed data are tolerated (some quote generators pad) and
// ignored: nothing signs them.
const (
	headerSize     = 48
	bodySize       = 584
	signedDataOff  = headerSize + bodySize + 4
	signatureSize  = 64
	attestKeySize  = 64
	qeReportSize   = 384
	certHeaderSize = 6

	quoteVersion4     = 4
	attestKeyECDSA256 = 2
	teeTypeTDX        = 0x81

	certTypeQEReport = 6
	certTypePCKChain = 5

	// minQuoteSize is the smallest well-formed version 4 quote: header,
	// body, signed data size and the fixed part of the signed data.
	minQuoteSize = signedDataOff + signatureSize + attestKeySize + certHeaderSize +
		qeReportSize + signatureSize + 2 + certHeaderSize
)

// Offsets of the TD quote body fields, relative to the body's start.
const (
	offTEETCBSVN     = 0
	offMRSEAM        = 16
	offMRSignerSEAM  = 64
	offSEAMAttrs     = 112
	offTDAttributes  = 120
	offXFAM          = 128
	offMRTD          = 136
	offMRConfigID    = 184
	offMROwner       = 232
	offMROwnerConfig = 280
	offRTMR          = 328
	offReportData    = 520

	measurementSize = 48

	// tdAttributesDebug is TDATTRIBUTES bit 0 (TUD.DEBUG): the TD runs in
	// debug mode and the host can read and change its private memory.
	tdAttributesDebug = 1 << 0
)

var (
	// ErrMalformed reports bytes that are not a well-formed TDX quote.
	ErrMalformed = errors.New("tdx: malformed quote")

	// ErrUnsupportedVersion reports a quote whose header declares a format
	// other than version 4 (for example a version 5 quote from TDX 1.5, or
	// an SGX quote).
	ErrUnsupportedVersion = errors.New("tdx: unsupported quote version")
)

// Measurements is the TD quote body of a verified or parsed quote: what was
// loaded into the TD, under which TDX module, and the 64 bytes of report
// data the TD committed to. Byte fields are copies, never aliases of the
// quote, and encode as lowercase hex in JSON.
type Measurements struct {
	// TEETCBSVN is the TDX module's security version numbers (16 bytes).
	TEETCBSVN Hex `json:"tee_tcb_svn"`
	// MRSEAM and MRSignerSEAM measure the TDX module and its signer
	// (48 bytes each; the signer is zero for Intel's module).
	MRSEAM       Hex `json:"mr_seam"`
	MRSignerSEAM Hex `json:"mr_signer_seam"`
	// SEAMAttributes, TDAttributes and XFAM are 8 bytes each.
	SEAMAttributes Hex `json:"seam_attributes"`
	TDAttributes   Hex `json:"td_attributes"`
	XFAM           Hex `json:"xfam"`
	// MRTD measures the TD's initial memory: firmware and VM shape.
	MRTD Hex `json:"mrtd"`
	// MRConfigID, MROwner and MROwnerConfig are set by the host at TD
	// creation (48 bytes each; usually zero).
	MRConfigID    Hex `json:"mr_config_id"`
	MROwner       Hex `json:"mr_owner"`
	MROwnerConfig Hex `json:"mr_owner_config"`
	// RTMR are the four runtime measurement registers (48 bytes each).
	RTMR [4]Hex `json:"rtmr"`
	// ReportData is what the quoting TD asked to be signed, typically a
	// hash binding a nonce and the TD's public keys.
	ReportData ReportData `json:"report_data"`
	// Debug is TDATTRIBUTES.DEBUG. A debug TD's memory is open to the
	// host, so its measurements prove nothing; policies must reject it.
	Debug bool `json:"debug"`
}

// Hex is a byte string that encodes as lowercase hex text.
type Hex []byte

// MarshalText encodes h as lowercase hex.
func (h Hex) MarshalText() ([]byte, error) {
	return hex.AppendEncode(nil, h), nil
}

// UnmarshalText decodes hex text of any case.
func (h *Hex) UnmarshalText(text []byte) error {
	b, err := hex.DecodeString(string(text))
	if err != nil {
		return fmt.Errorf("decoding hex: %w", err)
	}
	*h = b
	return nil
}

// ReportData is the 64-byte REPORTDATA field of a TD report.
type ReportData [64]byte

// MarshalText encodes r as 128 lowercase hex digits.
func (r ReportData) MarshalText() ([]byte, error) {
	return hex.AppendEncode(nil, r[:]), nil
}

// UnmarshalText decodes exactly 64 bytes of hex.
func (r *ReportData) UnmarshalText(text []byte) error {
	b, err := hex.DecodeString(string(text))
	if err != nil {
		return fmt.Errorf("decoding report data: %w", err)
	}
	if len(b) != len(r) {
		return fmt.Errorf("report data is %d bytes, want %d", len(b), len(r))
	}

	copy(r[:], b)
	return nil
}

// Parse checks that raw is a complete, well-formed TDX quote version 4 and
// returns its TD quote body. It checks structure only, not signatures: use
// [Verify] before trusting anything it returns.
func Parse(raw []byte) (*Measurements, error) {
	q, err := parseQuote(raw)
	if err != nil {
		return nil, err
	}
	return q.measurements(), nil
}

// quote is a structurally valid version 4 quote, sliced into the parts this
// package reads. Slices alias the raw bytes.
type quote struct {
	body     []byte
	pckChain []byte // PEM: PCK leaf, intermediate CA, root CA
}

// parseQuote validates every length and type field so that nothing after it
// (in particular go-tdx-guest's abi package, which slices without bounds
// checks) can read out of range.
func parseQuote(raw []byte) (*quote, error) {
	if err := checkHeader(raw); err != nil {
		return nil, err
	}
	if len(raw) < minQuoteSize {
		return nil, malformed("quote is %d bytes, shorter than the minimum %d",
			len(raw), minQuoteSize)
	}

	// the TD quote body follows the header; the signed data follows its size
	q := &quote{body: raw[headerSize : headerSize+bodySize]}
	signed, err := signedData(raw)
	if err != nil {
		return nil, err
	}

	// after the quote signature and attestation key comes the QE certification data
	certData, err := certificationData(signed[signatureSize+attestKeySize:], certTypeQEReport)
	if err != nil {
		return nil, fmt.Errorf("QE certification data: %w", err)
	}
	if err := q.parseQEData(certData); err != nil {
		return nil, err
	}
	return q, nil
}

// checkHeader reads the version first, so that a quote of another format is
// reported as such rather than as a size or type mismatch.
func checkHeader(raw []byte) error {
	if len(raw) < 2 {
		return malformed("quote is %d bytes, too short for a header", len(raw))
	}
	if v := binary.LittleEndian.Uint16(raw); v != quoteVersion4 {
		// TODO(#3): accept version 5 (TDX 1.5) once go-tdx-guest verifies it.
		return fmt.Errorf("%w: version %d, only version 4 is supported", ErrUnsupportedVersion, v)
	}
	if len(raw) < headerSize {
		return malformed("quote is %d bytes, too short for a header", len(raw))
	}
	if t := binary.LittleEndian.Uint16(raw[2:]); t != attestKeyECDSA256 {
		return malformed("attestation key type %d, want %d (ECDSA-256-with-P-256)",
			t, attestKeyECDSA256)
	}
	if t := binary.LittleEndian.Uint32(raw[4:]); t != teeTypeTDX {
		return malformed("TEE type %#x, want %#x (TDX)", t, teeTypeTDX)
	}

	return nil
}

// signedData returns the signed data region, whose declared size must fit.
func signedData(raw []byte) ([]byte, error) {
	size := binary.LittleEndian.Uint32(raw[headerSize+bodySize:])
	avail := len(raw) - signedDataOff
	if uint64(size) > uint64(avail) {
		return nil, malformed("signed data size %d exceeds the %d bytes left", size, avail)
	}
	if int(size) < minQuoteSize-signedDataOff {
		return nil, malformed("signed data size %d is too small", size)
	}

	return raw[signedDataOff : signedDataOff+int(size)], nil
}

// certificationData checks a type u16 and size u32 header and returns the
// data it announces, which must fill b exactly.
func certificationData(b []byte, wantType uint16) ([]byte, error) {
	if len(b) < certHeaderSize {
		return nil, malformed("certification data is %d bytes, too short for its header", len(b))
	}
	if t := binary.LittleEndian.Uint16(b); t != wantType {
		return nil, malformed("certification data type %d, want %d", t, wantType)
	}

	size := binary.LittleEndian.Uint32(b[2:])
	if uint64(size) != uint64(len(b)-certHeaderSize) {
		return nil, malformed("certification data size %d, but %d bytes follow",
			size, len(b)-certHeaderSize)
	}
	return b[certHeaderSize:], nil
}

// parseQEData splits the QE report certification data (type 6).
func (q *quote) parseQEData(b []byte) error {
	if len(b) < qeReportSize+signatureSize+2 {
		return malformed("QE report certification data is %d bytes, too short", len(b))
	}

	// past the QE report and its signature: QE auth data (u16 size), then the PCK chain
	rest := b[qeReportSize+signatureSize:]
	authSize := int(binary.LittleEndian.Uint16(rest))
	rest = rest[2:]
	if authSize > len(rest) {
		return malformed("QE authentication data size %d exceeds the %d bytes left",
			authSize, len(rest))
	}

	chain, err := certificationData(rest[authSize:], certTypePCKChain)
	if err != nil {
		return fmt.Errorf("PCK certificate chain: %w", err)
	}
	q.pckChain = chain
	return nil
}

// measurements copies the TD quote body's fields.
func (q *quote) measurements() *Measurements {
	field := func(off, size int) Hex { return Hex(clone(q.body[off : off+size])) }
	m := &Measurements{
		TEETCBSVN:      field(offTEETCBSVN, 16),
		MRSEAM:         field(offMRSEAM, measurementSize),
		MRSignerSEAM:   field(offMRSignerSEAM, measurementSize),
		SEAMAttributes: field(offSEAMAttrs, 8),
		TDAttributes:   field(offTDAttributes, 8),
		XFAM:           field(offXFAM, 8),
		MRTD:           field(offMRTD, measurementSize),
		MRConfigID:     field(offMRConfigID, measurementSize),
		MROwner:        field(offMROwner, measurementSize),
		MROwnerConfig:  field(offMROwnerConfig, measurementSize),
	}

	for i := range m.RTMR {
		m.RTMR[i] = field(offRTMR+i*measurementSize, measurementSize)
	}
	copy(m.ReportData[:], q.body[offReportData:])
	m.Debug = m.TDAttributes[0]&tdAttributesDebug != 0
	return m
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
