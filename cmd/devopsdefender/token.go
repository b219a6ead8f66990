package main

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/devfleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
)

const devTokenHelp = `usage: devopsdefender dev token [flags]

Prints one GitHub Actions OIDC token minted by the local issuer of the dev
fleet in --state-dir, so the fleet's rules can be tried by hand:

  TOKEN=$(devopsdefender dev token)
  curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
    --data-binary @examples/hello.json http://agent-1.localhost:8080/deploy

By default the token is the fleet owner's, for the fleet's audience, valid
for five minutes. --owner or --repository give another principal's token
(the agent answers 403), a negative --expires-in an expired one (401).
The claims the flags leave out are GitHub-shaped defaults: a push to
refs/heads/main of a random commit.

Flags:
`

// devTokenFlags are the claims dev token lets a person choose.
type devTokenFlags struct {
	repository   string
	owner        string
	ownerID      int64
	repositoryID int64
	ref, sha     string
	audience     string
	expiresIn    time.Duration
}

// runDevToken implements "dev token"; runDev hands it the arguments that
// follow "token".
func runDevToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "./.devopsdefender/dev", "state directory of the dev fleet")

	var f devTokenFlags
	fs.StringVar(&f.repository, "repository", "", `"owner/repo" claim (default OWNER/app)`)
	fs.StringVar(&f.owner, "owner", "", "repository_owner claim (default the fleet owner)")
	fs.Int64Var(&f.ownerID, "owner-id", 0,
		"repository_owner_id claim (default the fleet owner's id, or one derived from --owner)")
	fs.Int64Var(&f.repositoryID, "repository-id", 0,
		"repository_id claim (default one derived from the repository)")
	fs.StringVar(&f.ref, "ref", "", `ref claim (default "refs/heads/main")`)
	fs.StringVar(&f.sha, "sha", "", "sha claim, 40 hex digits (default random)")
	fs.StringVar(&f.audience, "audience", "", "aud claim (default the fleet's audience)")
	fs.DurationVar(&f.expiresIn, "expires-in", 5*time.Minute,
		"lifetime from now; negative gives an expired token (within ±24h)")

	fs.Usage = func() { fmt.Fprint(stderr, devTokenHelp); fs.PrintDefaults() }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments: %v", fs.Args())
	}

	st, err := loadRunningFleet(*stateDir)
	if err != nil {
		return err
	}
	req, err := f.mintRequest(st.Owner)
	if err != nil {
		return err
	}

	tok, err := ghoidc.MintFromIssuer(ctx, localedge.HTTPClient(), st.OIDCIssuer,
		st.OIDCMintSecret, req)
	if err != nil {
		return fmt.Errorf("minting a dev token: %w", err)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// mintRequest turns the flags into a mint request. The fleet owner's
// numeric id is kept only while the token names the owner, so that
// another login gets an id of its own, as on GitHub.
func (f *devTokenFlags) mintRequest(owner devfleet.Owner) (ghoidc.MintRequest, error) {
	if f.expiresIn%time.Second != 0 {
		return ghoidc.MintRequest{}, usagef("--expires-in must be whole seconds")
	}

	secs := int64(f.expiresIn / time.Second)
	req := ghoidc.MintRequest{
		Repository: f.repository, RepositoryID: f.repositoryID,
		RepositoryOwner: f.owner, RepositoryOwnerID: f.ownerID,
		Ref: f.ref, SHA: f.sha, Audience: f.audience, ExpiresInSecs: &secs,
	}

	// a repository owns the fleet: the token names it unless told otherwise
	if owner.Kind == string(ghoidc.KindRepo) {
		if req.Repository == "" && req.RepositoryOwner == "" {
			req.Repository = owner.Name
		}
		if strings.EqualFold(req.Repository, owner.Name) && req.RepositoryID == 0 {
			req.RepositoryID = owner.ID
		}
		return req, nil
	}
	// a user or organisation owns the fleet
	if req.Repository == "" && req.RepositoryOwner == "" {
		req.RepositoryOwner = owner.Name
	}

	repoOwner, _, _ := strings.Cut(req.Repository, "/")
	if name := cmp.Or(req.RepositoryOwner, repoOwner); strings.EqualFold(name, owner.Name) &&
		req.RepositoryOwnerID == 0 {
		req.RepositoryOwnerID = owner.ID
	}
	return req, nil
}

// refreshBefore is how long before its expiry a token is replaced.
// GitHub's tokens live five minutes; a minute leaves room for a slow
// request and for clock skew between runner and agent.
const refreshBefore = 60 * time.Second

// tokenSource caches a bearer token and fetches a new one when the cached
// one is within refreshBefore of its expiry. It implements
// agentapi.TokenSource and is safe for concurrent use.
type tokenSource struct {
	fetch func(ctx context.Context) (string, error)
	now   func() time.Time

	mu  sync.Mutex // guards the fields below
	tok string
	exp time.Time // zero: unknown, so the token is not reused
}

// Token returns the cached token or a fresh one.
func (s *tokenSource) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok != "" && s.now().Add(refreshBefore).Before(s.exp) {
		return s.tok, nil
	}

	tok, err := s.fetch(ctx)
	if err != nil {
		return "", err
	}
	s.tok, s.exp = tok, tokenExpiry(tok)
	return tok, nil
}

// tokenExpiry reads "exp" from a JWT's payload, without verifying the
// token: only its expiry is wanted here, and the agent does the checking.
// It returns the zero time when the payload has no readable "exp".
func tokenExpiry(jwt string) time.Time {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}

	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return time.Time{}
	}

	secs, err := claims.Exp.Float64()
	if err != nil || secs <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(secs), 0)
}
