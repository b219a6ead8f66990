// Package jwks keeps a verifier's copy of a token issuer's JSON Web Key
// Set (RFC 7517), published at a fixed URL or found through OpenID Connect
// discovery.
//
// A [Set] answers key lookups by kid. An unknown kid, or keys older than
// Options.MaxAge, start a refresh, but at most one per
// Options.MinRefreshInterval, and concurrent lookups share the one in
// flight: tokens with made-up key ids cannot make a verifier hammer its
// issuer (the reference refetched on every unknown kid and never expired
// its cache, auth.md §7.9). When a refresh fails, the keys fetched before
// stay in use, so an outage of the issuer does not stop verification with
// keys we already trust.
//
// Only keys usable with the caller's algorithm allowlist are kept: RSA
// keys of at least 2048 bits for RS* and PS*, ECDSA keys for ES*.
package jwks

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/devopsdefender/devopsdefender/internal/endpoint"
)

const (
	// maxDocSize bounds the discovery document and the key set we read.
	maxDocSize = 1 << 20
	// fetchTimeout bounds one refresh (discovery plus key set), whatever
	// the HTTP client's own timeout.
	fetchTimeout = 15 * time.Second
	// minRSABits refuses toy RSA keys even from the issuer.
	minRSABits = 2048
)

// ErrUnknownKey reports that no key of the set has the kid asked for,
// although the set is as fresh as the refresh rate allows: the kid is made
// up, or its key was withdrawn. A verifier refuses the token.
var ErrUnknownKey = errors.New("jwks: unknown key id")

// FetchError reports that the key set could not be fetched or used, so
// whether it holds the kid asked for is unknown. A verifier should neither
// accept nor refuse the token: the caller may retry later.
type FetchError struct {
	// Op is "discovery" or "jwks", the document that could not be had.
	Op  string
	Err error
}

func (e *FetchError) Error() string {
	return "jwks: fetching " + e.Op + ": " + e.Err.Error()
}

func (e *FetchError) Unwrap() error { return e.Err }

// Options configure [New].
type Options struct {
	// URL is where the key set is published. It must be https, or http
	// to a loopback host. Exactly one of URL and Issuer is required.
	URL string

	// Issuer names an OpenID provider whose key set is the jwks_uri of
	// its discovery document, <Issuer>/.well-known/openid-configuration
	// (OpenID Connect Discovery 1.0 §4). The document is read at the
	// first refresh and its jwks_uri kept for the life of the Set. The
	// same URL rule applies to Issuer and to jwks_uri.
	Issuer string

	// Algorithms are the signature algorithms the caller accepts. Keys
	// usable with none of them, or declaring another "alg", are skipped,
	// and a discovery document must list one of them if it lists any.
	// Required; only asymmetric algorithms are allowed.
	Algorithms []jose.SignatureAlgorithm

	// HTTPClient fetches the documents. Nil means a client with a 10 s
	// timeout.
	HTTPClient *http.Client

	// Now is the clock of the refresh rate limit and of key age. Nil
	// means time.Now.
	Now func() time.Time

	// MinRefreshInterval is the least time between the starts of two
	// refreshes, whatever the lookups ask for. Zero means 30 s.
	MinRefreshInterval time.Duration

	// MaxAge is how long fetched keys are used before a lookup refreshes
	// them, so that a key the issuer withdrew stops working. If that
	// refresh fails, the old keys stay in use. Zero means one hour; it
	// must not be shorter than MinRefreshInterval.
	MaxAge time.Duration

	// Logger receives refresh events. Nil discards.
	Logger *slog.Logger
}

// Set is a cached key set. It is safe for concurrent use; Close stops its
// background refresh.
type Set struct {
	issuer     string // "" unless the URL comes from discovery
	algs       []jose.SignatureAlgorithm
	client     *http.Client
	now        func() time.Time
	minRefresh time.Duration
	maxAge     time.Duration
	log        *slog.Logger

	// base is the parent context of refreshes; cancelling it (Close)
	// stops them. wg tracks the refresh goroutine.
	base      context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	mu       sync.Mutex
	url      string                     // of the key set; "" until discovery succeeds
	keys     map[string]jose.JSONWebKey // nil until a refresh succeeds
	loadedAt time.Time                  // of keys
	triedAt  time.Time                  // start of the last refresh; zero before any
	lastErr  *FetchError                // of the last refresh; nil if it succeeded
	flight   *flight                    // the refresh in progress, if any
}

// flight is one refresh in progress; done closes when it ends.
type flight struct{ done chan struct{} }

// New validates opts and returns a set. It does not fetch anything: the
// first lookup does, so a verifier can be built before its issuer is up
// (the local issuers of dev mode start alongside their verifiers). ctx
// bounds the background refreshes, as does [Set.Close].
func New(ctx context.Context, opts Options) (*Set, error) {
	if err := opts.fill(); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}

	base, cancel := context.WithCancel(ctx)
	log := opts.Logger.With("url", opts.URL)
	if opts.Issuer != "" {
		log = opts.Logger.With("issuer", opts.Issuer)
	}

	return &Set{
		issuer: opts.Issuer, algs: opts.Algorithms, client: opts.HTTPClient, now: opts.Now,
		minRefresh: opts.MinRefreshInterval, maxAge: opts.MaxAge, log: log,
		base: base, cancel: cancel, url: opts.URL,
	}, nil
}

func (o *Options) fill() error {
	switch {
	case (o.URL == "") == (o.Issuer == ""):
		return errors.New("exactly one of URL and issuer is required")
	case o.URL != "":
		if err := endpoint.Check(o.URL); err != nil {
			return fmt.Errorf("URL: %w", err)
		}
	default:
		if err := endpoint.Check(o.Issuer); err != nil {
			return fmt.Errorf("issuer: %w", err)
		}
	}

	if len(o.Algorithms) == 0 {
		return errors.New("no signing algorithm allowed")
	}
	for _, alg := range o.Algorithms {
		if keyType(alg) == "" {
			return fmt.Errorf("algorithm %q is not an asymmetric signature algorithm", alg)
		}
	}

	if o.MinRefreshInterval < 0 || o.MaxAge < 0 {
		return errors.New("refresh intervals must not be negative")
	}

	// defaults for the optional fields.
	o.HTTPClient = cmp.Or(o.HTTPClient, &http.Client{Timeout: 10 * time.Second})
	if o.Now == nil {
		o.Now = time.Now
	}
	o.MinRefreshInterval = cmp.Or(o.MinRefreshInterval, 30*time.Second)
	o.MaxAge = cmp.Or(o.MaxAge, time.Hour)
	o.Logger = cmp.Or(o.Logger, slog.New(slog.DiscardHandler))

	if o.MaxAge < o.MinRefreshInterval {
		return errors.New("key max age is shorter than the minimum refresh interval")
	}
	return nil
}

// keyType returns the JWK key type (RFC 7518 §6.1, RFC 8037 §2) that
// signs with alg, or "" if alg is not an asymmetric signature algorithm.
func keyType(alg jose.SignatureAlgorithm) string {
	switch alg {
	case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512:
		return "RSA"
	case jose.ES256, jose.ES384, jose.ES512:
		return "EC"
	case jose.EdDSA:
		return "OKP"
	}
	return ""
}

// Close stops the refresh in flight, if any, and waits for it to end.
// Later lookups that need a refresh fail with a [*FetchError] wrapping
// [net.ErrClosed]. Close is idempotent and returns nil.
func (s *Set) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

// Key returns the key named kid, refreshing the set first if kid is
// unknown or the keys are older than MaxAge and the rate limit allows. It
// fails with [ErrUnknownKey] if the set has no such key, with a
// [*FetchError] if the last refresh failed and no key fetched before has
// kid, and with ctx's error if ctx ends while it waits for a refresh.
func (s *Set) Key(ctx context.Context, kid string) (jose.JSONWebKey, error) {
	s.mu.Lock()
	now := s.now()
	if key, ok := s.keys[kid]; ok && now.Sub(s.loadedAt) < s.maxAge {
		s.mu.Unlock()
		return key, nil
	}

	// the last refresh started moments ago: answer from what we have.
	fl := s.flight
	if fl == nil && !s.triedAt.IsZero() && now.Sub(s.triedAt) < s.minRefresh {
		defer s.mu.Unlock()
		return s.lookupLocked(kid)
	}

	if fl == nil {
		fl = s.startLocked(now)
	}
	s.mu.Unlock()

	select {
	case <-ctx.Done():
		return jose.JSONWebKey{}, fmt.Errorf("waiting for jwks: %w", ctx.Err())
	case <-fl.done:
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookupLocked(kid)
}

// lookupLocked answers from the cache without refreshing. A key older
// than maxAge is still returned: it is there only because its refresh
// failed, and an outage of the issuer should not stop verification.
func (s *Set) lookupLocked(kid string) (jose.JSONWebKey, error) {
	if key, ok := s.keys[kid]; ok {
		return key, nil
	}

	if s.lastErr != nil {
		// The kid may exist upstream; we cannot tell, so no verdict.
		return jose.JSONWebKey{}, s.lastErr
	}
	return jose.JSONWebKey{}, ErrUnknownKey
}

// startLocked begins a refresh. It runs on its own goroutine under base,
// not under the caller's context, so a caller that gives up neither
// cancels the refresh others wait for nor wastes the rate-limit slot.
func (s *Set) startLocked(now time.Time) *flight {
	fl := &flight{done: make(chan struct{})}
	s.flight, s.triedAt = fl, now
	if s.base.Err() != nil {
		s.finishLocked(fl, nil, &FetchError{Op: "jwks", Err: net.ErrClosed})
		return fl
	}

	s.wg.Go(func() {
		keys, err := s.fetch()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.finishLocked(fl, keys, err)
	})
	return fl
}

func (s *Set) finishLocked(fl *flight, keys map[string]jose.JSONWebKey, err *FetchError) {
	if err != nil {
		s.log.Warn("jwks refresh failed", "err", err)
	} else {
		s.keys, s.loadedAt = keys, s.now()
		s.log.Info("jwks refreshed", "keys", len(keys))
	}

	s.lastErr, s.flight = err, nil
	close(fl.done)
}

// fetch runs discovery, once, and then reads the key set.
func (s *Set) fetch() (map[string]jose.JSONWebKey, *FetchError) {
	ctx, cancel := context.WithTimeout(s.base, fetchTimeout)
	defer cancel()

	url, err := s.discover(ctx)
	if err != nil {
		return nil, &FetchError{Op: "discovery", Err: err}
	}

	keys, err := s.fetchKeys(ctx, url)
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

// discover returns the key set's URL, reading the issuer's discovery
// document the first time: a provider's jwks_uri does not change for the
// life of a process.
func (s *Set) discover(ctx context.Context) (string, error) {
	s.mu.Lock()
	known := s.url
	s.mu.Unlock()
	if known != "" {
		return known, nil
	}

	var doc discoveryDoc
	if err := s.getJSON(ctx, s.issuer+"/.well-known/openid-configuration", &doc); err != nil {
		return "", err
	}

	// Discovery §4.3: the document's issuer must be the one we asked.
	if doc.Issuer != s.issuer {
		return "", fmt.Errorf("issuer mismatch: document names %q", doc.Issuer)
	}
	if len(doc.Algs) > 0 && !slices.ContainsFunc(s.algs, func(alg jose.SignatureAlgorithm) bool {
		return slices.Contains(doc.Algs, string(alg))
	}) {
		return "", fmt.Errorf("issuer signs with none of %v", s.algs)
	}

	if err := endpoint.Check(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("jwks_uri: %w", err)
	}
	s.mu.Lock()
	s.url = doc.JWKSURI
	s.mu.Unlock()
	return doc.JWKSURI, nil
}

// fetchKeys reads the key set at url and keeps its usable signing keys.
// Unusable entries are skipped, not fatal, as RFC 7517 §5 asks, but a set
// without a usable key is an error.
func (s *Set) fetchKeys(ctx context.Context, url string) (map[string]jose.JSONWebKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := s.getJSON(ctx, url, &set); err != nil {
		return nil, err
	}

	keys := make(map[string]jose.JSONWebKey, len(set.Keys))
	for _, raw := range set.Keys {
		key, err := s.parseKey(raw)
		if err != nil {
			s.log.Debug("jwks entry skipped", "kid", key.KeyID, "err", err)
			continue
		}
		if _, dup := keys[key.KeyID]; !dup {
			keys[key.KeyID] = key
		}
	}

	if len(keys) == 0 {
		return nil, fmt.Errorf("no usable key for %v in jwks", s.algs)
	}
	return keys, nil
}

// parseKey returns one key set entry if it is a public signing key usable
// with one of s.algs. go-jose checks that an x5c chain, if present,
// certifies the same key.
func (s *Set) parseKey(raw json.RawMessage) (jose.JSONWebKey, error) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return k, err
	}

	switch {
	case k.KeyID == "":
		return k, errors.New("no kid")
	case k.Use != "" && k.Use != "sig":
		return k, fmt.Errorf("use %q is not sig", k.Use)
	case k.Algorithm != "" && !slices.Contains(s.algs, jose.SignatureAlgorithm(k.Algorithm)):
		return k, fmt.Errorf("alg %q is not allowed", k.Algorithm)
	}

	var kty string
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return k, fmt.Errorf("RSA key of %d bits", pub.N.BitLen())
		}
		kty = "RSA"
	case *ecdsa.PublicKey:
		kty = "EC"
	default:
		return k, fmt.Errorf("key type %T is not an RSA or ECDSA public key", k.Key)
	}

	if !slices.ContainsFunc(s.algs, func(alg jose.SignatureAlgorithm) bool {
		return keyType(alg) == kty
	}) {
		return k, fmt.Errorf("%s key suits none of %v", kty, s.algs)
	}
	return k, nil
}

// getJSON GETs url and decodes a JSON body of at most maxDocSize bytes.
func (s *Set) getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")

	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}

	data, err := io.ReadAll(io.LimitReader(resp.Body, maxDocSize+1))
	if err != nil {
		return fmt.Errorf("reading %s: %w", url, err)
	}
	if len(data) > maxDocSize {
		return fmt.Errorf("%s: body exceeds %d bytes", url, maxDocSize)
	}

	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decoding %s: %w", url, err)
	}
	return nil
}
