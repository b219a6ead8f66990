package ita

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// How an [Appraisal] was reached, in [Appraisal.Source].
const (
	SourceToken = "token" // a Trust Authority token was verified
	SourceQuote = "quote" // the quote itself was verified ([Direct])
)

// Evidence is what an attesting agent presents, with the report data the
// relying party expects it to commit to.
type Evidence struct {
	// Quote is the raw TDX quote. [Direct] requires it.
	Quote []byte
	// Token is a Trust Authority token appraising the quote. [Verifier]
	// requires it.
	Token string
	// ReportData is the value the TD must have committed to, computed by
	// the relying party from its own fresh nonce and the agent's public
	// keys. Evidence committing to anything else is refused.
	ReportData tdx.ReportData
}

// Appraiser verifies evidence and returns what it proves. Appraise fails
// with an [*EvidenceError] unless the evidence is authentic, current and
// bound to ev.ReportData (see [Appraisal.CheckBinding]), and with a
// [*FetchError] when it cannot be judged now. It does not apply a
// measurement policy. [*Verifier] and [*Direct] implement it.
type Appraiser interface {
	Appraise(ctx context.Context, ev Evidence) (*Appraisal, error)
}

var (
	_ Appraiser = (*Verifier)(nil)
	_ Appraiser = (*Direct)(nil)
)

// Appraisal is verified TDX evidence: what runs in the TD, on which
// platform, and how it was verified.
type Appraisal struct {
	// Type is [tdx.TypeTDX] for hardware evidence and [tdx.TypeSimulated]
	// for a simulated TD. Simulated evidence proves nothing about a
	// machine and must be labelled as such wherever it is shown.
	Type string `json:"type"`
	// Source is [SourceToken] or [SourceQuote].
	Source string `json:"source"`
	// Issuer is the token's issuer; empty for [SourceQuote].
	Issuer string `json:"issuer,omitempty"`
	// AttesterType is the verifier's own name for the evidence, e.g. ITA's
	// "TDX" or the local authority's "simulated".
	AttesterType string `json:"attester_type"`

	// Measurements are the TD quote body fields.
	Measurements tdx.Measurements `json:"measurements"`
	// TCB is the platform's TCB level as appraised by the verifier; nil
	// when it was not appraised (a quote verified without collateral).
	TCB *tdx.TCB `json:"tcb,omitempty"`
	// FMSPC names the platform family, when known.
	FMSPC string `json:"fmspc,omitempty"`

	// HeldData is the runtime data the quote committed to together with
	// VerifierNonce (ITA's attester_held_data); nil if none was sent.
	HeldData []byte `json:"held_data,omitempty"`
	// VerifierNonce is the Trust Authority's nonce the quote covers, if any.
	VerifierNonce *VerifierNonce `json:"verifier_nonce,omitempty"`

	// TokenID is the token's jti; VerifierInstanceIDs name the verifier
	// instances that appraised it.
	TokenID             string   `json:"token_id,omitempty"`
	VerifierInstanceIDs []string `json:"verifier_instance_ids,omitempty"`
	// IssuedAt is when the token was issued, or for a quote when it was
	// verified. ExpiresAt is the token's expiry; zero for a quote.
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// ErrBinding reports evidence whose report data is not the expected one.
// It is wrapped in an [EvidenceError].
var ErrBinding = errors.New("report data mismatch")

// CheckBinding checks that the evidence commits to want, in one of the two
// layouts a TD may use:
//
//   - the quote's report data is want itself; or
//   - the held (runtime) data is want and the report data is
//     [ReportData](VerifierNonce, want), the binding ITA itself checks
//     when a quote is sent with runtime_data.
//
// Either way the TD chose want, and want commits to the relying party's
// nonce and the agent's keys, so copied evidence binds nothing new.
func (a *Appraisal) CheckBinding(want tdx.ReportData) error {
	got := a.Measurements.ReportData
	if got == want {
		return nil
	}
	if a.HeldData != nil && bytes.Equal(a.HeldData, want[:]) &&
		got == ReportData(a.VerifierNonce, a.HeldData) {
		return nil
	}

	return &EvidenceError{Reason: ReasonBinding, Err: fmt.Errorf("%w: quote commits to %x",
		ErrBinding, got[:8])}
}
