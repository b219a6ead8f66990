package ghoidc

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/big"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

const (
	defaultOwner    = "dd-dev"
	defaultRepoName = "app"
	defaultRef      = "refs/heads/main"
	defaultWorkflow = "deploy"
	defaultEvent    = "push"
	// defaultLifetime matches GitHub's tokens, valid for five minutes.
	defaultLifetime = 5 * time.Minute
	// maxLifetime bounds expires_in_secs either way.
	maxLifetime = 24 * time.Hour
	// maxText bounds free-text fields of a mint request.
	maxText = 255
)

// MintRequest describes the token [Issuer.Mint] signs. Every field is
// optional; the defaults make a push to main of "dd-dev/app".
type MintRequest struct {
	// Repository is "owner/repo". Empty means RepositoryOwner + "/app".
	Repository string `json:"repository,omitempty"`
	// RepositoryID zero means an id derived from Repository, stable across
	// calls.
	RepositoryID int64 `json:"repository_id,omitempty"`
	// RepositoryOwner empty means the owner part of Repository, or
	// "dd-dev". If both are set they must agree.
	RepositoryOwner string `json:"repository_owner,omitempty"`
	// RepositoryOwnerID zero means an id derived from the owner's login.
	RepositoryOwnerID int64 `json:"repository_owner_id,omitempty"`
	// Ref is a full ref such as "refs/heads/main" (the default) or
	// "refs/tags/v1".
	Ref string `json:"ref,omitempty"`
	// SHA is 40 hex digits; empty means a random commit.
	SHA string `json:"sha,omitempty"`
	// Actor empty means the owner; ActorID zero an id derived from Actor.
	Actor   string `json:"actor,omitempty"`
	ActorID int64  `json:"actor_id,omitempty"`
	// Workflow is the workflow name, "deploy" by default.
	Workflow string `json:"workflow,omitempty"`
	// EventName is "push" by default.
	EventName string `json:"event_name,omitempty"`
	// Environment is the job's deployment environment, none by default.
	// It changes "sub" as GitHub does.
	Environment string `json:"environment,omitempty"`
	// Audience empty means the issuer's configured audience.
	Audience string `json:"audience,omitempty"`
	// ExpiresInSecs is the lifetime from now; nil means 300. Zero or
	// negative values give a token that is already expired (for tests).
	ExpiresInSecs *int64 `json:"expires_in_secs,omitempty"`
}

// claimsFor validates req, fills the defaults and returns the full GitHub
// claim set. Its errors describe bad input and are safe to show.
func (i *Issuer) claimsFor(req MintRequest) (*Claims, error) {
	if err := req.fillNames(); err != nil {
		return nil, err
	}
	if err := req.fillRun(); err != nil {
		return nil, err
	}
	lifetime, err := req.lifetime()
	if err != nil {
		return nil, err
	}

	now := i.now().Truncate(time.Second)
	c := &Claims{
		Issuer: i.url, Subject: req.subject(), Audience: []string{cmp.Or(req.Audience, i.audience)},
		Expiry: now.Add(lifetime), IssuedAt: now, NotBefore: now, ID: randomUUID(),

		Repository: req.Repository, RepositoryID: req.RepositoryID,
		RepositoryOwner: req.RepositoryOwner, RepositoryOwnerID: req.RepositoryOwnerID,
		RepositoryVisibility: "private",

		Ref: req.Ref, RefType: refType(req.Ref), SHA: req.SHA,

		Workflow: req.Workflow, WorkflowRef: req.workflowRef(), WorkflowSHA: req.SHA,
		JobWorkflowRef: req.workflowRef(), JobWorkflowSHA: req.SHA,
		RunID: randomRunID(), RunNumber: 1, RunAttempt: 1,
		Actor: req.Actor, ActorID: req.ActorID, EventName: req.EventName,
		Environment: req.Environment, RunnerEnvironment: "github-hosted",
	}
	return c, nil
}

// fillNames checks and defaults the repository, owner and actor.
func (r *MintRequest) fillNames() error {
	if r.Repository != "" {
		if err := checkPrincipalName(KindRepo, r.Repository); err != nil {
			return fmt.Errorf("repository %q: %w", r.Repository, err)
		}
		owner, _, _ := strings.Cut(r.Repository, "/")
		if r.RepositoryOwner != "" && !strings.EqualFold(owner, r.RepositoryOwner) {
			return errors.New("repository is not owned by repository_owner")
		}
		r.RepositoryOwner = owner
	}

	r.RepositoryOwner = cmp.Or(r.RepositoryOwner, defaultOwner)
	r.Repository = cmp.Or(r.Repository, r.RepositoryOwner+"/"+defaultRepoName)
	r.Actor = cmp.Or(r.Actor, r.RepositoryOwner)

	for _, name := range []string{r.RepositoryOwner, r.Actor} {
		if err := checkPrincipalName(KindUser, name); err != nil {
			return fmt.Errorf("login %q: %w", name, err)
		}
	}
	if r.RepositoryID < 0 || r.RepositoryOwnerID < 0 || r.ActorID < 0 {
		return errors.New("ids must not be negative")
	}

	r.RepositoryID = idOr(r.RepositoryID, r.Repository)
	r.RepositoryOwnerID = idOr(r.RepositoryOwnerID, r.RepositoryOwner)
	r.ActorID = idOr(r.ActorID, r.Actor)
	return nil
}

// fillRun checks and defaults the ref, commit, workflow, event, environment
// and audience.
func (r *MintRequest) fillRun() error {
	r.Ref = cmp.Or(r.Ref, defaultRef)
	if !strings.HasPrefix(r.Ref, "refs/") || !isText(r.Ref) || strings.ContainsRune(r.Ref, ' ') {
		return errors.New(`ref must be a full ref such as "refs/heads/main"`)
	}

	if r.SHA == "" {
		r.SHA = randomHex(20)
	}
	r.SHA = strings.ToLower(r.SHA)
	if _, err := hex.DecodeString(r.SHA); err != nil || len(r.SHA) != 40 {
		return errors.New("sha must be 40 hex digits")
	}

	r.Workflow = cmp.Or(r.Workflow, defaultWorkflow)
	r.EventName = cmp.Or(r.EventName, defaultEvent)

	fields := []struct{ name, value string }{
		{"workflow", r.Workflow}, {"event_name", r.EventName},
		{"environment", r.Environment}, {"audience", r.Audience},
	}
	for _, f := range fields {
		if !isText(f.value) {
			return fmt.Errorf("%s must be printable text of at most %d bytes", f.name, maxText)
		}
	}
	return nil
}

func (r *MintRequest) lifetime() (time.Duration, error) {
	if r.ExpiresInSecs == nil {
		return defaultLifetime, nil
	}

	if *r.ExpiresInSecs > int64(maxLifetime/time.Second) ||
		*r.ExpiresInSecs < -int64(maxLifetime/time.Second) {
		return 0, fmt.Errorf("expires_in_secs must be within ±%d", int64(maxLifetime/time.Second))
	}
	return time.Duration(*r.ExpiresInSecs) * time.Second, nil
}

// subject builds "sub" the way GitHub does: the environment wins, then a
// pull request, then the ref.
func (r *MintRequest) subject() string {
	switch {
	case r.Environment != "":
		return "repo:" + r.Repository + ":environment:" + r.Environment
	case r.EventName == "pull_request":
		return "repo:" + r.Repository + ":pull_request"
	}
	return "repo:" + r.Repository + ":ref:" + r.Ref
}

func (r *MintRequest) workflowRef() string {
	file := strings.Map(func(c rune) rune {
		if c < 128 && (unicode.IsLetter(c) || unicode.IsDigit(c)) || c == '-' || c == '_' {
			return unicode.ToLower(c)
		}
		return '-'
	}, r.Workflow)
	return r.Repository + "/.github/workflows/" + file + ".yml@" + r.Ref
}

func refType(ref string) string {
	switch {
	case strings.HasPrefix(ref, "refs/heads/"):
		return "branch"
	case strings.HasPrefix(ref, "refs/tags/"):
		return "tag"
	}
	return ""
}

func isText(s string) bool {
	if len(s) > maxText {
		return false
	}

	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// idOr returns id, or an id in [1, 2^31) derived from name (FNV-1a of
// its lower-case form, as logins are case-insensitive).
func idOr(id int64, name string) int64 {
	if id != 0 {
		return id
	}

	h := fnv.New32a()
	h.Write([]byte(strings.ToLower(name)))
	return int64(h.Sum32()&0x7fffffff) | 1
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// randomUUID returns a version 4 UUID, the shape of GitHub's "jti".
func randomUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// randomRunID returns a ten-digit run id like GitHub's.
func randomRunID() int64 {
	n, _ := rand.Int(rand.Reader, big.NewInt(9_000_000_000))
	return 1_000_000_000 + n.Int64()
}

// MintFromIssuer asks the local issuer at issuerURL for a token, as the
// dev CLI does. A nil client means one with a 10 s timeout.
func MintFromIssuer(ctx context.Context, client *http.Client, issuerURL, mintSecret string,
	req MintRequest) (string, error) {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}

	body, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("ghoidc: encoding mint request: %w", err)
	}

	endpoint := strings.TrimSuffix(issuerURL, "/") + "/mint"
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("ghoidc: mint request: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Authorization", "Bearer "+mintSecret)

	var resp mintResponse
	if err := doJSON(client, hreq, &resp); err != nil {
		return "", fmt.Errorf("ghoidc: minting token: %w", err)
	}
	if resp.Token == "" {
		return "", errors.New("ghoidc: minting token: empty token in reply")
	}
	return resp.Token, nil
}

// maxReply bounds the replies doJSON reads; tokens are a few KiB.
const maxReply = 1 << 20

// doJSON sends req and decodes a 200 reply into v. Other statuses become
// errors carrying the reply's {code, message} when it has one.
func doJSON(client *http.Client, req *http.Request, v any) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return fmt.Errorf("reading reply: %w", err)
	}

	if resp.StatusCode != http.StatusOK {
		var eb httpapi.Body
		if json.Unmarshal(data, &eb) == nil && eb.Code != "" {
			return fmt.Errorf("HTTP %d: %s: %s", resp.StatusCode, eb.Code, eb.Message)
		}
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}

	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decoding reply: %w", err)
	}
	return nil
}
