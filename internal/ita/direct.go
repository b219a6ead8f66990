package ita

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// DirectOptions configure [NewDirect].
type DirectOptions struct {
	// Roots are the CAs hardware quotes must chain to. Nil means Intel's
	// SGX Root CA.
	Roots *x509.CertPool

	// SimulatedRoots are the roots of simulated TDs ([tdx.Simulator.Root]).
	// A quote that chains to one of them is appraised as
	// [tdx.TypeSimulated]. Nil trusts no simulated TD; it MUST be nil
	// wherever real TDX evidence is required (production and staging).
	SimulatedRoots *x509.CertPool

	// Collateral, when set, appraises hardware quotes against Intel PCS
	// collateral, so that an [Appraisal] carries the platform's TCB
	// level. Nil verifies signatures and the chain only, and the TCB is
	// unknown.
	Collateral tdx.CollateralGetter

	// SimulatedTCBStatus is the TCB status given to simulated quotes,
	// which have no platform to appraise. Empty means "UpToDate": a
	// simulated platform is as current as the binary that simulates it.
	SimulatedTCBStatus string

	// Now is the time certificates and collateral are checked at. Nil
	// means time.Now.
	Now func() time.Time

	// Logger receives one record per verified quote. Nil discards.
	Logger *slog.Logger
}

// Direct appraises quotes itself, with package tdx, so that a fleet can
// run with no Trust Authority. It is safe for concurrent use.
type Direct struct {
	roots      *x509.CertPool
	simRoots   *x509.CertPool
	collateral tdx.CollateralGetter
	simStatus  string
	now        func() time.Time
	log        *slog.Logger
}

// NewDirect returns a direct appraiser for opts.
func NewDirect(opts DirectOptions) (*Direct, error) {
	if s := opts.SimulatedTCBStatus; strings.TrimSpace(s) != s {
		return nil, errors.New("ita: simulated TCB status must not have surrounding spaces")
	}

	d := &Direct{
		roots:      cmp.Or(opts.Roots, tdx.IntelRoots()),
		simRoots:   opts.SimulatedRoots,
		collateral: opts.Collateral,
		simStatus:  cmp.Or(opts.SimulatedTCBStatus, "UpToDate"),
		now:        opts.Now,
		log:        cmp.Or(opts.Logger, slog.New(slog.DiscardHandler)),
	}

	if d.now == nil {
		d.now = time.Now
	}
	return d, nil
}

// Appraise implements [Appraiser]: it verifies ev.Quote and checks that
// its report data is ev.ReportData.
func (d *Direct) Appraise(ctx context.Context, ev Evidence) (*Appraisal, error) {
	if len(ev.Quote) == 0 {
		return nil, &EvidenceError{Reason: ReasonNoEvidence, Err: errors.New("no quote")}
	}

	a, err := d.VerifyQuote(ctx, ev.Quote)
	if err != nil {
		return nil, err
	}
	if err := a.CheckBinding(ev.ReportData); err != nil {
		return nil, err
	}
	return a, nil
}

// VerifyQuote verifies quote and returns its appraisal, of type
// [tdx.TypeSimulated] if it chains to a simulated root and [tdx.TypeTDX]
// if it chains to a hardware root. A quote both reject gives an
// [*EvidenceError]; unavailable collateral a [*FetchError].
func (d *Direct) VerifyQuote(ctx context.Context, quote []byte) (*Appraisal, error) {
	at := d.now()
	pin := func() time.Time { return at }

	var simErr error
	if d.simRoots != nil {
		// A simulated quote never verifies against a hardware root, nor
		// a hardware quote against a simulated root, so the order only
		// decides which of the two a dev fleet pays for first.
		res, err := tdx.Verify(ctx, quote, tdx.VerifyOptions{Roots: d.simRoots, Now: pin})
		if err == nil {
			return d.simulated(res), nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		simErr = err
	}

	res, err := tdx.Verify(ctx, quote,
		tdx.VerifyOptions{Roots: d.roots, Now: pin, Collateral: d.collateral})
	switch {
	case err == nil:
		return d.hardware(res), nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, tdx.ErrCollateralUnavailable):
		return nil, &FetchError{Op: "collateral", Err: err}
	case simErr != nil:
		err = fmt.Errorf("hardware roots: %w; simulated roots: %w", err, simErr)
	}

	return nil, &EvidenceError{Reason: ReasonQuote, Err: err}
}

func (d *Direct) simulated(res *tdx.Result) *Appraisal {
	d.log.Debug("quote verified", "type", tdx.TypeSimulated)
	day := res.VerifiedAt.UTC().Truncate(24 * time.Hour)
	return &Appraisal{
		Type: tdx.TypeSimulated, Source: SourceQuote, AttesterType: attesterSimulated,
		Measurements: res.Measurements, FMSPC: res.FMSPC, IssuedAt: res.VerifiedAt.UTC(),
		TCB: &tdx.TCB{Status: d.simStatus, Date: day},
	}
}

func (d *Direct) hardware(res *tdx.Result) *Appraisal {
	d.log.Debug("quote verified", "type", tdx.TypeTDX, "fmspc", res.FMSPC)
	return &Appraisal{
		Type: tdx.TypeTDX, Source: SourceQuote, AttesterType: attesterTDX,
		Measurements: res.Measurements, FMSPC: res.FMSPC, IssuedAt: res.VerifiedAt.UTC(),
		TCB: res.TCB,
	}
}
