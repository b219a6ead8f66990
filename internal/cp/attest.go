package cp

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// Attestation statuses recorded for an agent.
const (
	// attestationVerified: the evidence verified and met the policy.
	attestationVerified = "verified"
	// attestationUnattested: the last verified evidence is older than
	// Options.MaxEvidenceAge.
	attestationUnattested = "unattested"
)

// Policy decides whether appraised measurements are acceptable. Its error
// says which field failed and what was expected. [policy.Policy]
// implements it.
type Policy interface {
	Check(m *tdx.Measurements, tcb *tdx.TCB) error
}

// appraise runs the appraiser and the policy over evidence bound to nonce
// and keys, returning the attestation record to store. Refusals are 401s
// whose message names the failed check; details go to the log.
func (s *Server) appraise(ctx context.Context, purpose string, nonce []byte,
	keys attestbind.Keys, ev agentapi.Evidence) (fleet.Attestation, error) {
	rd, err := attestbind.ReportData(purpose, nonce, keys)
	if err != nil {
		return fleet.Attestation{}, httpapi.BadRequest("%s", err.Error())
	}
	if s.opts.Appraiser == nil {
		// Options.AcceptUnverified: record the claim, never as verified.
		return unverified(ev), nil
	}

	quote, err := base64.StdEncoding.DecodeString(ev.QuoteB64)
	if err != nil {
		return fleet.Attestation{}, httpapi.BadRequest("evidence.quote_b64 is not base64")
	}
	a, err := s.opts.Appraiser.Appraise(ctx,
		ita.Evidence{Quote: quote, Token: ev.ITAToken, ReportData: rd})
	if err != nil {
		return fleet.Attestation{}, appraisalError(err)
	}
	if s.opts.Policy != nil {
		if err := s.opts.Policy.Check(&a.Measurements, a.TCB); err != nil {
			he := httpapi.Forbidden("measurement policy refused the TD: " + err.Error())
			he.Err = err
			return fleet.Attestation{}, he
		}
	}

	return verified(ev, a, s.opts.Now()), nil
}

// appraisalError maps an appraisal failure: refused evidence is a 401
// naming the failed check, an unreachable verifier a 502.
func appraisalError(err error) error {
	var ee *ita.EvidenceError
	if errors.As(err, &ee) {
		he := httpapi.Unauthorized("attestation evidence refused: " + ee.Reason)
		he.Err = err
		return he
	}

	var fe *ita.FetchError
	if errors.As(err, &fe) {
		return httpapi.Upstream("attestation verifier unavailable", err)
	}
	return err
}

// publicMessage is the client-facing message of an error.
func publicMessage(err error) string {
	var he *httpapi.Error
	if errors.As(err, &he) {
		return he.Message
	}
	return "internal error"
}

func unverified(ev agentapi.Evidence) fleet.Attestation {
	return fleet.Attestation{Type: ev.AttestationType, QuoteFormat: ev.QuoteFormat,
		QuoteB64: ev.QuoteB64, ReportDataB64: ev.ReportDataB64, Status: attestationUnverified}
}

func verified(ev agentapi.Evidence, a *ita.Appraisal, now time.Time) fleet.Attestation {
	m := a.Measurements
	at := fleet.Attestation{
		Type: a.Type, QuoteFormat: ev.QuoteFormat, QuoteB64: ev.QuoteB64,
		ReportDataB64: base64.StdEncoding.EncodeToString(m.ReportData[:]),
		Verified:      true, Status: attestationVerified, MRTD: hex.EncodeToString(m.MRTD),
		VerifiedAt: now, Measurements: &m,
	}
	if a.TCB != nil {
		at.TCBStatus, at.TCBDate = a.TCB.Status, a.TCB.Date
	}

	return at
}

// reattest serves POST /agents/{id}/attest: a registered agent proves it
// still runs in the same TD, with fresh evidence over a new nonce and its
// registered keys. The agent token only admits its own agent.
func (s *Server) reattest(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	a := agentOf(ctx)
	body, err := httpapi.ReadBody(w, r, maxRegisterBody)
	if err != nil {
		return err
	}

	var req cpapi.AttestRequest
	if err := httpapi.Unmarshal(body, &req); err != nil {
		return err
	}
	keys := attestbind.Keys{Signing: a.SigningKey, Noise: a.NoiseKey}
	if err := attestbind.VerifySignature(keys.Signing, body,
		r.Header.Get(attestbind.SignatureHeader)); err != nil {
		return httpapi.Unauthorized("request signature refused")
	}

	nonce, ok := s.nonces.consume(req.Nonce)
	if !ok {
		return httpapi.Unauthorized("nonce unknown, used or expired")
	}

	at, err := s.appraise(ctx, attestbind.PurposeReattest, nonce, keys, req.Evidence)
	if err != nil {
		s.log.WarnContext(ctx, "re-attestation refused", "agent_id", a.ID, "err", err)
		s.record(ctx, audit.Event{Actor: audit.Agent(a.ID),
			Action: audit.ActionReattestationFailed, Target: a.ID, Outcome: audit.OutcomeDenied,
			Details: map[string]any{"reason": publicMessage(err)}})
		return err
	}
	if err := s.store.UpdateAttestation(ctx, a.ID, at); err != nil {
		return fmt.Errorf("recording attestation of %s: %w", a.ID, err)
	}

	s.log.InfoContext(ctx, "agent re-attested", "agent_id", a.ID, "mrtd", at.MRTD)
	return httpapi.WriteJSON(w, http.StatusOK, apiAttestation(&at))
}

// expireAttestation marks an agent whose verified evidence is older than
// MaxEvidenceAge as unattested.
func (s *Server) expireAttestation(ctx context.Context, a *fleet.Agent) {
	at := a.Attestation
	if !at.Verified || at.Status != attestationVerified ||
		s.opts.Now().Sub(at.VerifiedAt) <= s.opts.MaxEvidenceAge {
		return
	}

	at.Status = attestationUnattested
	if err := s.store.UpdateAttestation(ctx, a.ID, at); err != nil {
		s.log.WarnContext(ctx, "marking agent unattested failed", "agent_id", a.ID, "err", err)
		return
	}

	s.log.WarnContext(ctx, "agent evidence expired", "agent_id", a.ID,
		"verified_at", at.VerifiedAt)
	s.record(ctx, audit.Event{Actor: audit.System("collector"),
		Action: audit.ActionReattestationFailed, Target: a.ID, Outcome: audit.OutcomeError,
		Details: map[string]any{"reason": "evidence older than the maximum age",
			"verified_at": at.VerifiedAt}})
}

// apiAttestation renders an attestation record for the API.
func apiAttestation(at *fleet.Attestation) cpapi.Attestation {
	out := cpapi.Attestation{Type: at.Type, Verified: at.Verified, Status: at.Status,
		MRTD: at.MRTD, TCBStatus: at.TCBStatus, TCBDate: apiTime(at.TCBDate),
		VerifiedAt: apiTime(at.VerifiedAt)}
	if m := at.Measurements; m != nil {
		for _, r := range m.RTMR {
			out.RTMR = append(out.RTMR, hex.EncodeToString(r))
		}
		out.Debug = m.Debug
	}

	return out
}
