package tdx

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"testing"
	"time"
)

// The production quote and collateral come from go-tdx-guest's testdata
// (see testdata/README.md). The collateral was issued in June 2023 and its
// next update was due on 2023-07-08: verdicts are pinned inside that window.
const (
	realQuoteFile = "testdata/tdx_prod_quote_SPR_E4.dat"
	collateralDir = CollateralDir("testdata/collateral")
)

var collateralDate = time.Date(2023, time.July, 1, 0, 0, 0, 0, time.UTC)

func at(t time.Time) func() time.Time { return func() time.Time { return t } }

func readRealQuote(tb testing.TB) []byte {
	tb.Helper()
	raw, err := os.ReadFile(realQuoteFile)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// TestVerifyRealQuote accepts the production quote against Intel's root.
// With its collateral it is rejected, see TestVerifyRealQuoteWithCollateral.
func TestVerifyRealQuote(t *testing.T) {
	raw := readRealQuote(t)
	res, err := Verify(context.Background(), raw, VerifyOptions{Now: at(collateralDate)})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}

	if res.TCB != nil {
		t.Errorf("TCB = %+v without collateral, want nil", res.TCB)
	}
	if res.FMSPC != "50806f000000" {
		t.Errorf("FMSPC = %q, want 50806f000000", res.FMSPC)
	}
	if !res.VerifiedAt.Equal(collateralDate) {
		t.Errorf("VerifiedAt = %v, want %v", res.VerifiedAt, collateralDate)
	}
	wantMRTD := "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f" +
		"22fc00b8dcd404bc10d5e119d7215cbb"
	if got := hex.EncodeToString(res.Measurements.MRTD); got != wantMRTD {
		t.Errorf("MRTD = %s, want %s", got, wantMRTD)
	}
}

func TestVerifyRealQuoteRejections(t *testing.T) {
	raw := readRealQuote(t)
	sim := newTestSimulator(t, SimulatorOptions{})

	realChain, simChain := pckChainOf(t, raw), simChainPEM(t, sim)
	tests := []struct {
		name    string
		quote   []byte
		opts    VerifyOptions
		wantErr error // nil: any error
	}{
		{
			name:  "foreign root",
			quote: raw,
			opts:  VerifyOptions{Now: at(collateralDate), Roots: poolOf(sim.Root())},
		},
		{
			name:  "chain cut to leaf and root",
			quote: withPCKChain(t, raw, dropCert(t, realChain, 1)),
			opts:  VerifyOptions{Now: at(collateralDate)},
		},
		{
			name:  "chain without root",
			quote: withPCKChain(t, raw, dropCert(t, realChain, 2)),
			opts:  VerifyOptions{Now: at(collateralDate)},
		},
		{
			name:  "simulated intermediate",
			quote: withPCKChain(t, raw, spliceCert(t, realChain, 1, simChain, 1)),
			opts:  VerifyOptions{Now: at(collateralDate)},
		},
		{
			name:  "simulated root in the chain",
			quote: withPCKChain(t, raw, spliceCert(t, realChain, 2, simChain, 2)),
			opts:  VerifyOptions{Now: at(collateralDate)},
		},
		{
			name:  "PCK certificate expired",
			quote: raw,
			opts:  VerifyOptions{Now: at(time.Date(2030, time.January, 1, 0, 0, 0, 0, time.UTC))},
		},
		{
			name:  "collateral expired",
			quote: raw,
			opts: VerifyOptions{Now: at(time.Date(2023, time.August, 1, 0, 0, 0, 0, time.UTC)),
				Collateral: collateralDir},
		},
		{
			name:    "collateral missing",
			quote:   raw,
			opts:    VerifyOptions{Now: at(collateralDate), Collateral: CollateralDir(t.TempDir())},
			wantErr: ErrCollateralUnavailable,
		},
		{
			name:    "version 5",
			quote:   withUint16(raw, 0, 5),
			opts:    VerifyOptions{Now: at(collateralDate)},
			wantErr: ErrUnsupportedVersion,
		},
		{
			name:    "truncated",
			quote:   raw[:len(raw)/2],
			opts:    VerifyOptions{Now: at(collateralDate)},
			wantErr: ErrMalformed,
		},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Verify(context.Background(), tc.quote, tc.opts)
			if err == nil {
				t.Fatal("Verify accepted the quote")
			}
			t.Logf("rejected: %v", err)
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Verify error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestVerifyDetectsTampering flips one bit at a time across the header,
// the TD quote body and the quote signature (every third byte, cycling
// through the bit positions), and at a few places of the QE report and its
// signature.
func TestVerifyDetectsTampering(t *testing.T) {
	raw := readRealQuote(t)
	var positions []int
	for i := 0; i < headerSize+bodySize; i += 3 {
		positions = append(positions, i)
	}
	for i := signedDataOff; i < signedDataOff+signatureSize; i += 3 {
		positions = append(positions, i)
	}

	qeReport := signedDataOff + signatureSize + attestKeySize + certHeaderSize
	positions = append(positions,
		headerSize+bodySize-1,                 // last byte of report data
		signedDataOff+signatureSize+1,         // attestation key
		qeReport+0x40,                         // QE report MRENCLAVE
		qeReport+qeReportSize-1,               // QE report data
		qeReport+qeReportSize+signatureSize-1, // QE report signature
	)

	opts := VerifyOptions{Now: at(collateralDate)}
	for _, pos := range positions {
		tampered := bytes.Clone(raw)
		bit := pos % 8
		tampered[pos] ^= 1 << bit
		if _, err := Verify(context.Background(), tampered, opts); err == nil {
			t.Errorf("Verify accepted the quote with bit %d of byte %#x flipped", bit, pos)
		}
	}
}

func TestVerifyCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Verify(ctx, readRealQuote(t), VerifyOptions{Now: at(collateralDate)})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Verify error = %v, want context.Canceled", err)
	}
}

func BenchmarkQuoteVerify(b *testing.B) {
	raw := readRealQuote(b)
	opts := VerifyOptions{Now: at(collateralDate)}
	ctx := context.Background()
	for b.Loop() {
		if _, err := Verify(ctx, raw, opts); err != nil {
			b.Fatal(err)
		}
	}
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

func withUint16(raw []byte, off int, v uint16) []byte {
	out := bytes.Clone(raw)
	binary.LittleEndian.PutUint16(out[off:], v)
	return out
}

// pckChainOf returns the PEM chain of a well-formed quote.
func pckChainOf(tb testing.TB, raw []byte) []byte {
	tb.Helper()
	q, err := parseQuote(raw)
	if err != nil {
		tb.Fatal(err)
	}
	return q.pckChain
}

// dropCert removes the i-th PEM block of a chain.
func dropCert(tb testing.TB, chain []byte, i int) []byte {
	tb.Helper()

	var out []byte
	for n := 0; ; n++ {
		block, rest := pem.Decode(chain)
		if block == nil {
			break
		}
		if n != i {
			out = append(out, pem.EncodeToMemory(block)...)
		}
		chain = rest
	}

	return out
}

// spliceCert replaces the i-th PEM block of chain by the j-th of other.
func spliceCert(tb testing.TB, chain []byte, i int, other []byte, j int) []byte {
	tb.Helper()

	var out []byte
	for n := 0; n < 3; n++ {
		src, k := chain, n
		if n == i {
			src, k = other, j
		}
		out = append(out, dropAllBut(tb, src, k)...)
	}

	return out
}

func dropAllBut(tb testing.TB, chain []byte, keep int) []byte {
	tb.Helper()

	for n := 0; ; n++ {
		block, rest := pem.Decode(chain)
		if block == nil {
			tb.Fatalf("chain has no PEM block %d", keep)
		}
		if n == keep {
			return pem.EncodeToMemory(block)
		}
		chain = rest
	}
}

func simChainPEM(tb testing.TB, sim *Simulator) []byte {
	tb.Helper()
	return pckChainOf(tb, simQuote(tb, sim, ReportData{}))
}

// withPCKChain rebuilds a quote around another PCK chain, fixing the three
// sizes that enclose it. Trailing bytes after the signed data are dropped.
func withPCKChain(tb testing.TB, raw, chain []byte) []byte {
	tb.Helper()
	old := pckChainOf(tb, raw)
	signedSize := int(binary.LittleEndian.Uint32(raw[headerSize+bodySize:]))
	end := signedDataOff + signedSize
	chainStart := end - len(old)
	grow := len(chain) - len(old)

	out := append(bytes.Clone(raw[:chainStart]), chain...)
	addUint32(out, headerSize+bodySize, grow)                         // signed data size
	addUint32(out, signedDataOff+signatureSize+attestKeySize+2, grow) // QE certification data
	addUint32(out, chainStart-4, grow)                                // PCK chain
	return out
}

func addUint32(b []byte, off, delta int) {
	v := int(binary.LittleEndian.Uint32(b[off:])) + delta
	binary.LittleEndian.PutUint32(b[off:], uint32(v))
}
