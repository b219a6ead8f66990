package ghoidc

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// fakeActionsRuntime plays the runner's token endpoint.
func fakeActionsRuntime(t *testing.T, status int, reply string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch {
		case r.Method != http.MethodGet || r.URL.Path != "/_apis/idtoken":
			http.NotFound(w, r)
		case r.Header.Get("Authorization") != "bearer request-token":
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		case q.Get("api-version") != "2.0" || q.Get("audience") != "dd fleet/a":
			http.Error(w, "bad query "+r.URL.RawQuery, http.StatusBadRequest)
		default:
			w.WriteHeader(status)
			fmt.Fprint(w, reply)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestFetchActionsToken(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		reply   string
		token   string
		want    string
		wantErr string
	}{
		{"ok", 200, `{"count":1,"value":"eyJ.jwt.sig"}`, "request-token", "eyJ.jwt.sig", ""},
		{"wrong request token", 200, `{"value":"x"}`, "other", "", "401"},
		{"server error", 500, `{}`, "request-token", "", "500"},
		{"empty value", 200, `{"value":""}`, "request-token", "", "empty value"},
		{"not json", 200, `<html>`, "request-token", "", "decoding"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := fakeActionsRuntime(t, tt.status, tt.reply)
			got, err := FetchActionsToken(t.Context(), srv.Client(),
				srv.URL+"/_apis/idtoken?api-version=2.0", tt.token, "dd fleet/a")

			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("FetchActionsToken: %v, want an error with %q", err, tt.wantErr)
				}
				return
			}

			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("token = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFetchActionsTokenInputs(t *testing.T) {
	tests := []struct{ name, url, token, aud string }{
		{"no url", "", "t", "a"},
		{"no token", "https://runner.example/x", "", "a"},
		{"no audience", "https://runner.example/x", "t", ""},
		{"plain http", "http://runner.example/x", "t", "a"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := FetchActionsToken(t.Context(), nil, tt.url, tt.token, tt.aud); err == nil {
				t.Error("FetchActionsToken accepted bad input")
			}
		})
	}
}
