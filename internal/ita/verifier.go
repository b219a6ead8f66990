package ita

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/endpoint"
	"github.com/devopsdefender/devopsdefender/internal/jwks"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// maxTokenSize bounds the tokens we parse; ITA's are a few KiB.
const maxTokenSize = 64 << 10

// DefaultAlgorithms are the token signing algorithms a [Verifier] accepts
// unless told otherwise: PS384 and RS256, which ITA signs with, and ES256
// and ES384 for the local [Authority]. HMAC and "none" are never accepted.
var DefaultAlgorithms = []jose.SignatureAlgorithm{jose.PS384, jose.RS256, jose.ES256, jose.ES384}

// VerifierOptions configure [NewVerifier].
type VerifierOptions struct {
	// JWKSURL is where the issuer publishes its signing keys. Empty means
	// [DefaultJWKSURL]. It must be https, or http to a loopback host. The
	// token's own jku header is ignored: keys come only from here.
	JWKSURL string

	// Issuer is the "iss" a token must carry, exactly. Empty means
	// [IntelIssuer].
	Issuer string

	// Algorithms narrows the accepted signing algorithms. Nil means
	// [DefaultAlgorithms]; only asymmetric algorithms are allowed.
	Algorithms []jose.SignatureAlgorithm

	// HTTPClient fetches the JWKS. Nil means a client with a 10 s timeout.
	HTTPClient *http.Client

	// Now is the clock for claim checks and the refresh rate limit. Nil
	// means time.Now.
	Now func() time.Time

	// Leeway is the clock skew allowed on exp, nbf and iat. Zero means
	// 60 s.
	Leeway time.Duration

	// MinRefreshInterval is the least time between two JWKS fetches,
	// whatever the tokens ask for. Zero means 30 s.
	MinRefreshInterval time.Duration

	// KeyMaxAge is how long fetched keys are trusted before the next
	// verification refreshes them, so a key the issuer withdrew stops
	// working. If that refresh fails, the old keys stay in use. Zero
	// means one hour.
	KeyMaxAge time.Duration

	// Logger receives key set events; tokens are never logged. Nil
	// discards.
	Logger *slog.Logger
}

// Verifier checks Trust Authority tokens and maps them to an [Appraisal].
// It is safe for concurrent use; Close stops its background key fetches.
type Verifier struct {
	issuer string
	algs   []jose.SignatureAlgorithm
	leeway time.Duration
	now    func() time.Time
	keys   *jwks.Set
}

// NewVerifier returns a verifier for opts. It does not contact the issuer:
// the first JWKS fetch happens at the first verification, so a verifier
// can be built before its issuer is up (the local authority of dev mode).
// ctx bounds the verifier's background key fetches, as does Close.
func NewVerifier(ctx context.Context, opts VerifierOptions) (*Verifier, error) {
	if err := opts.fill(); err != nil {
		return nil, fmt.Errorf("ita: %w", err)
	}

	keys, err := jwks.New(ctx, jwks.Options{
		URL: opts.JWKSURL, Algorithms: opts.Algorithms, HTTPClient: opts.HTTPClient,
		Now: opts.Now, MinRefreshInterval: opts.MinRefreshInterval, MaxAge: opts.KeyMaxAge,
		Logger: opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("ita: %w", err)
	}

	return &Verifier{
		issuer: opts.Issuer, algs: opts.Algorithms, leeway: opts.Leeway, now: opts.Now,
		keys: keys,
	}, nil
}

func (o *VerifierOptions) fill() error {
	o.JWKSURL = cmp.Or(o.JWKSURL, DefaultJWKSURL)
	if err := endpoint.CheckBase(o.JWKSURL); err != nil {
		return fmt.Errorf("jwks URL: %w", err)
	}
	o.Issuer = cmp.Or(o.Issuer, IntelIssuer)
	if strings.TrimSpace(o.Issuer) != o.Issuer {
		return errors.New("issuer must not have surrounding spaces")
	}

	// The key set checks the algorithms (asymmetric only, at least one)
	// and the refresh intervals, and fills in their defaults.
	if o.Algorithms == nil {
		o.Algorithms = DefaultAlgorithms
	}
	if o.Leeway < 0 {
		return errors.New("leeway must not be negative")
	}

	if o.Now == nil {
		o.Now = time.Now
	}
	o.Leeway = cmp.Or(o.Leeway, 60*time.Second)
	return nil
}

// Close stops background key fetches and waits for them to end. Later
// verifications that need a fetch fail with a [FetchError]. Close is
// idempotent.
func (v *Verifier) Close() error { return v.keys.Close() }

// Appraise implements [Appraiser]: it verifies ev.Token and checks that it
// binds ev.ReportData.
func (v *Verifier) Appraise(ctx context.Context, ev Evidence) (*Appraisal, error) {
	if ev.Token == "" {
		return nil, &EvidenceError{Reason: ReasonNoEvidence, Err: errors.New("no token")}
	}

	a, err := v.Verify(ctx, ev.Token)
	if err != nil {
		return nil, err
	}
	if err := a.CheckBinding(ev.ReportData); err != nil {
		return nil, err
	}
	if err := checkQuoteMatches(ev.Quote, a); err != nil {
		return nil, err
	}

	return a, nil
}

// checkQuoteMatches checks that a quote sent along with a token is the one
// the token appraised, so that no record shows a quote the Trust
// Authority did not see. The token vouches for the quote's signature;
// this only parses the quote and compares what the token states of it.
func checkQuoteMatches(quote []byte, a *Appraisal) error {
	if len(quote) == 0 {
		return nil
	}

	m, err := tdx.Parse(quote)
	if err != nil {
		return &EvidenceError{Reason: ReasonQuote, Err: err}
	}

	want := &a.Measurements
	same := bytes.Equal(m.MRTD, want.MRTD) && m.ReportData == want.ReportData
	for i := range m.RTMR {
		same = same && bytes.Equal(m.RTMR[i], want.RTMR[i])
	}

	if !same {
		return &EvidenceError{Reason: ReasonQuote,
			Err: errors.New("the quote is not the one the token appraised")}
	}
	return nil
}

// Verify checks raw and returns its appraisal. An invalid, expired or
// foreign token gives an [*EvidenceError]; a failure to fetch the issuer's
// keys gives a [*FetchError]. Verify does not check report data binding:
// use [Verifier.Appraise] or [Appraisal.CheckBinding] for that.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Appraisal, error) {
	jws, err := v.parse(raw)
	if err != nil {
		return nil, err
	}

	cs, a, err := decodeClaims(jws.UnsafePayloadWithoutVerification())
	if errors.Is(err, errAttesterType) {
		return nil, &EvidenceError{Reason: ReasonAttesterType, Err: err}
	}
	if err != nil {
		return nil, &EvidenceError{Reason: ReasonClaims, Err: err}
	}

	// Claim checks come before the key lookup, so that a foreign or
	// expired token cannot make us fetch the JWKS. The payload is the one
	// the signature covers: both come from one compact serialisation.
	if err := v.checkClaims(cs); err != nil {
		return nil, err
	}
	if err := v.checkSignature(ctx, jws); err != nil {
		return nil, err
	}

	return a, nil
}

// parse checks the JOSE header (an allowed algorithm, one signature, a
// kid) and returns the parsed token.
func (v *Verifier) parse(raw string) (*jose.JSONWebSignature, error) {
	if len(raw) > maxTokenSize {
		return nil, &EvidenceError{Reason: ReasonMalformed, Err: errors.New("token too large")}
	}

	jws, err := jose.ParseSignedCompact(raw, v.algs)
	var algErr *jose.ErrUnexpectedSignatureAlgorithm
	if errors.As(err, &algErr) {
		return nil, &EvidenceError{Reason: ReasonAlgorithm, Err: err}
	}
	if err != nil {
		return nil, &EvidenceError{Reason: ReasonMalformed, Err: err}
	}

	if len(jws.Signatures) != 1 {
		return nil, &EvidenceError{Reason: ReasonMalformed, Err: errors.New("not one signature")}
	}
	if jws.Signatures[0].Header.KeyID == "" {
		return nil, &EvidenceError{Reason: ReasonMissingKeyID}
	}

	return jws, nil
}

// checkClaims applies the issuer and time checks. Times follow RFC 7519
// §4.1.4–4.1.6 with v.leeway of skew either way; exp and iat are required
// (the reference left iat optional and nbf unchecked, auth.md §7.10).
func (v *Verifier) checkClaims(c *claimSet) error {
	now := v.now()
	switch {
	case c.Issuer != v.issuer:
		return &EvidenceError{Reason: ReasonIssuer, Err: fmt.Errorf("issuer %q", c.Issuer)}
	case c.Expiry == nil:
		return &EvidenceError{Reason: ReasonClaims, Err: errors.New("no exp claim")}
	case c.IssuedAt == nil:
		return &EvidenceError{Reason: ReasonClaims, Err: errors.New("no iat claim")}
	case now.After(c.Expiry.Time().Add(v.leeway)):
		return &EvidenceError{Reason: ReasonExpired,
			Err: fmt.Errorf("expired at %s", c.Expiry.Time().UTC())}
	case c.NotBefore != nil && c.NotBefore.Time().After(now.Add(v.leeway)):
		return &EvidenceError{Reason: ReasonNotYetValid}
	case c.IssuedAt.Time().After(now.Add(v.leeway)):
		return &EvidenceError{Reason: ReasonIssuedFuture}
	}

	return nil
}

// checkSignature verifies the token with the key its kid names. The key
// must suit the header's algorithm: go-jose refuses, say, an ES256 header
// over an RSA key, and a JWK that declares an alg must declare this one.
func (v *Verifier) checkSignature(ctx context.Context, jws *jose.JSONWebSignature) error {
	kid := jws.Signatures[0].Header.KeyID
	key, err := v.keys.Key(ctx, kid)
	if err != nil {
		return keyError(err)
	}

	alg := jws.Signatures[0].Header.Algorithm
	if key.Algorithm != "" && key.Algorithm != alg {
		return &EvidenceError{Reason: ReasonSignature,
			Err: fmt.Errorf("key %s is for %s, token uses %s", kid, key.Algorithm, alg)}
	}
	if _, err := jws.Verify(key.Key); err != nil {
		return &EvidenceError{Reason: ReasonSignature, Err: err}
	}

	return nil
}

// keyError turns an error of [jwks.Set.Key] into ours: an unknown key
// refuses the evidence, a failed fetch judges it neither way.
func keyError(err error) error {
	var fe *jwks.FetchError
	switch {
	case errors.Is(err, jwks.ErrUnknownKey):
		return &EvidenceError{Reason: ReasonUnknownKey}
	case errors.As(err, &fe):
		return &FetchError{Op: fe.Op, Err: fe.Err}
	}
	return err
}
