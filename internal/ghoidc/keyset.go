package ghoidc

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

const (
	// maxDocSize bounds the discovery document and the JWKS we read.
	maxDocSize = 1 << 20
	// fetchTimeout bounds one refresh (discovery plus JWKS), whatever the
	// HTTP client's own timeout.
	fetchTimeout = 15 * time.Second
	// minKeyBits refuses toy RSA keys even from the issuer.
	minKeyBits = 2048
)

// allowedAlgs is the only signature algorithm accepted. GitHub signs with
// RS256; refusing everything else rules out "none", HMAC with the public
// key as secret, and algorithm confusion in general.
var allowedAlgs = []jose.SignatureAlgorithm{jose.RS256}

// keySet caches the issuer's RSA signing keys by kid. It implements
// [oidc.KeySet], so go-oidc's IDTokenVerifier checks signatures with it.
//
// Refreshes are single-flight and rate-limited: an unknown kid or keys
// older than maxAge start a refresh only if none ran in the last
// minRefresh, and concurrent callers share the one in flight. This fixes
// the reference's unbounded refetch on every unknown kid (auth.md §7.9).
type keySet struct {
	issuer     string
	client     *http.Client
	now        func() time.Time
	minRefresh time.Duration
	maxAge     time.Duration
	log        *slog.Logger

	// base is the parent context of refreshes; cancelling it (Close)
	// stops them. wg tracks the refresh goroutine.
	base context.Context
	wg   sync.WaitGroup

	mu       sync.Mutex
	jwksURL  string                    // from discovery; "" until it succeeds
	keys     map[string]*rsa.PublicKey // nil until a JWKS fetch succeeds
	loadedAt time.Time                 // of keys
	triedAt  time.Time                 // start of the last refresh; zero before any
	lastErr  error                     // of the last refresh; nil if it succeeded
	flight   *flight                   // the refresh in progress, if any
}

var _ oidc.KeySet = (*keySet)(nil)

// flight is one refresh in progress. err is written before done closes.
type flight struct {
	done chan struct{}
	err  error
}

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
func (ks *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(jwt, allowedAlgs)
	if err != nil {
		return nil, noteErr(ctx, &TokenError{Reason: ReasonMalformed, Err: err})
	}
	if len(jws.Signatures) != 1 {
		return nil, noteErr(ctx, &TokenError{Reason: ReasonMalformed})
	}
	key, err := ks.resolve(ctx, jws.Signatures[0].Header.KeyID)
	if err != nil {
		return nil, noteErr(ctx, err)
	}
	payload, err := jws.Verify(key)
	if err != nil {
		return nil, noteErr(ctx, &TokenError{Reason: ReasonSignature, Err: err})
	}
	return payload, nil
}

// resolve returns the key named kid, refreshing the set first if kid is
// unknown or the keys are older than maxAge and the rate limit allows.
func (ks *keySet) resolve(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	ks.mu.Lock()
	now := ks.now()
	if key, ok := ks.keys[kid]; ok && now.Sub(ks.loadedAt) < ks.maxAge {
		ks.mu.Unlock()
		return key, nil
	}
	fl := ks.flight
	if fl == nil && !ks.triedAt.IsZero() && now.Sub(ks.triedAt) < ks.minRefresh {
		defer ks.mu.Unlock()
		return ks.lookupLocked(kid)
	}
	if fl == nil {
		fl = ks.startLocked(now)
	}
	ks.mu.Unlock()

	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for jwks: %w", ctx.Err())
	case <-fl.done:
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.lookupLocked(kid)
}

// lookupLocked answers from the cache without refreshing. A stale key is
// still returned: when a refresh fails, an outage of the issuer should not
// stop deploys signed with keys we already trust.
func (ks *keySet) lookupLocked(kid string) (*rsa.PublicKey, error) {
	if key, ok := ks.keys[kid]; ok {
		return key, nil
	}
	if ks.lastErr != nil {
		// The kid may exist upstream; we cannot tell, so no 401.
		return nil, ks.lastErr
	}
	return nil, &TokenError{Reason: ReasonUnknownKey}
}

// startLocked begins a refresh. It runs on its own goroutine under base,
// not under the caller's context, so a caller that gives up does not
// cancel the fetch the others wait for or waste the rate-limit slot.
func (ks *keySet) startLocked(now time.Time) *flight {
	fl := &flight{done: make(chan struct{})}
	ks.flight = fl
	ks.triedAt = now
	if ks.base.Err() != nil {
		ks.finishLocked(fl, nil, &FetchError{Op: "jwks", Err: net.ErrClosed})
		return fl
	}
	ks.wg.Add(1)
	go func() {
		defer ks.wg.Done()
		keys, err := ks.fetch()
		ks.mu.Lock()
		defer ks.mu.Unlock()
		ks.finishLocked(fl, keys, err)
	}()
	return fl
}

func (ks *keySet) finishLocked(fl *flight, keys map[string]*rsa.PublicKey, err error) {
	if err != nil {
		ks.log.Warn("jwks refresh failed", "issuer", ks.issuer, "err", err)
	} else {
		ks.keys, ks.loadedAt = keys, ks.now()
		ks.log.Info("jwks refreshed", "issuer", ks.issuer, "keys", len(keys))
	}
	ks.lastErr, fl.err = err, err
	ks.flight = nil
	close(fl.done)
}

// fetch runs discovery (once) and then reads the JWKS.
func (ks *keySet) fetch() (map[string]*rsa.PublicKey, error) {
	ctx, cancel := context.WithTimeout(ks.base, fetchTimeout)
	defer cancel()
	jwksURL, err := ks.discover(ctx)
	if err != nil {
		return nil, &FetchError{Op: "discovery", Err: err}
	}
	keys, err := ks.fetchJWKS(ctx, jwksURL)
	if err != nil {
		return nil, &FetchError{Op: "jwks", Err: err}
	}
	return keys, nil
}

// discoveryDoc holds the fields of an OpenID Provider Configuration we use
// (OpenID Connect Discovery 1.0 §3).
type discoveryDoc struct {
	Issuer  string   `json:"issuer"`
	JWKSURI string   `json:"jwks_uri"`
	Algs    []string `json:"id_token_signing_alg_values_supported"`
}

// discover reads <issuer>/.well-known/openid-configuration the first time
// and remembers jwks_uri: GitHub's never changes for the life of a process.
func (ks *keySet) discover(ctx context.Context) (string, error) {
	ks.mu.Lock()
	known := ks.jwksURL
	ks.mu.Unlock()
	if known != "" {
		return known, nil
	}
	var doc discoveryDoc
	if err := ks.getJSON(ctx, ks.issuer+"/.well-known/openid-configuration", &doc); err != nil {
		return "", err
	}
	// Discovery §4.3: the document's issuer must be the one we asked.
	if doc.Issuer != ks.issuer {
		return "", fmt.Errorf("issuer mismatch: document names %q", doc.Issuer)
	}
	if len(doc.Algs) > 0 && !slices.Contains(doc.Algs, string(jose.RS256)) {
		return "", errors.New("issuer does not sign with RS256")
	}
	if err := checkEndpoint(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("jwks_uri: %w", err)
	}
	ks.mu.Lock()
	ks.jwksURL = doc.JWKSURI
	ks.mu.Unlock()
	return doc.JWKSURI, nil
}

// fetchJWKS reads the key set and keeps the RSA signing keys in it.
// Unusable entries are skipped, not fatal, as RFC 7517 §5 asks, but a set
// with no usable key is an error.
func (ks *keySet) fetchJWKS(ctx context.Context, endpoint string) (map[string]*rsa.PublicKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := ks.getJSON(ctx, endpoint, &set); err != nil {
		return nil, err
	}
	keys := make(map[string]*rsa.PublicKey, len(set.Keys))
	for _, raw := range set.Keys {
		kid, key, err := parseJWK(raw)
		if err != nil {
			ks.log.Debug("jwks entry skipped", "kid", kid, "err", err)
			continue
		}
		if _, dup := keys[kid]; !dup {
			keys[kid] = key
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable RS256 key in jwks")
	}
	return keys, nil
}

// parseJWK returns the kid and RSA public key of one JWKS entry meant for
// RS256 signatures.
func parseJWK(raw json.RawMessage) (string, *rsa.PublicKey, error) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return "", nil, err
	}
	pub, ok := k.Key.(*rsa.PublicKey)
	switch {
	case k.KeyID == "":
		return "", nil, errors.New("no kid")
	case !ok:
		return k.KeyID, nil, fmt.Errorf("key type %T is not an RSA public key", k.Key)
	case k.Use != "" && k.Use != "sig":
		return k.KeyID, nil, fmt.Errorf("use %q is not sig", k.Use)
	case k.Algorithm != "" && k.Algorithm != string(jose.RS256):
		return k.KeyID, nil, fmt.Errorf("alg %q is not RS256", k.Algorithm)
	case pub.N.BitLen() < minKeyBits:
		return k.KeyID, nil, fmt.Errorf("RSA key of %d bits", pub.N.BitLen())
	}
	return k.KeyID, pub, nil
}

// getJSON GETs endpoint and decodes a JSON body of at most maxDocSize bytes.
func (ks *keySet) getJSON(ctx context.Context, endpoint string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", endpoint, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxDocSize+1))
	if err != nil {
		return fmt.Errorf("reading %s: %w", endpoint, err)
	}
	if len(data) > maxDocSize {
		return fmt.Errorf("%s: body exceeds %d bytes", endpoint, maxDocSize)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decoding %s: %w", endpoint, err)
	}
	return nil
}

// checkEndpoint requires an absolute https URL, or http to a loopback
// host (the local issuer of dev mode), so keys never travel in clear text
// across a network.
func checkEndpoint(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	switch {
	case u.Host == "":
		return fmt.Errorf("%q is not an absolute URL", raw)
	case u.User != nil:
		return fmt.Errorf("%q carries credentials", raw)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	}
	return fmt.Errorf("%q must be https (http only to a loopback host)", raw)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
