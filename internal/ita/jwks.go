package ita

import (
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
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

const (
	// maxJWKS bounds the key set we read.
	maxJWKS = 1 << 20
	// jwksTimeout bounds one key set fetch, whatever the HTTP client's
	// own timeout.
	jwksTimeout = 15 * time.Second
	// minRSABits refuses toy RSA keys even from the issuer.
	minRSABits = 2048
)

// keySet caches an issuer's signing keys by kid.
//
// Refreshes are single-flight and rate-limited: an unknown kid, or keys
// older than maxAge, start a fetch only if none started in the last
// minRefresh, and concurrent callers share the one in flight. This fixes
// the reference's fetch on every unknown kid and its never-expiring cache
// (auth.md §7.9).
type keySet struct {
	url        string
	client     *http.Client
	now        func() time.Time
	minRefresh time.Duration
	maxAge     time.Duration
	log        *slog.Logger

	// base is the parent context of fetches; cancelling it (Close) stops
	// them. wg tracks the fetch goroutine.
	base context.Context
	wg   sync.WaitGroup

	mu       sync.Mutex
	keys     map[string]jose.JSONWebKey // nil until a fetch succeeds
	loadedAt time.Time                  // of keys
	triedAt  time.Time                  // start of the last fetch; zero before any
	lastErr  error                      // of the last fetch; nil if it succeeded
	flight   *flight                    // the fetch in progress, if any
}

// flight is one fetch in progress; done closes when it ends.
type flight struct{ done chan struct{} }

// resolve returns the key named kid, refreshing the set first if kid is
// unknown or the keys are older than maxAge and the rate limit allows.
func (ks *keySet) resolve(ctx context.Context, kid string) (jose.JSONWebKey, error) {
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
		return jose.JSONWebKey{}, fmt.Errorf("waiting for jwks: %w", ctx.Err())
	case <-fl.done:
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.lookupLocked(kid)
}

// lookupLocked answers from the cache without fetching. A key older than
// maxAge is still returned when the refresh failed, so that an outage of
// the issuer does not stop verification with keys we already trust.
func (ks *keySet) lookupLocked(kid string) (jose.JSONWebKey, error) {
	if key, ok := ks.keys[kid]; ok {
		return key, nil
	}
	if ks.lastErr != nil {
		// The kid may exist upstream; we cannot tell, so no 401.
		return jose.JSONWebKey{}, &FetchError{Op: "jwks", Err: ks.lastErr}
	}
	return jose.JSONWebKey{}, &EvidenceError{Reason: ReasonUnknownKey}
}

// startLocked begins a fetch on its own goroutine under base, not under
// the caller's context, so a caller that gives up neither cancels the
// fetch others wait for nor wastes the rate-limit slot.
func (ks *keySet) startLocked(now time.Time) *flight {
	fl := &flight{done: make(chan struct{})}
	ks.flight, ks.triedAt = fl, now
	if ks.base.Err() != nil {
		ks.finishLocked(fl, nil, net.ErrClosed)
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

func (ks *keySet) finishLocked(fl *flight, keys map[string]jose.JSONWebKey, err error) {
	if err != nil {
		ks.log.Warn("jwks refresh failed", "url", ks.url, "err", err)
	} else {
		ks.keys, ks.loadedAt = keys, ks.now()
		ks.log.Info("jwks refreshed", "url", ks.url, "keys", len(keys))
	}
	ks.lastErr, ks.flight = err, nil
	close(fl.done)
}

// fetch reads the key set and keeps the usable signing keys. Unusable
// entries are skipped, as RFC 7517 §5 asks, but a set without a usable
// key is an error.
func (ks *keySet) fetch() (map[string]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(ks.base, jwksTimeout)
	defer cancel()
	data, err := ks.get(ctx)
	if err != nil {
		return nil, err
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("decoding jwks: %w", err)
	}
	keys := make(map[string]jose.JSONWebKey, len(set.Keys))
	for _, raw := range set.Keys {
		key, err := parseJWK(raw)
		if err != nil {
			ks.log.Debug("jwks entry skipped", "kid", key.KeyID, "err", err)
			continue
		}
		if _, dup := keys[key.KeyID]; !dup {
			keys[key.KeyID] = key
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable signing key in jwks")
	}
	return keys, nil
}

// parseJWK returns one JWKS entry as a public signing key. go-jose checks
// that an x5c chain, if present, certifies the same key.
func parseJWK(raw json.RawMessage) (jose.JSONWebKey, error) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return k, err
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return k, fmt.Errorf("RSA key of %d bits", pub.N.BitLen())
		}
	case *ecdsa.PublicKey:
	default:
		return k, fmt.Errorf("key type %T is not an RSA or ECDSA public key", k.Key)
	}
	switch {
	case k.KeyID == "":
		return k, errors.New("no kid")
	case k.Use != "" && k.Use != "sig":
		return k, fmt.Errorf("use %q is not sig", k.Use)
	}
	return k, nil
}

// get fetches the key set body.
func (ks *keySet) get(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ks.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", ks.url, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKS+1))
	if err != nil {
		return nil, fmt.Errorf("reading jwks: %w", err)
	}
	if len(data) > maxJWKS {
		return nil, fmt.Errorf("jwks exceeds %d bytes", maxJWKS)
	}
	return data, nil
}
