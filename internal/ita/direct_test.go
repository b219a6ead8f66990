package ita

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

const (
	// realQuote is go-tdx-guest's production quote, valid with Intel's
	// root at collateralDate.
	realQuote  = "../tdx/testdata/tdx_prod_quote_SPR_E4.dat"
	collateral = "../tdx/testdata/collateral"
)

var collateralDate = time.Date(2023, time.July, 1, 0, 0, 0, 0, time.UTC)

func base64URL(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func TestDirectSimulated(t *testing.T) {
	sim := newTestSimulator(t)
	d, err := NewDirect(DirectOptions{SimulatedRoots: poolOf(sim.Root()),
		Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}

	quote, err := sim.Quote(context.Background(), expected)
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.Appraise(context.Background(), Evidence{Quote: quote, ReportData: expected})
	if err != nil {
		t.Fatalf("Appraise: %v", err)
	}

	m, err := tdx.Parse(quote)
	if err != nil {
		t.Fatal(err)
	}

	want := &Appraisal{
		Type: tdx.TypeSimulated, Source: SourceQuote, AttesterType: "simulated",
		Measurements: *m, FMSPC: "dd0000000000", IssuedAt: t0,
		TCB: &tdx.TCB{Status: "UpToDate", Date: time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("appraisal (-want +got):\n%s", diff)
	}

	if _, err := d.Appraise(context.Background(),
		Evidence{Quote: quote, ReportData: tdx.ReportData{1}}); !errors.Is(err, ErrBinding) {
		t.Errorf("other report data: error = %v, want ErrBinding", err)
	}
}

func TestDirectRejects(t *testing.T) {
	sim := newTestSimulator(t)
	quote, err := sim.Quote(context.Background(), expected)
	if err != nil {
		t.Fatal(err)
	}
	tampered := append([]byte(nil), quote...)
	tampered[200] ^= 1 // a byte of MRTD, inside the signed body

	tests := map[string]struct {
		opts   DirectOptions
		ev     Evidence
		reason string
	}{
		"no quote": {DirectOptions{SimulatedRoots: poolOf(sim.Root())},
			Evidence{Token: "x.y.z"}, ReasonNoEvidence},
		"simulated root not trusted": {DirectOptions{},
			Evidence{Quote: quote, ReportData: expected}, ReasonQuote},
		"foreign simulated root": {
			DirectOptions{SimulatedRoots: poolOf(newTestSimulator(t).Root())},
			Evidence{Quote: quote, ReportData: expected}, ReasonQuote},
		"tampered": {DirectOptions{SimulatedRoots: poolOf(sim.Root())},
			Evidence{Quote: tampered, ReportData: expected}, ReasonQuote},
		"garbage": {DirectOptions{SimulatedRoots: poolOf(sim.Root())},
			Evidence{Quote: []byte("quote"), ReportData: expected}, ReasonQuote},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			d, err := NewDirect(tt.opts)
			if err != nil {
				t.Fatal(err)
			}

			_, err = d.Appraise(context.Background(), tt.ev)
			var ee *EvidenceError
			if !errors.As(err, &ee) || ee.Reason != tt.reason {
				t.Errorf("Appraise error = %v, want reason %q", err, tt.reason)
			}
		})
	}
}

func TestDirectRealQuote(t *testing.T) {
	raw, err := os.ReadFile(realQuote)
	if err != nil {
		t.Fatal(err)
	}
	m, err := tdx.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}

	at := func() time.Time { return collateralDate }
	sim := newTestSimulator(t)
	// A dev fleet trusts both roots; a real quote still is "tdx".
	d, _ := NewDirect(DirectOptions{SimulatedRoots: poolOf(sim.Root()), Now: at})
	a, err := d.Appraise(context.Background(), Evidence{Quote: raw, ReportData: m.ReportData})
	if err != nil {
		t.Fatalf("Appraise: %v", err)
	}

	if a.Type != tdx.TypeTDX || a.AttesterType != "TDX" || a.TCB != nil ||
		a.FMSPC != "50806f000000" || !bytes.Equal(a.Measurements.MRTD, m.MRTD) {
		t.Errorf("appraisal = %+v, want TDX without TCB", a)
	}

	// With collateral the TCB is appraised; this platform's level is
	// below every one Intel lists (see the tdx testdata README).
	d, _ = NewDirect(DirectOptions{Collateral: tdx.CollateralDir(collateral), Now: at})
	var ee *EvidenceError
	if _, err := d.VerifyQuote(context.Background(), raw); !errors.As(err, &ee) ||
		ee.Reason != ReasonQuote {
		t.Errorf("with collateral: error = %v, want a quote rejection", err)
	}

	// Collateral that cannot be fetched leaves the quote unjudged.
	d, _ = NewDirect(DirectOptions{Collateral: failingGetter{}, Now: at})
	var fe *FetchError
	if _, err := d.VerifyQuote(context.Background(), raw); !errors.As(err, &fe) {
		t.Errorf("collateral unavailable: error = %v, want a FetchError", err)
	}
}

type failingGetter struct{}

func (failingGetter) Get(ctx context.Context, url string) (map[string][]string, []byte, error) {
	return nil, nil, errors.New("PCS unreachable")
}
