package tdx

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// countingGetter answers every URL with its own name and counts the
// requests, failing while fail is set.
type countingGetter struct {
	calls map[string]int
	fail  bool
}

func (g *countingGetter) Get(ctx context.Context, url string) (map[string][]string, []byte,
	error) {
	g.calls[url]++
	if g.fail {
		return nil, nil, errors.New("PCS unreachable")
	}
	return map[string][]string{"X-Url": {url}}, []byte(url), nil
}

func TestCollateralCache(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g := &countingGetter{calls: map[string]int{}}
	c, err := NewCollateralCache(CollateralCacheOptions{Getter: g, TTL: time.Hour,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}

	get := func(url string) error {
		t.Helper()
		_, body, err := c.Get(context.Background(), url)
		if err == nil && string(body) != url {
			t.Errorf("Get(%q) body %q", url, body)
		}
		return err
	}

	tests := []struct {
		name      string
		advance   time.Duration
		fail      bool
		wantErr   bool
		wantCalls int // of "a", after the step
	}{
		{"first use fetches", 0, false, false, 1},
		{"within the TTL is kept", 59 * time.Minute, false, false, 1},
		{"kept even while the source fails", 0, true, false, 1},
		{"past the TTL, a failing source gets the kept answer", time.Minute, true, false, 2},
		{"and is asked again next time", 0, true, false, 3},
		{"a fresh answer is kept", 0, false, false, 4},
		{"and used", 0, false, false, 4},
	}

	for _, tt := range tests {
		now = now.Add(tt.advance)
		g.fail = tt.fail
		if err := get("a"); (err != nil) != tt.wantErr || g.calls["a"] != tt.wantCalls {
			t.Errorf("%s: error %v, %d fetches; want error %v, %d fetches", tt.name, err,
				g.calls["a"], tt.wantErr, tt.wantCalls)
		}
	}

	// With nothing kept, a failure is the caller's.
	g.fail = true
	if err := get("never"); err == nil {
		t.Error("a failed fetch with nothing kept gave no error")
	}
	g.fail = false

	// The cache is bounded; expired entries make room.
	for i := range 2 * maxCachedCollateral {
		get(fmt.Sprint(i))
	}

	if n := len(c.entries); n != maxCachedCollateral {
		t.Errorf("%d entries, want the bound %d", n, maxCachedCollateral)
	}
	now = now.Add(time.Hour)
	get("late")
	if _, ok := c.entries["late"]; !ok || len(c.entries) != 1 {
		t.Errorf("after expiry: %d entries, late kept %v; want only late", len(c.entries), ok)
	}
}

func TestNewCollateralCacheValidates(t *testing.T) {
	if _, err := NewCollateralCache(CollateralCacheOptions{TTL: time.Hour}); err == nil {
		t.Error("nil getter accepted")
	}
	noTTL := CollateralCacheOptions{Getter: CollateralDir("x")}
	if _, err := NewCollateralCache(noTTL); err == nil {
		t.Error("zero TTL accepted")
	}
}
