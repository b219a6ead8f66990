package ghoidc

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/endpoint"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/keyfile"
)

const (
	// minMintSecret is the least length of IssuerOptions.MintSecret.
	minMintSecret = 16
	// maxMintBody bounds a POST /mint body.
	maxMintBody = 16 << 10
	// minKeyBits is the size of the signing key, and the least a key file
	// may hold: the bound package jwks puts on the keys it fetches.
	minKeyBits = 2048
)

// IssuerOptions configures [NewIssuer].
type IssuerOptions struct {
	// URL is the issuer's public base URL, e.g. "http://127.0.0.1:8700".
	// It becomes the "iss" of minted tokens and the base of the discovery
	// document's URLs. Required; https, or http to a loopback host.
	URL string

	// Audience is the "aud" of minted tokens when a request names none.
	// Required.
	Audience string

	// KeyPath, if set, is a PEM file holding the RSA signing key. It is
	// created (mode 0600) if missing, so tokens and cached JWKS survive a
	// restart. Empty means a fresh in-memory key.
	KeyPath string

	// MintSecret is the bearer token POST /mint requires. Required, at
	// least 16 characters.
	MintSecret string

	// Now is the clock for iat, nbf and exp. Nil means time.Now.
	Now func() time.Time

	// Logger receives one record per minted token (never the token or the
	// secret). Nil discards.
	Logger *slog.Logger
}

// Issuer is a local stand-in for GitHub's Actions token service, for dev
// mode. It speaks the real protocol (OpenID discovery, a JWKS and RS256
// JWTs with GitHub's claim set), so a [Verifier] pointed at it runs the
// production code path. It must never be configured as the issuer of a
// production or staging fleet.
type Issuer struct {
	url        string
	audience   string
	secretHash [sha256.Size]byte
	key        *rsa.PrivateKey
	kid        string
	signer     jose.Signer
	now        func() time.Time
	log        *slog.Logger
}

// NewIssuer validates opts, loads or creates the signing key and returns
// the issuer. Serve [Issuer.Handler] at opts.URL.
func NewIssuer(opts IssuerOptions) (*Issuer, error) {
	base, err := checkIssuerOptions(&opts)
	if err != nil {
		return nil, fmt.Errorf("ghoidc: %w", err)
	}

	key, err := loadOrCreateKey(opts.KeyPath, opts.Logger)
	if err != nil {
		return nil, fmt.Errorf("ghoidc: signing key: %w", err)
	}

	jwk := jose.JSONWebKey{Key: &key.PublicKey}
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("ghoidc: key thumbprint: %w", err)
	}

	// The RFC 7638 thumbprint as kid stays the same across restarts with
	// the same key file and changes with the key.
	kid := base64.RawURLEncoding.EncodeToString(thumb)
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("ghoidc: signer: %w", err)
	}

	return &Issuer{
		url: base, audience: opts.Audience, secretHash: sha256.Sum256([]byte(opts.MintSecret)),
		key: key, kid: kid, signer: signer, now: opts.Now, log: opts.Logger,
	}, nil
}

// checkIssuerOptions validates opts, fills defaults and returns the base
// URL without a trailing slash.
func checkIssuerOptions(opts *IssuerOptions) (string, error) {
	base := strings.TrimSuffix(opts.URL, "/")
	if err := endpoint.CheckBase(base); err != nil {
		return "", fmt.Errorf("issuer URL: %w", err)
	}

	if opts.Audience == "" || strings.TrimSpace(opts.Audience) != opts.Audience {
		return "", errors.New("audience is required and must not have surrounding spaces")
	}
	if len(opts.MintSecret) < minMintSecret {
		return "", fmt.Errorf("mint secret must have at least %d characters", minMintSecret)
	}

	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return base, nil
}

// URL returns the issuer's base URL, the "iss" of its tokens.
func (i *Issuer) URL() string { return i.url }

// Handler serves the issuer's routes, relative to the root (mount it with
// http.StripPrefix if URL has a path):
//
//	GET  /.well-known/openid-configuration  discovery document
//	GET  /.well-known/jwks                  the RS256 public key
//	POST /mint                              a token, for the dev CLI only
func (i *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /.well-known/openid-configuration", httpapi.Handle(i.log, i.serveDiscovery))
	mux.Handle("GET /.well-known/jwks", httpapi.Handle(i.log, i.serveJWKS))
	mux.Handle("POST /mint", httpapi.Handle(i.log, i.serveMint))
	return mux
}

// discoveryResponse mirrors the fields of GitHub's
// /.well-known/openid-configuration.
type discoveryResponse struct {
	Issuer          string   `json:"issuer"`
	JWKSURI         string   `json:"jwks_uri"`
	SubjectTypes    []string `json:"subject_types_supported"`
	ResponseTypes   []string `json:"response_types_supported"`
	ClaimsSupported []string `json:"claims_supported"`
	SigningAlgs     []string `json:"id_token_signing_alg_values_supported"`
	Scopes          []string `json:"scopes_supported"`
}

func (i *Issuer) serveDiscovery(w http.ResponseWriter, r *http.Request) error {
	return httpapi.WriteJSON(w, http.StatusOK, discoveryResponse{
		Issuer:          i.url,
		JWKSURI:         i.url + "/.well-known/jwks",
		SubjectTypes:    []string{"public", "pairwise"},
		ResponseTypes:   []string{"id_token"},
		ClaimsSupported: claimNames,
		SigningAlgs:     []string{string(jose.RS256)},
		Scopes:          []string{"openid"},
	})
}

func (i *Issuer) serveJWKS(w http.ResponseWriter, r *http.Request) error {
	return httpapi.WriteJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key: &i.key.PublicKey, KeyID: i.kid, Algorithm: string(jose.RS256), Use: "sig",
	}}})
}

// mintResponse is the body of a successful POST /mint.
type mintResponse struct {
	Token string `json:"token"`
}

func (i *Issuer) serveMint(w http.ResponseWriter, r *http.Request) error {
	// The secret is hashed first so the comparison takes the same time
	// whatever the length of the guess.
	got := sha256.Sum256([]byte(httpapi.BearerToken(r)))
	if subtle.ConstantTimeCompare(got[:], i.secretHash[:]) != 1 {
		return httpapi.Unauthorized("mint secret required")
	}

	var req MintRequest
	if err := httpapi.DecodeBody(w, r, maxMintBody, &req); err != nil {
		return err
	}

	claims, err := i.claimsFor(req)
	if err != nil {
		return httpapi.BadRequest("%s", err.Error())
	}

	token, err := i.sign(claims)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, mintResponse{Token: token})
}

// Mint returns a signed token for req, for in-process use (tests, the dev
// supervisor). Invalid fields of req give an error and no token.
func (i *Issuer) Mint(ctx context.Context, req MintRequest) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}

	claims, err := i.claimsFor(req)
	if err != nil {
		return "", fmt.Errorf("ghoidc: mint request: %w", err)
	}
	return i.sign(claims)
}

func (i *Issuer) sign(c *Claims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("ghoidc: encoding claims: %w", err)
	}

	jws, err := i.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("ghoidc: signing token: %w", err)
	}
	token, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("ghoidc: serialising token: %w", err)
	}

	i.log.Info("token minted", "repository", c.Repository, "ref", c.Ref,
		"audience", c.Audience, "expires", c.Expiry)
	return token, nil
}

// loadOrCreateKey returns the RSA signing key kept at path, created if
// missing, or a fresh in-memory key if path is empty.
func loadOrCreateKey(path string, log *slog.Logger) (*rsa.PrivateKey, error) {
	return keyfile.LoadOrCreate(keyfile.Options[*rsa.PrivateKey]{
		Path: path,
		Generate: func() (*rsa.PrivateKey, error) {
			return rsa.GenerateKey(rand.Reader, minKeyBits)
		},
		Check: func(key *rsa.PrivateKey) error {
			if key.N.BitLen() < minKeyBits {
				return fmt.Errorf("RSA key of %d bits is too small", key.N.BitLen())
			}
			return nil
		},
		Logger: log,
	})
}
