package agent

import (
	"context"
	"errors"
	"strconv"

	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// tokenVerifier is the part of [ghoidc.Verifier] the agent uses.
type tokenVerifier interface {
	Verify(ctx context.Context, raw string) (*ghoidc.Claims, error)
}

// OIDCAuth admits GitHub Actions jobs of the fleet owner and of the
// agent's tenant: the token must verify (issuer, audience, expiry,
// signature) and its repository owner or repository must match one of
// the two principals by name and numeric id.
type OIDCAuth struct {
	verifier tokenVerifier
	owner    ghoidc.Principal
	tenant   func() *ghoidc.Principal
}

// NewOIDCAuth returns an authenticator for owner's CI jobs. tenant, when
// not nil, returns the agent's current tenant, whose CI jobs are admitted
// too.
func NewOIDCAuth(v tokenVerifier, owner ghoidc.Principal,
	tenant func() *ghoidc.Principal) (*OIDCAuth, error) {
	if v == nil {
		return nil, errors.New("agent: a token verifier is required")
	}
	if owner.ID <= 0 || owner.Name == "" {
		return nil, errors.New("agent: the fleet owner needs a name and a numeric id")
	}

	if tenant == nil {
		tenant = func() *ghoidc.Principal { return nil }
	}
	return &OIDCAuth{verifier: v, owner: owner, tenant: tenant}, nil
}

// Authenticate implements [Authenticator].
func (a *OIDCAuth) Authenticate(ctx context.Context, bearer string) (Caller, error) {
	c, err := a.verifier.Verify(ctx, bearer)
	if err != nil {
		return Caller{}, ghoidc.HTTPError(err)
	}

	principal := a.owner
	if !a.owner.Matches(c) {
		t := a.tenant()
		if t == nil || !t.Matches(c) {
			return Caller{}, httpapi.Forbidden("the token's repository belongs to neither " +
				"this fleet's owner nor this agent's tenant")
		}
		principal = *t
	}

	return Caller{Principal: principal.String(),
		Subject: c.Subject, Repository: c.Repository, RepositoryOwner: c.RepositoryOwner,
		Ref: c.Ref, SHA: c.SHA, Workflow: c.Workflow, RunID: strconv.FormatInt(c.RunID, 10),
		Actor: c.Actor,
	}, nil
}
