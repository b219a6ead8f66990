package ghoidc

import (
	"context"
	"errors"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/jwks"
)

// allowedAlgs is the only signature algorithm accepted. GitHub signs with
// RS256; refusing everything else rules out "none", HMAC with the public
// key as secret, and algorithm confusion in general.
var allowedAlgs = []jose.SignatureAlgorithm{jose.RS256}

// keySet lets go-oidc's IDTokenVerifier check signatures with the
// issuer's keys, as cached by a [jwks.Set].
type keySet struct{ set *jwks.Set }

var _ oidc.KeySet = keySet{}

// sigNoteKey carries a *sigNote through go-oidc, which flattens the key
// set's errors with %v; Verify reads the typed error back from the note.
type sigNoteKey struct{}

type sigNote struct{ err error }

func noteErr(ctx context.Context, err error) error {
	if n, ok := ctx.Value(sigNoteKey{}).(*sigNote); ok {
		n.err = err
	}
	return err
}

// VerifySignature implements [oidc.KeySet]: it checks jwt's RS256
// signature against the key its kid names and returns the payload.
func (ks keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(jwt, allowedAlgs)
	if err != nil {
		return nil, noteErr(ctx, &TokenError{Reason: ReasonMalformed, Err: err})
	}
	if len(jws.Signatures) != 1 {
		return nil, noteErr(ctx, &TokenError{Reason: ReasonMalformed})
	}

	key, err := ks.set.Key(ctx, jws.Signatures[0].Header.KeyID)
	if err != nil {
		return nil, noteErr(ctx, keyError(err))
	}

	payload, err := jws.Verify(key.Key)
	if err != nil {
		return nil, noteErr(ctx, &TokenError{Reason: ReasonSignature, Err: err})
	}
	return payload, nil
}

// keyError turns an error of [jwks.Set.Key] into ours: an unknown key
// refuses the token, a failed fetch judges it neither way.
func keyError(err error) error {
	var fe *jwks.FetchError
	switch {
	case errors.Is(err, jwks.ErrUnknownKey):
		return &TokenError{Reason: ReasonUnknownKey}
	case errors.As(err, &fe):
		return &FetchError{Op: fe.Op, Err: fe.Err}
	}
	return err
}
