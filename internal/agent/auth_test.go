package agent

import (
	"context"
	"errors"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// fakeVerifier maps tokens to claims; any other token is invalid.
type fakeVerifier map[string]*ghoidc.Claims

func (f fakeVerifier) Verify(_ context.Context, raw string) (*ghoidc.Claims, error) {
	if c, ok := f[raw]; ok {
		return c, nil
	}
	return nil, &ghoidc.TokenError{Reason: ghoidc.ReasonSignature}
}

func TestOIDCAuth(t *testing.T) {
	owner := ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "acme", ID: 1}
	tenant := &ghoidc.Principal{Kind: ghoidc.KindRepo, Name: "globex/app", ID: 9}
	v := fakeVerifier{
		"owner":       {RepositoryOwner: "acme", RepositoryOwnerID: 1, Repository: "acme/x"},
		"tenant":      {RepositoryOwner: "globex", RepositoryOwnerID: 5, Repository: "globex/app", RepositoryID: 9},
		"renamed":     {RepositoryOwner: "acme", RepositoryOwnerID: 2, Repository: "acme/x"},
		"tenant-fork": {RepositoryOwner: "globex", RepositoryOwnerID: 5, Repository: "globex/app", RepositoryID: 10},
	}

	var current *ghoidc.Principal
	auth, err := NewOIDCAuth(v, owner, func() *ghoidc.Principal { return current })
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		token         string
		tenant        *ghoidc.Principal
		wantStatus    int // 0: admitted
		wantPrincipal string
	}{
		{"owner", nil, 0, "org:acme(1)"},
		{"owner", tenant, 0, "org:acme(1)"},
		{"tenant", tenant, 0, "repo:globex/app(9)"},
		{"tenant", nil, 403, ""},
		{"renamed", nil, 403, ""},
		{"tenant-fork", tenant, 403, ""},
		{"garbage", nil, 401, ""},
	}

	for _, tt := range tests {
		current = tt.tenant
		c, err := auth.Authenticate(context.Background(), tt.token)
		var he *httpapi.Error
		switch {
		case tt.wantStatus == 0 && (err != nil || c.Principal != tt.wantPrincipal):
			t.Errorf("%s (tenant %v) = %+v, %v; want admitted as %s", tt.token, tt.tenant, c,
				err, tt.wantPrincipal)
		case tt.wantStatus != 0 && (!errors.As(err, &he) || he.Status != tt.wantStatus):
			t.Errorf("%s (tenant %v) = %v, want status %d", tt.token, tt.tenant, err, tt.wantStatus)
		}
	}
}
