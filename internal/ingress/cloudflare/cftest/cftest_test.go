package cftest

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// get sends a raw request to the fake and decodes the envelope.
func get(t *testing.T, s *Server, method, path, token string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL()+path, strings.NewReader(""))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	b, _ := io.ReadAll(resp.Body)
	var env map[string]any
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatalf("%s %s: body is not JSON: %s", method, path, b)
	}
	return resp.StatusCode, resp.Header, env
}

func TestEnvelopeAndPaging(t *testing.T) {
	s := New(t, Options{Token: "tok", MaxPerPage: 2})
	for i := range 5 {
		s.AddRecord(string(rune('a'+i))+".d.example", "x.cfargotunnel.com", time.Now())
	}

	code, hdr, env := get(t, s, "GET", "zones/test-zone/dns_records?page=3&per_page=50", "tok")
	if code != 200 || env["success"] != true || hdr.Get("Cf-Ray") == "" {
		t.Fatalf("list = %d %v", code, env)
	}

	wantInfo := map[string]any{"page": 3.0, "per_page": 2.0, "count": 1.0, "total_count": 5.0,
		"total_pages": 3.0}
	if diff := cmp.Diff(wantInfo, env["result_info"]); diff != "" {
		t.Errorf("result_info (-want +got):\n%s", diff)
	}

	for _, k := range []string{"errors", "messages"} {
		if l, ok := env[k].([]any); !ok || len(l) != 0 {
			t.Errorf("%s = %v, want []", k, env[k])
		}
	}

	_, _, env = get(t, s, "GET", "zones/test-zone/dns_records?page=9", "tok")
	if r, ok := env["result"].([]any); !ok || len(r) != 0 {
		t.Errorf("page past the end: result %v, want []", env["result"])
	}
}

func TestErrorEnvelopes(t *testing.T) {
	s := New(t, Options{Token: "tok"})
	tests := []struct {
		path, token string
		status      int
		code        float64
	}{
		{"zones/test-zone/dns_records", "wrong", 403, CodeAuth},
		{"zones/other-zone/dns_records", "tok", 404, CodeNoRoute},
		{"accounts/test-account/cfd_tunnel/nope", "tok", 404, CodeTunnelNotFound},
		{"nowhere", "tok", 404, CodeNoRoute},
	}
	for _, tt := range tests {
		code, _, env := get(t, s, "GET", tt.path, tt.token)
		errs, _ := env["errors"].([]any)
		if code != tt.status || env["success"] != false || len(errs) != 1 ||
			errs[0].(map[string]any)["code"] != tt.code || env["result"] != nil {
			t.Errorf("GET %s = %d %v, want %d with code %v", tt.path, code, env, tt.status,
				tt.code)
		}
	}
}

func TestFaultsAreCountedAndScoped(t *testing.T) {
	s := New(t, Options{})
	s.Inject(RouteGetTunnel, Fault{Status: 429, RetryAfter: "7", Times: 1})
	code, hdr, env := get(t, s, "GET", "accounts/test-account/cfd_tunnel/x", "")

	errs := env["errors"].([]any)
	if code != 429 || hdr.Get("Retry-After") != "7" ||
		errs[0].(map[string]any)["code"] != float64(CodeRateLimited) {
		t.Errorf("first request = %d %v %v", code, hdr, env)
	}

	if code, _, _ := get(t, s, "GET", "accounts/test-account/cfd_tunnel/x", ""); code != 404 {
		t.Errorf("second request = %d, want the normal 404", code)
	}
	if got := len(s.RequestsTo(RouteGetTunnel)); got != 2 {
		t.Errorf("logged %d requests, want 2", got)
	}

	defer func() {
		if recover() == nil {
			t.Error("Inject on an unknown route did not panic")
		}
	}()

	s.Inject("GET /nowhere", Fault{})
}

func TestSoftDeleteAndFilters(t *testing.T) {
	s := New(t, Options{})
	live := s.AddTunnel("dd-x-agent-1", time.Now())
	gone := s.AddTunnel("dd-x-agent-2", time.Now())
	s.Connect(gone.ID)

	code, _, _ := get(t, s, "DELETE", "accounts/test-account/cfd_tunnel/"+gone.ID, "")
	if code != 400 {
		t.Errorf("delete with a connector = %d, want 400", code)
	}
	get(t, s, "DELETE", "accounts/test-account/cfd_tunnel/"+gone.ID+"/connections", "")
	if code, _, _ := get(t, s, "DELETE", "accounts/test-account/cfd_tunnel/"+gone.ID, ""); code != 200 {
		t.Errorf("delete after cleanup = %d", code)
	}

	names := func(q string) []string {
		_, _, env := get(t, s, "GET", "accounts/test-account/cfd_tunnel?"+q, "")
		var out []string
		for _, r := range env["result"].([]any) {
			out = append(out, r.(map[string]any)["name"].(string))
		}
		return out
	}

	for q, want := range map[string][]string{
		"is_deleted=false": {live.Name}, "is_deleted=true": {gone.Name},
		"": {live.Name, gone.Name}, "name=dd-x-agent-2": {gone.Name},
	} {
		if diff := cmp.Diff(want, names(q)); diff != "" {
			t.Errorf("list ?%s (-want +got):\n%s", q, diff)
		}
	}

	_, _, env := get(t, s, "GET", "accounts/test-account/cfd_tunnel/"+gone.ID, "")
	if env["result"].(map[string]any)["deleted_at"] == nil {
		t.Error("a soft-deleted tunnel reads without deleted_at")
	}
}
