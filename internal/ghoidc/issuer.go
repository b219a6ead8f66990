package ghoidc

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

const (
	// minMintSecret is the least length of IssuerOptions.MintSecret.
	minMintSecret = 16
	// maxMintBody bounds a POST /mint body.
	maxMintBody = 16 << 10
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
	if err := checkEndpoint(base); err != nil {
		return "", fmt.Errorf("issuer URL: %w", err)
	}
	if u, _ := url.Parse(base); u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("issuer URL must not have a query or fragment")
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

// loadOrCreateKey reads the RSA key at path, creating it if the file does
// not exist. A file that exists but does not hold a usable key is an
// error, never silently replaced.
func loadOrCreateKey(path string, log *slog.Logger) (*rsa.PrivateKey, error) {
	if path == "" {
		return rsa.GenerateKey(rand.Reader, minKeyBits)
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKey(path, log)
	}
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("signing key file readable by others", "path", path, "mode", fi.Mode().Perm())
	}
	key, err := parseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

func parseKeyPEM(data []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var parsed any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	key, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, not RSA", parsed)
	}
	if key.N.BitLen() < minKeyBits {
		return nil, fmt.Errorf("RSA key of %d bits is too small", key.N.BitLen())
	}
	return key, nil
}

// createKey generates a key and writes it to path atomically (temporary
// file, fsync, rename), so a crash never leaves a truncated key behind.
func createKey(path string, log *slog.Logger) (*rsa.PrivateKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, minKeyBits)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := writeFileAtomic(path, data); err != nil {
		return nil, err
	}
	log.Info("signing key created", "path", path)
	return key, nil
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// CreateTemp makes the file with mode 0600.
	f, err := os.CreateTemp(dir, ".ghoidc-key-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename this is a no-op
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
