package ita

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"

	"github.com/devopsdefender/devopsdefender/internal/endpoint"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

const (
	// minAPIKey is the least length of AuthorityOptions.APIKey.
	minAPIKey = 16
	// nonceValSize is the size of a local nonce's random value.
	nonceValSize = 32
	// maxAttestBody bounds an attest request; quotes are under 10 KiB,
	// event logs can be larger.
	maxAttestBody = 1 << 20
	// tokenVersion is the "ver" claim: the flat layout of ITA's v1 tokens.
	tokenVersion = "1.0.0"
)

// AuthorityOptions configure [NewAuthority].
type AuthorityOptions struct {
	// URL is the authority's public base URL, e.g. "http://127.0.0.1:8702".
	// It is the "iss" of its tokens, so that they are never mistaken for
	// Intel's, and the base of its JWKS URL. Required; https, or http to a
	// loopback host; never an Intel host.
	URL string

	// APIKey is the x-api-key every nonce and attest request must carry.
	// Required, at least 16 characters.
	APIKey string

	// KeyPath, if set, is a PEM file holding the ES256 signing key. It is
	// created (mode 0600) if missing, so that tokens and verifiers' cached
	// keys survive a restart. Empty means a fresh key in memory.
	KeyPath string

	// Roots, SimulatedRoots, Collateral and SimulatedTCBStatus configure
	// quote verification as in [DirectOptions]. A dev fleet sets
	// SimulatedRoots to its simulator's root and keeps Intel's root for
	// real quotes.
	Roots              *x509.CertPool
	SimulatedRoots     *x509.CertPool
	Collateral         tdx.CollateralGetter
	SimulatedTCBStatus string

	// NonceTTL is how long a nonce may be used after it is issued. Zero
	// means 5 minutes.
	NonceTTL time.Duration

	// TokenTTL is the lifetime of minted tokens. Zero means 5 minutes,
	// as ITA's.
	TokenTTL time.Duration

	// Now is the clock for nonces, tokens and quote verification. Nil
	// means time.Now.
	Now func() time.Time

	// Logger receives one record per minted token (never the token or the
	// key). Nil discards.
	Logger *slog.Logger
}

// Authority is a local stand-in for Intel Trust Authority, for dev fleets.
// It serves ITA's REST shapes, so that [Client] and [Verifier] run their
// production code against it, but it verifies quotes itself with package
// tdx and signs tokens with its own ES256 key under its own issuer. Tokens
// of simulated quotes say attester_type "simulated". An Authority must
// never be trusted by a production or staging fleet.
type Authority struct {
	url        string
	keyHash    [sha256.Size]byte
	key        *ecdsa.PrivateKey
	kid        string
	signer     jose.Signer
	direct     *Direct
	nonceKey   []byte
	instanceID string
	nonceTTL   time.Duration
	tokenTTL   time.Duration
	now        func() time.Time
	log        *slog.Logger

	mu        sync.Mutex
	used      map[string]time.Time // nonce val → expiry, of nonces spent
	nextSweep time.Time            // when to drop expired entries from used
}

// NewAuthority validates opts, loads or creates the signing key and
// returns the authority. Serve [Authority.Handler] at opts.URL.
func NewAuthority(opts AuthorityOptions) (*Authority, error) {
	base, err := checkAuthorityOptions(&opts)
	if err != nil {
		return nil, fmt.Errorf("ita: %w", err)
	}

	key, err := loadOrCreateKey(opts.KeyPath, opts.Logger)
	if err != nil {
		return nil, fmt.Errorf("ita: signing key: %w", err)
	}

	a := &Authority{
		url: base, keyHash: sha256.Sum256([]byte(opts.APIKey)), key: key,
		nonceKey: make([]byte, 32), instanceID: uuid.NewString(),
		nonceTTL: opts.NonceTTL, tokenTTL: opts.TokenTTL, now: opts.Now, log: opts.Logger,
		used: map[string]time.Time{},
	}

	if _, err := rand.Read(a.nonceKey); err != nil {
		return nil, fmt.Errorf("ita: nonce key: %w", err)
	}
	if err := a.initSigner(); err != nil {
		return nil, fmt.Errorf("ita: %w", err)
	}

	a.direct, err = NewDirect(DirectOptions{
		Roots: opts.Roots, SimulatedRoots: opts.SimulatedRoots, Collateral: opts.Collateral,
		SimulatedTCBStatus: opts.SimulatedTCBStatus, Now: opts.Now, Logger: opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// checkAuthorityOptions validates opts, fills defaults and returns the
// base URL without a trailing slash.
func checkAuthorityOptions(opts *AuthorityOptions) (string, error) {
	base := strings.TrimSuffix(opts.URL, "/")
	if err := endpoint.CheckBase(base); err != nil {
		return "", fmt.Errorf("authority URL: %w", err)
	}

	u, _ := url.Parse(base)
	if host := strings.ToLower(u.Hostname()); host == "intel.com" ||
		strings.HasSuffix(host, ".intel.com") {
		return "", errors.New("authority URL must not be an Intel host: its tokens are not Intel's")
	}
	if len(opts.APIKey) < minAPIKey {
		return "", fmt.Errorf("API key must have at least %d characters", minAPIKey)
	}
	if opts.NonceTTL < 0 || opts.TokenTTL < 0 {
		return "", errors.New("nonce and token lifetimes must not be negative")
	}

	opts.NonceTTL = cmp.Or(opts.NonceTTL, 5*time.Minute)
	opts.TokenTTL = cmp.Or(opts.TokenTTL, 5*time.Minute)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Logger = cmp.Or(opts.Logger, slog.New(slog.DiscardHandler))
	return base, nil
}

// initSigner derives the kid and builds the ES256 signer.
func (a *Authority) initSigner() error {
	jwk := jose.JSONWebKey{Key: &a.key.PublicKey}
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return fmt.Errorf("key thumbprint: %w", err)
	}

	// The RFC 7638 thumbprint as kid stays the same across restarts with
	// the same key file and changes with the key.
	a.kid = base64.RawURLEncoding.EncodeToString(thumb)
	opts := (&jose.SignerOptions{}).WithType("JWT").
		WithHeader("jku", a.JWKSURL())
	key := jose.JSONWebKey{Key: a.key, KeyID: a.kid}
	a.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, opts)
	if err != nil {
		return fmt.Errorf("signer: %w", err)
	}

	return nil
}

// URL returns the authority's base URL: a [Client]'s BaseURL and a
// [Verifier]'s Issuer.
func (a *Authority) URL() string { return a.url }

// JWKSURL returns the URL of the authority's key set, a [Verifier]'s
// JWKSURL.
func (a *Authority) JWKSURL() string { return a.url + certsPath }

// Handler serves the authority's routes, relative to the root:
//
//	GET  /appraisal/v1/nonce   a signed nonce (x-api-key required)
//	POST /appraisal/v1/attest  a token for a quote (x-api-key required)
//	GET  /certs                the JWKS holding the token signing key
func (a *Authority) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+noncePath, httpapi.Handle(a.log, a.serveNonce))
	mux.Handle("POST "+attestPath, httpapi.Handle(a.log, a.serveAttest))
	mux.Handle("GET "+certsPath, httpapi.Handle(a.log, a.serveCerts))
	return mux
}

// authorize checks the x-api-key header. Both sides are hashed first, so
// the comparison takes the same time whatever the length of the guess.
func (a *Authority) authorize(r *http.Request) error {
	got := sha256.Sum256([]byte(r.Header.Get(apiKeyHeader)))
	if subtle.ConstantTimeCompare(got[:], a.keyHash[:]) != 1 {
		return httpapi.Unauthorized("invalid API key")
	}
	return nil
}

func (a *Authority) serveCerts(w http.ResponseWriter, r *http.Request) error {
	return httpapi.WriteJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key: &a.key.PublicKey, KeyID: a.kid, Algorithm: string(jose.ES256), Use: "sig",
	}}})
}

func (a *Authority) serveNonce(w http.ResponseWriter, r *http.Request) error {
	if err := a.authorize(r); err != nil {
		return err
	}
	n, err := a.newNonce()
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, n)
}

// newNonce returns a nonce whose signature is an HMAC under a key only
// this process knows: val is 32 random bytes and iat the issue time as
// RFC 3339 text. ITA signs its nonces with PS384; only the authority
// itself ever checks these, so a MAC does.
func (a *Authority) newNonce() (*VerifierNonce, error) {
	val := make([]byte, nonceValSize)
	if _, err := rand.Read(val); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	iat := []byte(a.now().UTC().Format(time.RFC3339))
	return &VerifierNonce{Val: val, Iat: iat, Signature: a.nonceMAC(val, iat)}, nil
}

// nonceMAC is HMAC-SHA-384 over val || iat; val has a fixed size, so the
// concatenation is unambiguous.
func (a *Authority) nonceMAC(val, iat []byte) []byte {
	m := hmac.New(sha512.New384, a.nonceKey)
	m.Write(val)
	m.Write(iat)
	return m.Sum(nil)
}

// checkNonce verifies n's signature and age. It does not spend it.
func (a *Authority) checkNonce(n *VerifierNonce, now time.Time) (time.Time, error) {
	if len(n.Val) != nonceValSize || !hmac.Equal(n.Signature, a.nonceMAC(n.Val, n.Iat)) {
		return time.Time{}, httpapi.BadRequest("invalid verifier nonce")
	}
	iat, err := time.Parse(time.RFC3339, string(n.Iat))
	if err != nil {
		return time.Time{}, httpapi.BadRequest("invalid verifier nonce")
	}

	exp := iat.Add(a.nonceTTL)
	if now.After(exp) {
		return time.Time{}, httpapi.BadRequest("verifier nonce expired")
	}
	return exp, nil
}

// spendNonce marks a nonce used; a nonce can be spent once. Entries are
// kept until the nonce would have expired anyway, and swept lazily.
func (a *Authority) spendNonce(val []byte, exp, now time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()

	if now.After(a.nextSweep) {
		for k, e := range a.used {
			if now.After(e) {
				delete(a.used, k)
			}
		}
		a.nextSweep = now.Add(a.nonceTTL)
	}

	if _, dup := a.used[string(val)]; dup {
		return &httpapi.Error{Status: http.StatusConflict, Code: httpapi.CodeConflict,
			Message: "verifier nonce already used"}
	}
	a.used[string(val)] = exp
	return nil
}

// attestBody is ITA's attest request as Intel's client sends it. Fields
// the local authority does not use (user data, event log, signing
// algorithm: its tokens are always ES256) are accepted so that requests
// built for ITA decode.
type attestBody struct {
	Quote           []byte         `json:"quote"`
	RuntimeData     []byte         `json:"runtime_data"`
	VerifierNonce   *VerifierNonce `json:"verifier_nonce"`
	PolicyIDs       []string       `json:"policy_ids"`
	UserData        []byte         `json:"user_data"`
	EventLog        []byte         `json:"event_log"`
	TokenSigningAlg string         `json:"token_signing_alg"`
	PolicyMustMatch bool           `json:"policy_must_match"`
}

func (a *Authority) serveAttest(w http.ResponseWriter, r *http.Request) error {
	if err := a.authorize(r); err != nil {
		return err
	}
	var req attestBody
	if err := httpapi.DecodeBody(w, r, maxAttestBody, &req); err != nil {
		return err
	}

	token, err := a.attest(r.Context(), &req)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, attestResponse{Token: token})
}

// attest runs the appraisal steps in order, cheapest first: request
// shape, nonce signature and age, quote, report data binding; then it
// spends the nonce and mints the token.
func (a *Authority) attest(ctx context.Context, req *attestBody) (string, error) {
	if len(req.Quote) == 0 {
		return "", httpapi.BadRequest("quote is required")
	}
	if len(req.PolicyIDs) > 0 {
		return "", httpapi.BadRequest("the local trust authority has no appraisal policies")
	}

	now := a.now()
	var nonceExp time.Time
	if req.VerifierNonce != nil {
		exp, err := a.checkNonce(req.VerifierNonce, now)
		if err != nil {
			return "", err
		}
		nonceExp = exp
	}

	ap, err := a.direct.VerifyQuote(ctx, req.Quote)
	if err != nil {
		return "", quoteHTTPError(err)
	}
	if err := checkRequestBinding(ap, req); err != nil {
		return "", err
	}

	// spend the nonce last, so that a rejected quote leaves it usable
	if req.VerifierNonce != nil {
		if err := a.spendNonce(req.VerifierNonce.Val, nonceExp, now); err != nil {
			return "", err
		}
	}
	ap.HeldData, ap.VerifierNonce = req.RuntimeData, req.VerifierNonce
	return a.mint(ap, now)
}

// quoteHTTPError maps a quote verification failure to the answer ITA
// gives a bad request.
func quoteHTTPError(err error) error {
	var ee *EvidenceError
	if errors.As(err, &ee) {
		he := httpapi.BadRequest("quote rejected")
		he.Err = err
		return he
	}
	return HTTPError(err)
}

// checkRequestBinding applies ITA's rule: with a verifier nonce or
// runtime data, the quote's report data must be SHA-512(nonce.val ||
// nonce.iat || runtime_data) (see [ReportData]). Without either, what the
// report data commits to is the relying party's business.
func checkRequestBinding(ap *Appraisal, req *attestBody) error {
	if req.VerifierNonce == nil && req.RuntimeData == nil {
		return nil
	}
	if ap.Measurements.ReportData != ReportData(req.VerifierNonce, req.RuntimeData) {
		return httpapi.BadRequest(
			"report data is not SHA-512 of the verifier nonce and runtime data")
	}
	return nil
}

// mint signs a token for ap in ITA's v1 (flat) claim layout.
func (a *Authority) mint(ap *Appraisal, now time.Time) (string, error) {
	cs := claimSet{
		Claims: jwt.Claims{
			Issuer:    a.url,
			ID:        uuid.NewString(),
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			Expiry:    jwt.NewNumericDate(now.Add(a.tokenTTL)),
		},
		teeClaims:           teeClaimsOf(ap),
		VerifierInstanceIDs: []string{a.instanceID},
		Version:             tokenVersion,
		LocalAuthority:      true,
	}

	payload, err := json.Marshal(cs)
	if err != nil {
		return "", fmt.Errorf("ita: encoding claims: %w", err)
	}
	jws, err := a.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("ita: signing token: %w", err)
	}

	token, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("ita: serialising token: %w", err)
	}
	a.log.Info("token minted", "attester_type", ap.AttesterType,
		"mrtd", ap.Measurements.MRTD, "expires", cs.Expiry.Time().UTC())
	return token, nil
}

// teeClaimsOf writes an appraisal as ITA's TDX claims.
func teeClaimsOf(ap *Appraisal) teeClaims {
	m := &ap.Measurements
	t := teeClaims{
		AttesterType:   ap.AttesterType,
		DbgStat:        "disabled",
		VerifierNonce:  ap.VerifierNonce,
		TEETCBSVN:      hex.EncodeToString(m.TEETCBSVN),
		MRSEAM:         hex.EncodeToString(m.MRSEAM),
		MRSignerSEAM:   hex.EncodeToString(m.MRSignerSEAM),
		SEAMAttributes: hex.EncodeToString(m.SEAMAttributes),
		TDAttributes:   hex.EncodeToString(m.TDAttributes),
		XFAM:           hex.EncodeToString(m.XFAM),
		MRTD:           hex.EncodeToString(m.MRTD),
		MRConfigID:     hex.EncodeToString(m.MRConfigID),
		MROwner:        hex.EncodeToString(m.MROwner),
		MROwnerConfig:  hex.EncodeToString(m.MROwnerConfig),
		RTMR0:          hex.EncodeToString(m.RTMR[0]),
		RTMR1:          hex.EncodeToString(m.RTMR[1]),
		RTMR2:          hex.EncodeToString(m.RTMR[2]),
		RTMR3:          hex.EncodeToString(m.RTMR[3]),
		ReportData:     hex.EncodeToString(m.ReportData[:]),
		AttrDebug:      m.Debug,
		IsDebuggable:   m.Debug,
	}

	if m.Debug {
		t.DbgStat = "enabled"
	}
	if ap.HeldData != nil {
		t.HeldData = base64.StdEncoding.EncodeToString(ap.HeldData)
	}

	if ap.TCB != nil {
		t.TCBStatus, t.AdvisoryIDs = ap.TCB.Status, ap.TCB.AdvisoryIDs
		if !ap.TCB.Date.IsZero() {
			t.TCBDate = ap.TCB.Date.UTC().Format(time.RFC3339)
		}
	}

	if ap.FMSPC != "" {
		t.Collateral = &collateralClaims{FMSPC: ap.FMSPC}
	}
	return t
}
