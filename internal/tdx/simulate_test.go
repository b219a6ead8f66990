package tdx

import (
	"bytes"
	"context"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-tdx-guest/pcs"
)

var simTime = time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)

// newTestSimulator builds a simulator dated simTime with a fixed MRTD
// unless opts say otherwise.
func newTestSimulator(tb testing.TB, opts SimulatorOptions) *Simulator {
	tb.Helper()
	if opts.Now == nil {
		opts.Now = at(simTime)
	}
	if opts.MRTD == nil {
		opts.MRTD = bytes.Repeat([]byte{0xaa}, 48)
	}

	sim, err := NewSimulator(opts)
	if err != nil {
		tb.Fatalf("NewSimulator: %v", err)
	}
	return sim
}

func simQuote(tb testing.TB, sim *Simulator, rd ReportData) []byte {
	tb.Helper()
	q, err := sim.Quote(context.Background(), rd)
	if err != nil {
		tb.Fatalf("Quote: %v", err)
	}
	return q
}

func TestSimulatorQuoteVerifiesWithItsRoot(t *testing.T) {
	rtmr2 := bytes.Repeat([]byte{0x22}, 48)
	sim := newTestSimulator(t, SimulatorOptions{RTMR: [4][]byte{2: rtmr2}})
	rd := ReportData{1, 2, 3, 63: 0xff}
	q := simQuote(t, sim, rd)

	res, err := Verify(context.Background(), q, VerifyOptions{
		Roots: poolOf(sim.Root()), Now: at(simTime.Add(time.Hour)),
	})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}

	zero := Hex(make([]byte, 48))
	want := Measurements{
		TEETCBSVN:      Hex(simTEETCBSVN[:]),
		MRSEAM:         res.Measurements.MRSEAM, // a fixed label's hash
		MRSignerSEAM:   zero,
		SEAMAttributes: Hex(make([]byte, 8)),
		TDAttributes:   Hex{0, 0, 0, 0x10, 0, 0, 0, 0},
		XFAM:           Hex(simXFAM),
		MRTD:           Hex(bytes.Repeat([]byte{0xaa}, 48)),
		MRConfigID:     zero,
		MROwner:        zero,
		MROwnerConfig:  zero,
		RTMR:           [4]Hex{zero, zero, rtmr2, zero},
		ReportData:     rd,
	}
	if diff := cmp.Diff(want, res.Measurements); diff != "" {
		t.Errorf("Measurements (-want +got):\n%s", diff)
	}
	if res.FMSPC != "dd0000000000" {
		t.Errorf("FMSPC = %q, want dd0000000000", res.FMSPC)
	}
	if got := sim.Type(); got != TypeSimulated {
		t.Errorf("Type = %q, want %q", got, TypeSimulated)
	}
}

func TestSimulatorQuoteRejectedByIntelRoot(t *testing.T) {
	sim := newTestSimulator(t, SimulatorOptions{})

	q := simQuote(t, sim, ReportData{})
	other := newTestSimulator(t, SimulatorOptions{})
	for name, opts := range map[string]VerifyOptions{
		"default roots":  {Now: at(simTime)},
		"explicit Intel": {Now: at(simTime), Roots: IntelRoots()},
		"another sim":    {Now: at(simTime), Roots: poolOf(other.Root())},
	} {
		if _, err := Verify(context.Background(), q, opts); err == nil {
			t.Errorf("%s: Verify accepted a simulated quote", name)
		}
	}
}

func TestSimulatorBindsReportData(t *testing.T) {
	sim := newTestSimulator(t, SimulatorOptions{})
	opts := VerifyOptions{Roots: poolOf(sim.Root()), Now: at(simTime)}
	a := simQuote(t, sim, ReportData{0: 'a'})
	b := simQuote(t, sim, ReportData{0: 'b'})
	if bytes.Equal(a[:headerSize+bodySize], b[:headerSize+bodySize]) {
		t.Fatal("quotes over different report data have the same signed bytes")
	}

	// Putting b's report data into a must break a's signature.
	forged := bytes.Clone(a)
	copy(forged[headerSize+offReportData:], b[headerSize+offReportData:headerSize+bodySize])
	if _, err := Verify(context.Background(), forged, opts); err == nil {
		t.Error("Verify accepted a quote whose report data was replaced")
	}
	res, err := Verify(context.Background(), b, opts)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}

	if res.Measurements.ReportData != (ReportData{0: 'b'}) {
		t.Errorf("ReportData = %x, want 'b' then zeros", res.Measurements.ReportData)
	}
}

func TestSimulatorOptions(t *testing.T) {
	t.Run("debug", func(t *testing.T) {
		sim := newTestSimulator(t, SimulatorOptions{Debug: true})
		m, err := Parse(simQuote(t, sim, ReportData{}))
		if err != nil {
			t.Fatal(err)
		}

		if !m.Debug || m.TDAttributes[0]&1 != 1 {
			t.Errorf("Debug = %v, TDAttributes = %x; want the debug bit set",
				m.Debug, m.TDAttributes)
		}
	})

	t.Run("default MRTD hashes the executable", func(t *testing.T) {
		sim, err := NewSimulator(SimulatorOptions{})
		if err != nil {
			t.Fatal(err)
		}

		m, err := Parse(simQuote(t, sim, ReportData{}))
		if err != nil {
			t.Fatal(err)
		}
		if want := hashExecutable(t); !bytes.Equal(m.MRTD, want) {
			t.Errorf("MRTD = %x, want SHA-384 of the executable %x", m.MRTD, want)
		}
	})

	for name, opts := range map[string]SimulatorOptions{
		"short MRTD":  {MRTD: make([]byte, 32)},
		"long RTMR3":  {RTMR: [4][]byte{3: make([]byte, 64)}},
		"empty RTMR0": {RTMR: [4][]byte{0: {}}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewSimulator(opts); err == nil {
				t.Error("NewSimulator accepted invalid options")
			}
		})
	}
}

func TestSimulatorPCKCertificate(t *testing.T) {
	sim := newTestSimulator(t, SimulatorOptions{})
	block, _ := pem.Decode(pckChainOf(t, simQuote(t, sim, ReportData{})))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}

	if n := len(leaf.Extensions); n != 6 {
		t.Errorf("PCK certificate has %d extensions, want 6 as Intel's", n)
	}
	ext, err := pcs.PckCertificateExtensions(leaf)
	if err != nil {
		t.Fatalf("PckCertificateExtensions: %v", err)
	}

	want := pcs.PckCertTCB{PCESvn: 11, CPUSvn: simCPUSVN[:], CPUSvnComponents: simCPUSVN[:]}
	if diff := cmp.Diff(want, ext.TCB); diff != "" {
		t.Errorf("TCB (-want +got):\n%s", diff)
	}
	if ext.FMSPC != "dd0000000000" || ext.PCEID != "0000" || len(ext.PPID) != 32 {
		t.Errorf("FMSPC, PCEID, PPID = %q, %q, %q", ext.FMSPC, ext.PCEID, ext.PPID)
	}
}

func TestSimulatorPersistsChain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sim")
	first := newTestSimulator(t, SimulatorOptions{Dir: dir})
	second := newTestSimulator(t, SimulatorOptions{Dir: dir})
	if !first.Root().Equal(second.Root()) {
		t.Fatal("a second simulator on the same directory has another root")
	}

	q := simQuote(t, second, ReportData{})
	opts := VerifyOptions{Roots: poolOf(first.Root()), Now: at(simTime)}
	if _, err := Verify(context.Background(), q, opts); err != nil {
		t.Errorf("Verify with the first simulator's root: %v", err)
	}

	for _, name := range []string{simChainFile, simRootFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Errorf("%s has mode %o, want 600", name, mode)
		}
	}

	rootPEM, err := os.ReadFile(filepath.Join(dir, simRootFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(rootPEM)
	if block == nil || !bytes.Equal(block.Bytes, first.Root().Raw) {
		t.Error("root.pem does not hold the simulator's root")
	}
}

func TestSimulatorRefusesBadChainFiles(t *testing.T) {
	tests := map[string]func(t *testing.T, dir string){
		"garbage chain": func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, simChainFile), []byte("not PEM"))
		},
		"truncated chain": func(t *testing.T, dir string) {
			path := filepath.Join(dir, simChainFile)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, path, data[:len(data)/2])
		},
		"key of another chain": func(t *testing.T, dir string) {
			other := t.TempDir()
			newTestSimulator(t, SimulatorOptions{Dir: other})
			mine := readFile(t, filepath.Join(dir, simChainFile))
			theirs := readFile(t, filepath.Join(other, simChainFile))
			keyAt := bytes.Index(mine, []byte("-----BEGIN PRIVATE KEY"))
			theirKey := theirs[bytes.Index(theirs, []byte("-----BEGIN PRIVATE KEY")):]
			writeFile(t, filepath.Join(dir, simChainFile), append(mine[:keyAt:keyAt], theirKey...))
		},
		"foreign root.pem": func(t *testing.T, dir string) {
			other := t.TempDir()
			newTestSimulator(t, SimulatorOptions{Dir: other})
			foreign := readFile(t, filepath.Join(other, simRootFile))
			writeFile(t, filepath.Join(dir, simRootFile), foreign)
		},
	}

	for name, spoil := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			newTestSimulator(t, SimulatorOptions{Dir: dir})
			spoil(t, dir)
			before := readFile(t, filepath.Join(dir, simChainFile))
			_, err := NewSimulator(SimulatorOptions{Dir: dir, MRTD: make([]byte, 48)})
			if err == nil {
				t.Fatal("NewSimulator accepted a spoiled directory")
			}

			if !bytes.Equal(before, readFile(t, filepath.Join(dir, simChainFile))) {
				t.Error("NewSimulator changed the chain file")
			}
		})
	}
}

func TestSimulatorCanceled(t *testing.T) {
	sim := newTestSimulator(t, SimulatorOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sim.Quote(ctx, ReportData{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Quote error = %v, want context.Canceled", err)
	}
}

func hashExecutable(t *testing.T) []byte {
	t.Helper()
	path, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	h := sha512.New384()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
