package cloudflare

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/ingress/cloudflare/cftest"
)

func TestRetriesThenSucceeds(t *testing.T) {
	tests := []struct {
		name  string
		fault cftest.Fault
		// check validates the recorded waits between attempts.
		check func(t *testing.T, waits []time.Duration)
	}{
		{"429 with Retry-After",
			cftest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "2", Times: 2},
			func(t *testing.T, waits []time.Duration) {
				if want := []time.Duration{2 * time.Second, 2 * time.Second}; !slices.Equal(waits, want) {
					t.Errorf("waits = %v, want %v (Retry-After)", waits, want)
				}
			}},
		{"Retry-After capped", cftest.Fault{Status: http.StatusTooManyRequests,
			RetryAfter: "3600", Times: 1},
			func(t *testing.T, waits []time.Duration) {
				if want := []time.Duration{8 * time.Second}; !slices.Equal(waits, want) {
					t.Errorf("waits = %v, want %v (MaxBackoff)", waits, want)
				}
			}},
		{"500 with backoff and jitter", cftest.Fault{Status: http.StatusInternalServerError,
			Times: 3}, checkBackoff},
		{"503", cftest.Fault{Status: http.StatusServiceUnavailable, Times: 1}, checkBackoff},
		{"timeout", cftest.Fault{Hang: true, Times: 1}, checkBackoff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 0, func(o *Options) {
				o.MinBackoff = time.Second
				o.MaxBackoff = 8 * time.Second
				o.RequestTimeout = 100 * time.Millisecond
			})

			f.fake.Inject(cftest.RouteCreateTunnel, tt.fault)
			tun, err := f.p.CreateTunnel(context.Background(), "dd-pr-7-agent-ab12cd34",
				agentIngress())
			if err != nil {
				t.Fatalf("CreateTunnel: %v", err)
			}

			tt.check(t, f.sleeps.waits())
			// The retried POST made one tunnel: the faults answered before
			// the fake created anything.
			if n := len(f.fake.Tunnels()); n != 1 || f.fake.Tunnels()[0].ID != tun.ID {
				t.Errorf("fake holds %d tunnels, want exactly the created one", n)
			}
		})
	}
}

// checkBackoff checks that retry n waited within [step/2, step] for a step
// doubling from MinBackoff (1s).
func checkBackoff(t *testing.T, waits []time.Duration) {
	t.Helper()
	if len(waits) == 0 {
		t.Fatal("no retry waits recorded")
	}

	for i, w := range waits {
		step := time.Second << i
		if w < step/2 || w > step {
			t.Errorf("wait %d = %v, want within [%v, %v]", i, w, step/2, step)
		}
	}
}

func TestRetriesGiveUp(t *testing.T) {
	f := newFixture(t, 0, func(o *Options) { o.MaxAttempts = 3 })
	f.fake.Inject(cftest.RouteGetTunnel, cftest.Fault{Status: http.StatusBadGateway})
	_, err := f.p.Tunnel(context.Background(), "some-tunnel")
	apiErr, ok := asAPIError(err)
	if !ok || apiErr.StatusCode != http.StatusBadGateway || !apiErr.Temporary() {
		t.Fatalf("Tunnel = %v, want a 502 APIError", err)
	}

	if n := len(f.fake.RequestsTo(cftest.RouteGetTunnel)); n != 3 {
		t.Errorf("%d attempts, want 3", n)
	}
	if n := len(f.sleeps.waits()); n != 2 {
		t.Errorf("%d waits, want 2", n)
	}
}

// Errors other than 429 and 5xx are not retried, and come back with
// Cloudflare's codes.
func TestNonRetryableErrors(t *testing.T) {
	tests := []struct {
		name      string
		route     string
		fault     cftest.Fault
		call      func(p *Provider, id string) error
		status    int
		code      int
		predicate func(*APIError) bool
	}{
		{"forbidden", cftest.RouteListTunnels,
			cftest.Fault{Status: http.StatusForbidden, Code: cftest.CodeAuth},
			func(p *Provider, id string) error { _, err := p.listTunnels(context.Background()); return err },
			http.StatusForbidden, cftest.CodeAuth, (*APIError).Auth},
		{"success false", cftest.RoutePutConfig,
			cftest.Fault{SuccessFalse: true, Code: cftest.CodeInvalidConfig},
			func(p *Provider, id string) error {
				return p.putIngress(context.Background(), id, agentIngress())
			},
			http.StatusOK, cftest.CodeInvalidConfig, nil},
		{"active connections", cftest.RouteDeleteTunnel,
			cftest.Fault{Status: http.StatusBadRequest, Code: cftest.CodeActiveConns},
			func(p *Provider, id string) error { return p.deleteTunnelOnce(context.Background(), id) },
			http.StatusBadRequest, CodeActiveConnections, nil},
		{"conflict", cftest.RouteCreateTunnel,
			cftest.Fault{Status: http.StatusConflict, Code: cftest.CodeTunnelExists},
			func(p *Provider, id string) error {
				_, err := p.newTunnel(context.Background(), "x")
				return err
			},
			http.StatusConflict, cftest.CodeTunnelExists, nil},
		{"not found", cftest.RouteGetConfig, cftest.Fault{},
			func(p *Provider, id string) error {
				_, err := p.TunnelIngress(context.Background(), "missing")
				return err
			},
			http.StatusNotFound, cftest.CodeTunnelNotFound, (*APIError).NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 0, nil)
			tun := f.fake.AddTunnel("t", time.Now())
			if tt.fault != (cftest.Fault{}) {
				f.fake.Inject(tt.route, tt.fault)
			}

			err := tt.call(f.p, tun.ID)
			apiErr, ok := asAPIError(err)
			if !ok {
				t.Fatalf("error %v (%T) is not an APIError", err, err)
			}

			if apiErr.StatusCode != tt.status || !apiErr.HasCode(tt.code) || apiErr.RayID == "" {
				t.Errorf("APIError = %+v, want status %d code %d and a ray id", apiErr,
					tt.status, tt.code)
			}
			if tt.predicate != nil && !tt.predicate(apiErr) {
				t.Errorf("predicate false for %v", apiErr)
			}

			if apiErr.Temporary() {
				t.Errorf("%v reported temporary", apiErr)
			}
			if n := len(f.fake.RequestsTo(tt.route)); n != 1 {
				t.Errorf("%d requests to %s, want 1 (no retry)", n, tt.route)
			}
			if len(f.sleeps.waits()) != 0 {
				t.Errorf("waited %v, want no retry", f.sleeps.waits())
			}
		})
	}
}

func TestWrongTokenIsAuthError(t *testing.T) {
	f := newFixture(t, 0, func(o *Options) { o.APIToken = "wrong" })
	_, err := f.p.Tunnel(context.Background(), "x")
	if apiErr, ok := asAPIError(err); !ok || !apiErr.Auth() {
		t.Errorf("Tunnel with a wrong token = %v, want an auth APIError", err)
	}
}

func TestCancelStopsRetrying(t *testing.T) {
	f := newFixture(t, 0, nil)
	f.fake.Inject(cftest.RouteGetTunnel, cftest.Fault{Status: http.StatusInternalServerError})
	ctx, cancel := context.WithCancel(context.Background())
	f.p.opts.Sleep = func(context.Context, time.Duration) error {
		cancel()
		return context.Canceled
	}

	_, err := f.p.Tunnel(ctx, "x")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Tunnel = %v, want context.Canceled", err)
	}
	if n := len(f.fake.RequestsTo(cftest.RouteGetTunnel)); n != 1 {
		t.Errorf("%d attempts after cancel, want 1", n)
	}
}

// A page after the first is fetched under the caller's context too,
// though cloudflare-go builds it on context.Background.
func TestLaterPagesUseCallerContext(t *testing.T) {
	f := newFixture(t, 1, nil)
	seed(t, f, 3)
	f.fake.Inject(cftest.RouteListTunnels, cftest.Fault{Hang: true, Page: 2})
	f.p.opts.RequestTimeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()

	_, err := f.p.listTunnels(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("listTunnels = %v, want the caller's deadline", err)
	}
}

func TestRetryAfterDate(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	resp := &http.Response{Header: http.Header{}}
	resp.Header.Set("Retry-After", now.Add(5*time.Second).Format(http.TimeFormat))
	if d, ok := retryAfter(resp, now); !ok || d != 5*time.Second {
		t.Errorf("retryAfter(date) = %v, %v; want 5s", d, ok)
	}

	resp.Header.Set("Retry-After", "soon")
	if _, ok := retryAfter(resp, now); ok {
		t.Error("retryAfter(garbage) ok")
	}
}
