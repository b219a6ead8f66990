package ghoidc

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/endpoint"
	"github.com/devopsdefender/devopsdefender/internal/jwks"
)

// GitHubIssuer is the issuer of GitHub Actions OIDC tokens.
const GitHubIssuer = "https://token.actions.githubusercontent.com"

// maxTokenSize bounds the tokens we parse; GitHub's are about 1.5 KiB.
const maxTokenSize = 16 << 10

// VerifierOptions configures [NewVerifier].
type VerifierOptions struct {
	// Issuer is the token issuer's URL, matched exactly against "iss" and
	// used for discovery. Empty means [GitHubIssuer]. It must be https, or
	// http to a loopback host (the local issuer of dev mode).
	Issuer string

	// Audience is the "aud" a token must carry. Required. Use one audience
	// per fleet so a token minted for one fleet is refused by another.
	Audience string

	// HTTPClient fetches the discovery document and the JWKS. Nil means a
	// client with a 10 s timeout.
	HTTPClient *http.Client

	// Now is the clock for claim checks and the refresh rate limit. Nil
	// means time.Now.
	Now func() time.Time

	// Leeway is the clock skew allowed on exp, nbf and iat. Zero means 60 s.
	Leeway time.Duration

	// MinRefreshInterval is the least time between two key set fetches,
	// whatever the tokens ask for. Zero means 30 s.
	MinRefreshInterval time.Duration

	// KeyMaxAge is how long fetched keys are trusted before the next
	// verification refreshes them, so a key the issuer withdrew stops
	// working. If that refresh fails, the old keys stay in use. Zero means
	// one hour.
	KeyMaxAge time.Duration

	// Logger receives refresh events; tokens are never logged. Nil
	// discards.
	Logger *slog.Logger
}

// Verifier checks GitHub Actions OIDC tokens: RS256 signature against the
// issuer's JWKS, issuer, audience, exp, nbf and iat, and the presence of
// the claims principals are matched on. It is safe for concurrent use.
type Verifier struct {
	issuer   string
	audience string
	leeway   time.Duration
	now      func() time.Time
	keys     *jwks.Set
	idv      *oidc.IDTokenVerifier
}

// NewVerifier returns a verifier for opts. It does not contact the
// issuer: discovery and the first JWKS fetch happen at the first
// verification, so a verifier can be built before its issuer is up (the
// local issuer of dev mode starts alongside the agent).
//
// ctx bounds the verifier's background key fetches; cancelling it, or
// calling [Verifier.Close], stops them.
func NewVerifier(ctx context.Context, opts VerifierOptions) (*Verifier, error) {
	if err := opts.fill(); err != nil {
		return nil, fmt.Errorf("ghoidc: %w", err)
	}

	keys, err := jwks.New(ctx, jwks.Options{
		Issuer: opts.Issuer, Algorithms: allowedAlgs, HTTPClient: opts.HTTPClient,
		Now: opts.Now, MinRefreshInterval: opts.MinRefreshInterval, MaxAge: opts.KeyMaxAge,
		Logger: opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("ghoidc: %w", err)
	}

	// go-oidc checks the signature through keys, and issuer and audience
	// a second time. Expiry is ours: go-oidc has no leeway on exp and a
	// fixed 5 min on nbf.
	idv := oidc.NewVerifier(opts.Issuer, keySet{keys}, &oidc.Config{
		ClientID:             opts.Audience,
		SupportedSigningAlgs: []string{oidc.RS256},
		SkipExpiryCheck:      true,
		Now:                  opts.Now,
	})

	return &Verifier{
		issuer: opts.Issuer, audience: opts.Audience, leeway: opts.Leeway,
		now: opts.Now, keys: keys, idv: idv,
	}, nil
}

func (o *VerifierOptions) fill() error {
	if o.Issuer == "" {
		o.Issuer = GitHubIssuer
	}
	if err := endpoint.Check(o.Issuer); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}

	if strings.TrimSpace(o.Audience) != o.Audience || o.Audience == "" {
		return errors.New("audience is required and must not have surrounding spaces")
	}
	if o.Leeway < 0 {
		return errors.New("leeway must not be negative")
	}

	if o.Now == nil {
		o.Now = time.Now
	}
	o.Leeway = cmp.Or(o.Leeway, 60*time.Second)
	// The key set's own defaults fill HTTPClient, MinRefreshInterval and
	// KeyMaxAge, and it checks them.
	return nil
}

// Close stops background key fetches and waits for them to end. Later
// verifications that need a fetch fail with a [FetchError]. Close is
// idempotent.
func (v *Verifier) Close() error { return v.keys.Close() }

// Verify checks raw and returns its claims. An invalid, expired or foreign
// token gives a [*TokenError]; a failure to fetch the issuer's keys gives a
// [*FetchError]. Verify does not authorise: match the claims against a
// [Principal] for that.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Claims, error) {
	payload, err := parseToken(raw)
	if err != nil {
		return nil, err
	}

	claims, err := decodeClaims(payload)
	if err != nil {
		return nil, &TokenError{Reason: ReasonClaims, Err: err}
	}

	// Claim checks come before the key lookup, so a foreign or expired
	// token cannot make us fetch the JWKS. The payload is the one the
	// signature covers: both come from the same compact serialisation.
	if err := v.checkClaims(claims); err != nil {
		return nil, err
	}

	if err := v.checkSignature(ctx, raw); err != nil {
		return nil, err
	}
	return claims, nil
}

// parseToken checks the JOSE header (RS256 with a kid, one signature) and
// returns the unverified payload.
func parseToken(raw string) ([]byte, error) {
	if len(raw) > maxTokenSize {
		return nil, &TokenError{Reason: ReasonMalformed, Err: errors.New("token too large")}
	}

	jws, err := jose.ParseSignedCompact(raw, allowedAlgs)
	if err != nil {
		if alg := headerAlg(raw); alg != "" && alg != string(jose.RS256) {
			return nil, &TokenError{Reason: ReasonAlgorithm, Err: err}
		}
		return nil, &TokenError{Reason: ReasonMalformed, Err: err}
	}

	if len(jws.Signatures) != 1 {
		return nil, &TokenError{Reason: ReasonMalformed, Err: errors.New("not one signature")}
	}
	if jws.Signatures[0].Header.KeyID == "" {
		return nil, &TokenError{Reason: ReasonMissingKeyID}
	}
	return jws.UnsafePayloadWithoutVerification(), nil
}

// headerAlg returns the "alg" of a compact JWS header, or "" if the header
// does not decode; it only chooses between two error reasons.
func headerAlg(raw string) string {
	head, _, _ := strings.Cut(raw, ".")
	data, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return ""
	}

	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(data, &h) != nil {
		return ""
	}
	return h.Alg
}

// checkClaims applies the issuer, audience, presence and time checks.
// Times follow RFC 7519 §4.1.4–4.1.6 with v.leeway of skew either way.
func (v *Verifier) checkClaims(c *Claims) error {
	now := v.now()

	switch {
	case c.Issuer != v.issuer:
		return &TokenError{Reason: ReasonIssuer}
	case !slices.Contains(c.Audience, v.audience):
		return &TokenError{Reason: ReasonAudience}
	}

	if name := missingClaim(c); name != "" {
		return &TokenError{Reason: ReasonMissingClaim, Err: fmt.Errorf("no %s claim", name)}
	}

	switch {
	case now.After(c.Expiry.Add(v.leeway)):
		return &TokenError{Reason: ReasonExpired, Err: fmt.Errorf("expired at %s", c.Expiry)}
	case !c.NotBefore.IsZero() && c.NotBefore.After(now.Add(v.leeway)):
		return &TokenError{Reason: ReasonNotYetValid}
	case c.IssuedAt.After(now.Add(v.leeway)):
		return &TokenError{Reason: ReasonIssuedFuture}
	}
	return nil
}

// missingClaim names the first required claim c lacks, or returns "".
// Unlike the reference (auth.md §7.10) iat is required, and so are the
// ids principals are matched on.
func missingClaim(c *Claims) string {
	switch {
	case c.Subject == "":
		return "sub"
	case c.Expiry.IsZero():
		return "exp"
	case c.IssuedAt.IsZero():
		return "iat"
	case c.Repository == "":
		return "repository"
	case c.RepositoryID == 0:
		return "repository_id"
	case c.RepositoryOwner == "":
		return "repository_owner"
	case c.RepositoryOwnerID == 0:
		return "repository_owner_id"
	}
	return ""
}

// checkSignature runs go-oidc's verification, whose signature check goes
// through v.keys. go-oidc flattens the key set's errors, so the typed one
// comes back through a note in the context.
func (v *Verifier) checkSignature(ctx context.Context, raw string) error {
	note := &sigNote{}
	_, err := v.idv.Verify(context.WithValue(ctx, sigNoteKey{}, note), raw)

	switch {
	case err == nil:
		return nil
	case note.err != nil:
		return note.err
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return &TokenError{Reason: ReasonSignature, Err: err}
}
