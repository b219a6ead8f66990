package ghoidc

import (
	"errors"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// Reasons a token is refused, as carried by [TokenError.Reason]. They are
// short and safe to show to the caller: none echoes token content.
const (
	ReasonMalformed    = "malformed token"
	ReasonAlgorithm    = "signing algorithm not allowed"
	ReasonMissingKeyID = "token has no key id"
	ReasonClaims       = "malformed claims"
	ReasonIssuer       = "wrong issuer"
	ReasonAudience     = "wrong audience"
	ReasonMissingClaim = "required claim missing"
	ReasonExpired      = "token expired"
	ReasonNotYetValid  = "token not yet valid"
	ReasonIssuedFuture = "token issued in the future"
	ReasonUnknownKey   = "unknown signing key"
	ReasonSignature    = "invalid signature"
)

// TokenError reports a token that is invalid, expired or meant for someone
// else. A server answers it with 401.
type TokenError struct {
	// Reason is one of the Reason constants.
	Reason string
	// Err is the underlying cause, if any; it may hold token details, so it
	// is for logs only.
	Err error
}

func (e *TokenError) Error() string {
	if e.Err != nil {
		return "ghoidc: " + e.Reason + ": " + e.Err.Error()
	}
	return "ghoidc: " + e.Reason
}

func (e *TokenError) Unwrap() error { return e.Err }

// FetchError reports that the issuer's discovery document or key set could
// not be fetched or used, so the token could not be judged either way. A
// server answers it with 502 or 503; the caller may retry later.
type FetchError struct {
	// Op is "discovery" or "jwks".
	Op  string
	Err error
}

func (e *FetchError) Error() string {
	return "ghoidc: fetching " + e.Op + ": " + e.Err.Error()
}

func (e *FetchError) Unwrap() error { return e.Err }

// HTTPError maps an error of [Verifier.Verify] to an [httpapi.Error]: a
// [TokenError] becomes 401 with its reason, a [FetchError] 502 with a
// generic message. Other errors (such as a cancelled context) are returned
// unchanged, so [httpapi.Handle] treats them as usual.
func HTTPError(err error) error {
	var te *TokenError
	if errors.As(err, &te) {
		he := httpapi.Unauthorized("invalid token: " + te.Reason)
		he.Err = err
		return he
	}

	var fe *FetchError
	if errors.As(err, &fe) {
		return httpapi.Upstream("identity provider unavailable", err)
	}
	return err
}
