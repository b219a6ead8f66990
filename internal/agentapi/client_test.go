package agentapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// drop is a scripted reply that closes the connection without answering.
const drop = 0

// fakeAgent answers POST /deploy with the scripted statuses in turn (200
// once the script runs out) and records every request's headers.
type fakeAgent struct {
	mu      sync.Mutex
	script  []int
	keys    []string
	bearers []string
}

func (f *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.keys = append(f.keys, r.Header.Get(IdempotencyHeader))
	f.bearers = append(f.bearers, r.Header.Get("Authorization"))
	status := http.StatusOK
	if len(f.script) > 0 {
		status, f.script = f.script[0], f.script[1:]
	}
	n := len(f.keys)
	f.mu.Unlock()

	switch status {
	case drop:
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	case http.StatusOK:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"dep-%d","app_name":"hello","status":"deploying"}`, n)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"code":"X","message":"scripted %d"}`, status)
	}
}

func TestDeployRetries(t *testing.T) {
	tests := []struct {
		name       string
		script     []int
		wantTries  int
		wantID     string
		wantStatus int // of the final APIError; 0 means success
	}{
		{"success", nil, 1, "dep-1", 0},
		{"503 then success", []int{503}, 2, "dep-2", 0},
		{"502, 503, success", []int{502, 503}, 3, "dep-3", 0},
		{"dropped connection then success", []int{drop}, 2, "dep-2", 0},
		{"unavailable three times", []int{503, 503, 503, 503}, 3, "", 503},
		{"internal error is final", []int{500}, 1, "", 500},
		{"bad request is final", []int{400}, 1, "", 400},
		{"conflict is final", []int{409}, 1, "", 409},
		{"unauthorized is final", []int{401}, 1, "", 401},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fa := &fakeAgent{script: tt.script}
			srv := httptest.NewServer(fa)
			defer srv.Close()
			c := &Client{BaseURL: srv.URL, Token: "tok", RetryDelay: time.Millisecond}

			res, err := c.DeployWithKey(context.Background(), []byte(`{}`), "key-12345678")
			var ae *APIError
			switch {
			case tt.wantStatus == 0 && err != nil:
				t.Fatalf("deploy: %v", err)
			case tt.wantStatus != 0 && (!errors.As(err, &ae) || ae.Status != tt.wantStatus):
				t.Fatalf("deploy error = %v, want an APIError %d", err, tt.wantStatus)
			}

			if res.ID != tt.wantID {
				t.Errorf("id = %q, want %q", res.ID, tt.wantID)
			}

			want := make([]string, tt.wantTries)
			for i := range want {
				want[i] = "key-12345678"
			}
			if diff := cmp.Diff(want, fa.keys); diff != "" {
				t.Errorf("Idempotency-Key per try (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeployStopsRetryingWhenCancelled(t *testing.T) {
	fa := &fakeAgent{script: []int{503, 503, 503}}
	srv := httptest.NewServer(fa)
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := &Client{BaseURL: srv.URL, RetryDelay: time.Hour}
	if _, err := c.Deploy(ctx, []byte(`{}`)); err == nil {
		t.Fatal("deploy succeeded with a cancelled context")
	}

	if len(fa.keys) > 1 {
		t.Errorf("%d tries after cancellation, want at most 1", len(fa.keys))
	}
}

var uuidRE = regexp.MustCompile(
	`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestDeploySendsFreshKey(t *testing.T) {
	fa := &fakeAgent{}
	srv := httptest.NewServer(fa)
	defer srv.Close()
	c := &Client{BaseURL: srv.URL}

	for range 2 {
		if _, err := c.Deploy(context.Background(), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}

	for _, k := range fa.keys {
		if !uuidRE.MatchString(k) {
			t.Errorf("key %q is not a version 4 UUID", k)
		}
	}
	if fa.keys[0] == fa.keys[1] {
		t.Errorf("two deploys shared the key %q", fa.keys[0])
	}
}

// countingTokens hands out "t1", "t2", … or fails.
type countingTokens struct {
	n   int
	err error
}

func (s *countingTokens) Token(context.Context) (string, error) {
	if s.err != nil {
		return "", s.err
	}
	s.n++
	return fmt.Sprintf("t%d", s.n), nil
}

func TestTokenSourceAskedPerRequest(t *testing.T) {
	fa := &fakeAgent{script: []int{503}}
	srv := httptest.NewServer(fa)
	defer srv.Close()
	c := &Client{BaseURL: srv.URL, Token: "static", Tokens: &countingTokens{},
		RetryDelay: time.Millisecond}
	if _, err := c.Deploy(context.Background(), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	if diff := cmp.Diff([]string{"Bearer t1", "Bearer t2"}, fa.bearers); diff != "" {
		t.Errorf("bearers (-want +got):\n%s", diff)
	}

	errBroken := errors.New("broken")
	c.Tokens = &countingTokens{err: errBroken}
	if _, err := c.Deploy(context.Background(), []byte(`{}`)); !errors.Is(err, errBroken) {
		t.Errorf("deploy with a failing token source = %v, want %v", err, errBroken)
	}

	if len(fa.bearers) != 2 {
		t.Errorf("a request was sent without a token: %d requests", len(fa.bearers))
	}
}
