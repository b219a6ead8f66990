package localedge

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func newEdge(t *testing.T) (*Edge, *httptest.Server) {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	e, err := New(Options{Port: srv.Listener.Addr().(*net.TCPAddr).Port})
	if err != nil {
		t.Fatal(err)
	}

	srv.Config.Handler = e
	srv.Start()
	t.Cleanup(srv.Close)
	return e, srv
}

func get(t *testing.T, srv *httptest.Server, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/path?q=1", nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRouting(t *testing.T) {
	e, srv := newEdge(t)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Host+" "+r.URL.RequestURI())
	}))
	defer origin.Close()

	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()

	ctx := context.Background()
	url, err := e.Publish(ctx, "agent-a", "vm-1.localhost", origin.URL)
	if err != nil {
		t.Fatal(err)
	}

	if want := e.URL("vm-1.localhost"); url != want {
		t.Errorf("Publish URL = %q, want %q", url, want)
	}
	if _, err := e.Publish(ctx, "agent-b", "gone.localhost", dead.URL); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		host     string
		wantCode int
		wantBody string
	}{
		{"vm-1.localhost", 200, "vm-1.localhost /path?q=1"},
		{"VM-1.localhost:1234", 200, "VM-1.localhost:1234 /path?q=1"},
		{"other.localhost", 404, `"code":"NOT_FOUND"`},
		{"gone.localhost", 502, `"code":"UPSTREAM"`},
	}
	for _, tt := range tests {
		code, body := get(t, srv, tt.host)
		if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
			t.Errorf("GET host %s = %d %q, want %d containing %q", tt.host, code, body,
				tt.wantCode, tt.wantBody)
		}
	}
}

func TestPublishRules(t *testing.T) {
	e, _ := newEdge(t)
	ctx := context.Background()
	if _, err := e.Publish(ctx, "a", "x.localhost", "http://127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}

	bad := []struct{ owner, host, origin string }{
		{"a", "x.example.com", "http://127.0.0.1:2"}, // outside the domain
		{"a", "y.localhost", "not a url"},
		{"a", "y.localhost", "ftp://127.0.0.1/"},
	}
	for _, b := range bad {
		if _, err := e.Publish(ctx, b.owner, b.host, b.origin); err == nil {
			t.Errorf("Publish(%q, %q, %q) succeeded, want error", b.owner, b.host, b.origin)
		}
	}

	// A new owner takes the name over; the old owner's Unpublish then
	// leaves it alone.
	if _, err := e.Publish(ctx, "b", "x.localhost", "http://127.0.0.1:2"); err != nil {
		t.Fatalf("Publish of a held name: %v", err)
	}

	if _, err := e.Publish(ctx, "a", "z.localhost", "http://127.0.0.1:3"); err != nil {
		t.Fatal(err)
	}
	if err := e.Unpublish(ctx, "a"); err != nil {
		t.Fatal(err)
	}

	if diff := cmp.Diff(map[string]string{"x.localhost": "b"}, e.Routes()); diff != "" {
		t.Errorf("Routes() mismatch (-want +got):\n%s", diff)
	}
}

func TestDialerResolvesLocalhostSubdomains(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer srv.Close()

	port := srv.Listener.Addr().(*net.TCPAddr).Port
	resp, err := HTTPClient().Get("http://deep.name.localhost:" + strconv.Itoa(port) + "/")
	if err != nil {
		t.Fatal(err)
	}

	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("status = %d", resp.StatusCode)
	}

	for host, want := range map[string]bool{"localhost": true, "a.localhost.": true,
		"localhost.com": false, "example.com": false, "notlocalhost": false} {
		if got := IsLocalhost(host); got != want {
			t.Errorf("IsLocalhost(%q) = %v, want %v", host, got, want)
		}
	}
}
