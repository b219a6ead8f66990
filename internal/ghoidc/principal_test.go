package ghoidc

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePrincipal(t *testing.T) {
	tests := []struct {
		kind, name, id string
		want           Principal // zero means an error
	}{
		{"org", "devopsdefender", "67890123", Principal{KindOrg, "devopsdefender", 67890123}},
		{"user", "posix4e", "12345678", Principal{KindUser, "posix4e", 12345678}},
		{"repo", "posix4e/dd-recorder.example", "884121234",
			Principal{KindRepo, "posix4e/dd-recorder.example", 884121234}},
		{"repo", "posix4e", "1", Principal{}},
		{"repo", "a/b/c", "1", Principal{}},
		{"repo", "a/", "1", Principal{}},
		{"user", "posix4e/x", "1", Principal{}},
		{"org", "acme/x", "1", Principal{}},
		{"org", "", "1", Principal{}},
		{"org", "ac me", "1", Principal{}},
		{"repo", "acme/..", "1", Principal{}},
		{"org", "acme", "0", Principal{}},
		{"org", "acme", "-5", Principal{}},
		{"org", "acme", "+5", Principal{}},
		{"org", "acme", "", Principal{}},
		{"org", "acme", "12a", Principal{}},
		{"team", "acme", "1", Principal{}},
		{"Org", "acme", "1", Principal{}},
	}

	for _, tt := range tests {
		t.Run(tt.kind+":"+tt.name+"("+tt.id+")", func(t *testing.T) {
			got, err := ParsePrincipal(tt.kind, tt.name, tt.id)
			if tt.want == (Principal{}) {
				if err == nil {
					t.Fatalf("ParsePrincipal = %v, want an error", got)
				}
				return
			}

			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestPrincipalMatches(t *testing.T) {
	token := &Claims{
		Repository: "posix4e/dd-recorder", RepositoryID: 884121234,
		RepositoryOwner: "posix4e", RepositoryOwnerID: 12345678,
	}

	tests := []struct {
		name string
		p    Principal
		c    *Claims
		want bool
	}{
		{"user", Principal{KindUser, "posix4e", 12345678}, token, true},
		{"org", Principal{KindOrg, "posix4e", 12345678}, token, true},
		{"repo", Principal{KindRepo, "posix4e/dd-recorder", 884121234}, token, true},
		{"name case", Principal{KindUser, "Posix4E", 12345678}, token, true},
		{"repo case", Principal{KindRepo, "POSIX4E/DD-Recorder", 884121234}, token, true},
		{"wrong owner id", Principal{KindOrg, "posix4e", 12345679}, token, false},
		{"wrong owner name", Principal{KindOrg, "devopsdefender", 12345678}, token, false},
		{"wrong repo id", Principal{KindRepo, "posix4e/dd-recorder", 1}, token, false},
		{"other repo same owner", Principal{KindRepo, "posix4e/other", 884121234}, token, false},
		{"repo id as owner", Principal{KindOrg, "posix4e", 884121234}, token, false},
		{"missing owner id", Principal{KindOrg, "posix4e", 12345678},
			&Claims{RepositoryOwner: "posix4e"}, false},
		{"zero id principal", Principal{KindOrg, "posix4e", 0},
			&Claims{RepositoryOwner: "posix4e"}, false},
		{"unknown kind", Principal{"team", "posix4e", 12345678}, token, false},
		{"nil claims", Principal{KindUser, "posix4e", 12345678}, nil, false},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.Matches(tt.c); got != tt.want {
				t.Errorf("%v.Matches = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestPrincipalString(t *testing.T) {
	p := Principal{KindOrg, "acme", 123}
	if got := p.String(); got != "org:acme(123)" {
		t.Errorf("String = %q", got)
	}
}
