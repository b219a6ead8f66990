package ita

import (
	"errors"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// Reasons evidence is refused, as carried by [EvidenceError.Reason]. They
// are short and safe to show to the caller: none echoes evidence content.
const (
	ReasonNoEvidence   = "evidence missing"
	ReasonMalformed    = "malformed token"
	ReasonAlgorithm    = "signing algorithm not allowed"
	ReasonMissingKeyID = "token has no key id"
	ReasonUnknownKey   = "unknown signing key"
	ReasonSignature    = "invalid signature"
	ReasonIssuer       = "wrong issuer"
	ReasonExpired      = "token expired"
	ReasonNotYetValid  = "token not yet valid"
	ReasonIssuedFuture = "token issued in the future"
	ReasonClaims       = "malformed or missing claims"
	ReasonAttesterType = "unsupported attester type"
	ReasonQuote        = "quote rejected"
	ReasonBinding      = "evidence not bound to the expected report data"
)

// EvidenceError reports evidence that is malformed, forged, expired, from
// an untrusted source or bound to other report data. A server answers it
// with 401.
type EvidenceError struct {
	// Reason is one of the Reason constants.
	Reason string
	// Err is the cause, if any. It may hold evidence details, so it is for
	// logs only.
	Err error
}

func (e *EvidenceError) Error() string {
	if e.Err != nil {
		return "ita: " + e.Reason + ": " + e.Err.Error()
	}
	return "ita: " + e.Reason
}

func (e *EvidenceError) Unwrap() error { return e.Err }

// FetchError reports that the token issuer's key set, or the collateral
// needed to judge a quote, could not be fetched, so the evidence was not
// judged either way. A server answers it with 502; the caller may retry.
type FetchError struct {
	// Op is "jwks" or "collateral".
	Op  string
	Err error
}

func (e *FetchError) Error() string {
	return "ita: fetching " + e.Op + ": " + e.Err.Error()
}

func (e *FetchError) Unwrap() error { return e.Err }

// HTTPError maps an error of an [Appraiser] to an [httpapi.Error]: an
// [EvidenceError] becomes 401 with its reason, except missing evidence
// which is 400, and a [FetchError] becomes 502 with a generic message.
// Other errors (a cancelled context) are returned unchanged.
func HTTPError(err error) error {
	var ee *EvidenceError
	if errors.As(err, &ee) {
		if ee.Reason == ReasonNoEvidence {
			he := httpapi.BadRequest("%s", ee.Reason)
			he.Err = err
			return he
		}
		he := httpapi.Unauthorized("attestation rejected: " + ee.Reason)
		he.Err = err
		return he
	}

	var fe *FetchError
	if errors.As(err, &fe) {
		return httpapi.Upstream("attestation verifier unavailable", err)
	}
	return err
}
