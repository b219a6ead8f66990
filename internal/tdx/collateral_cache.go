package tdx

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// maxCachedCollateral bounds a [CollateralCache]. A fleet has a few
// platform families, each with one TCB info, beside one QE identity and
// three CRLs.
const maxCachedCollateral = 256

// CollateralCache keeps the responses of another [CollateralGetter] for a
// while, so that a control plane appraising every registration and
// re-attestation asks Intel PCS once per resource and period rather than
// several times per quote. A response carries its own validity (a TCB
// info's or CRL's next update), which [Verify] checks on every use, so the
// cache only delays by up to its TTL how soon a new CRL or TCB info is
// seen, and when a fetch fails it answers with the response it kept,
// however old: a PCS outage then lasts as long as the collateral is valid.
// Failures are not kept. It is safe for concurrent use.
type CollateralCache struct {
	opts CollateralCacheOptions
	log  *slog.Logger

	mu      sync.Mutex
	entries map[string]cachedCollateral // by URL
}

type cachedCollateral struct {
	header  map[string][]string
	body    []byte
	expires time.Time
}

// CollateralCacheOptions configures a [CollateralCache].
type CollateralCacheOptions struct {
	// Getter fetches what the cache does not hold. Required.
	Getter CollateralGetter

	// TTL is how long a response is kept before it is fetched again.
	// Required.
	TTL time.Duration

	// Now is the clock. Nil means time.Now.
	Now func() time.Time

	// Logger hears when a failed fetch is answered from the cache. Nil
	// discards it.
	Logger *slog.Logger
}

// NewCollateralCache validates opts and returns an empty cache.
func NewCollateralCache(opts CollateralCacheOptions) (*CollateralCache, error) {
	if opts.Getter == nil {
		return nil, errors.New("tdx: collateral cache needs a getter")
	}
	if opts.TTL <= 0 {
		return nil, errors.New("tdx: collateral cache TTL must be positive")
	}

	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &CollateralCache{opts: opts, log: log.With("component", "collateral-cache"),
		entries: map[string]cachedCollateral{}}, nil
}

// Get returns the kept response for url, or fetches and keeps it. The
// returned header and body are shared and must not be modified.
func (c *CollateralCache) Get(ctx context.Context, url string) (map[string][]string, []byte,
	error) {
	now := c.opts.Now()
	c.mu.Lock()
	e, ok := c.entries[url]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.header, e.body, nil
	}

	// Two callers missing at once both fetch; the cache saves the many
	// later fetches, not the rare simultaneous one.
	header, body, err := c.opts.Getter.Get(ctx, url)
	if err != nil && ok {
		// PCS is down: the kept response is still good for as long as
		// its own validity, which Verify checks, says.
		c.log.WarnContext(ctx, "collateral fetch failed; answering with the kept response",
			"url", url, "kept_since", e.expires.Add(-c.opts.TTL), "err", err)
		return e.header, e.body, nil
	}
	if err != nil {
		return nil, nil, err
	}

	c.keep(url, cachedCollateral{header: header, body: body, expires: now.Add(c.opts.TTL)}, now)
	return header, body, nil
}

func (c *CollateralCache) keep(url string, e cachedCollateral, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()

	if _, ok := c.entries[url]; !ok && len(c.entries) >= maxCachedCollateral {
		for u, old := range c.entries {
			if !now.Before(old.expires) {
				delete(c.entries, u)
			}
		}
		if len(c.entries) >= maxCachedCollateral {
			return
		}
	}

	c.entries[url] = e
}
