package ghoidc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Claims is the claim set of a GitHub Actions OIDC token. The names follow
// GitHub's "Understanding the OIDC token" documentation; the JSON encoding
// (see [Claims.UnmarshalJSON]) is GitHub's wire format.
//
// A zero numeric id or a zero time means the claim was absent.
type Claims struct {
	Issuer    string    // iss
	Subject   string    // sub, e.g. "repo:octo-org/octo-repo:ref:refs/heads/main"
	Audience  []string  // aud: a JSON string or array of strings
	Expiry    time.Time // exp
	IssuedAt  time.Time // iat
	NotBefore time.Time // nbf
	ID        string    // jti

	Repository           string // "owner/repo"
	RepositoryID         int64
	RepositoryOwner      string
	RepositoryOwnerID    int64
	RepositoryVisibility string // "public", "private" or "internal"

	Ref     string // "refs/heads/main"
	RefType string // "branch" or "tag"
	HeadRef string // source branch of a pull_request run
	BaseRef string // target branch of a pull_request run
	SHA     string // commit the run is for, 40 hex digits

	Workflow          string // workflow name
	WorkflowRef       string // "owner/repo/.github/workflows/x.yml@refs/heads/main"
	WorkflowSHA       string
	JobWorkflowRef    string // the reusable workflow the job runs, if any
	JobWorkflowSHA    string
	RunID             int64
	RunNumber         int64
	RunAttempt        int64
	Actor             string
	ActorID           int64
	EventName         string // "push", "pull_request", "workflow_dispatch", …
	Environment       string // deployment environment of the job, if any
	RunnerEnvironment string // "github-hosted" or "self-hosted"
}

// wireClaims is the JSON shape of [Claims]. GitHub sends numeric ids as
// decimal strings; flexID also accepts JSON numbers.
type wireClaims struct {
	Issuer    string       `json:"iss,omitempty"`
	Subject   string       `json:"sub,omitempty"`
	Audience  audience     `json:"aud,omitempty"`
	Expiry    *numericDate `json:"exp,omitempty"`
	IssuedAt  *numericDate `json:"iat,omitempty"`
	NotBefore *numericDate `json:"nbf,omitempty"`
	ID        string       `json:"jti,omitempty"`

	Repository           string `json:"repository,omitempty"`
	RepositoryID         flexID `json:"repository_id,omitempty"`
	RepositoryOwner      string `json:"repository_owner,omitempty"`
	RepositoryOwnerID    flexID `json:"repository_owner_id,omitempty"`
	RepositoryVisibility string `json:"repository_visibility,omitempty"`

	Ref     string `json:"ref,omitempty"`
	RefType string `json:"ref_type,omitempty"`
	HeadRef string `json:"head_ref,omitempty"`
	BaseRef string `json:"base_ref,omitempty"`
	SHA     string `json:"sha,omitempty"`

	Workflow          string `json:"workflow,omitempty"`
	WorkflowRef       string `json:"workflow_ref,omitempty"`
	WorkflowSHA       string `json:"workflow_sha,omitempty"`
	JobWorkflowRef    string `json:"job_workflow_ref,omitempty"`
	JobWorkflowSHA    string `json:"job_workflow_sha,omitempty"`
	RunID             flexID `json:"run_id,omitempty"`
	RunNumber         flexID `json:"run_number,omitempty"`
	RunAttempt        flexID `json:"run_attempt,omitempty"`
	Actor             string `json:"actor,omitempty"`
	ActorID           flexID `json:"actor_id,omitempty"`
	EventName         string `json:"event_name,omitempty"`
	Environment       string `json:"environment,omitempty"`
	RunnerEnvironment string `json:"runner_environment,omitempty"`
}

// claimNames lists the claims [Claims] carries, for the local issuer's
// discovery document.
var claimNames = []string{
	"iss", "sub", "aud", "exp", "iat", "nbf", "jti",
	"repository", "repository_id", "repository_owner", "repository_owner_id",
	"repository_visibility", "ref", "ref_type", "head_ref", "base_ref", "sha",
	"workflow", "workflow_ref", "workflow_sha", "job_workflow_ref", "job_workflow_sha",
	"run_id", "run_number", "run_attempt", "actor", "actor_id", "event_name",
	"environment", "runner_environment",
}

// UnmarshalJSON decodes GitHub's claim JSON. Numeric ids may be JSON
// numbers or decimal strings; a value that is neither (or is negative) is
// an error rather than a silent 0. Times are NumericDate seconds (RFC 7519
// §2); fractions are dropped.
func (c *Claims) UnmarshalJSON(data []byte) error {
	var w wireClaims
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}

	*c = Claims{
		Issuer: w.Issuer, Subject: w.Subject, Audience: []string(w.Audience),
		Expiry: w.Expiry.time(), IssuedAt: w.IssuedAt.time(), NotBefore: w.NotBefore.time(),
		ID: w.ID,

		Repository: w.Repository, RepositoryID: int64(w.RepositoryID),
		RepositoryOwner: w.RepositoryOwner, RepositoryOwnerID: int64(w.RepositoryOwnerID),
		RepositoryVisibility: w.RepositoryVisibility,

		Ref: w.Ref, RefType: w.RefType, HeadRef: w.HeadRef, BaseRef: w.BaseRef, SHA: w.SHA,

		Workflow: w.Workflow, WorkflowRef: w.WorkflowRef, WorkflowSHA: w.WorkflowSHA,
		JobWorkflowRef: w.JobWorkflowRef, JobWorkflowSHA: w.JobWorkflowSHA,
		RunID: int64(w.RunID), RunNumber: int64(w.RunNumber), RunAttempt: int64(w.RunAttempt),
		Actor: w.Actor, ActorID: int64(w.ActorID), EventName: w.EventName,
		Environment: w.Environment, RunnerEnvironment: w.RunnerEnvironment,
	}
	return nil
}

// MarshalJSON encodes c the way GitHub does: ids as decimal strings, times
// as NumericDate seconds, a single audience as a plain string.
func (c Claims) MarshalJSON() ([]byte, error) {
	w := wireClaims{
		Issuer: c.Issuer, Subject: c.Subject, Audience: audience(c.Audience),
		Expiry: dateOf(c.Expiry), IssuedAt: dateOf(c.IssuedAt), NotBefore: dateOf(c.NotBefore),
		ID: c.ID,

		Repository: c.Repository, RepositoryID: flexID(c.RepositoryID),
		RepositoryOwner: c.RepositoryOwner, RepositoryOwnerID: flexID(c.RepositoryOwnerID),
		RepositoryVisibility: c.RepositoryVisibility,

		Ref: c.Ref, RefType: c.RefType, HeadRef: c.HeadRef, BaseRef: c.BaseRef, SHA: c.SHA,

		Workflow: c.Workflow, WorkflowRef: c.WorkflowRef, WorkflowSHA: c.WorkflowSHA,
		JobWorkflowRef: c.JobWorkflowRef, JobWorkflowSHA: c.JobWorkflowSHA,
		RunID: flexID(c.RunID), RunNumber: flexID(c.RunNumber), RunAttempt: flexID(c.RunAttempt),
		Actor: c.Actor, ActorID: flexID(c.ActorID), EventName: c.EventName,
		Environment: c.Environment, RunnerEnvironment: c.RunnerEnvironment,
	}
	return json.Marshal(w)
}

// decodeClaims parses a token payload.
func decodeClaims(payload []byte) (*Claims, error) {
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// flexID is a non-negative integer claim sent as a JSON number or as a
// decimal string ("repository_id": "884121234").
type flexID int64

func (f *flexID) UnmarshalJSON(data []byte) error {
	if bytes.Equal(data, []byte("null")) {
		*f = 0
		return nil
	}

	s := string(data)
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
	}

	// ParseInt refuses fractions and exponents, so "1.5" and 1e3 are
	// errors instead of being rounded into some other id.
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("invalid numeric id %.40q", s)
	}
	*f = flexID(n)
	return nil
}

func (f flexID) MarshalJSON() ([]byte, error) {
	return json.Marshal(strconv.FormatInt(int64(f), 10))
}

// maxDate bounds NumericDate values (the end of year 9999) so conversion
// to time.Time cannot overflow.
const maxDate = 253402300799

// numericDate is an RFC 7519 NumericDate: seconds since the epoch, a JSON
// number that may carry a fraction.
type numericDate int64

func (d *numericDate) UnmarshalJSON(data []byte) error {
	var n json.Number
	// json.Number would also take a quoted number; RFC 7519 wants a number.
	if len(data) > 0 && data[0] == '"' {
		return errors.New("invalid NumericDate")
	}
	if err := json.Unmarshal(data, &n); err != nil {
		return errors.New("invalid NumericDate")
	}

	if i, err := n.Int64(); err == nil && i >= -maxDate && i <= maxDate {
		*d = numericDate(i)
		return nil
	}

	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.Abs(f) > maxDate {
		return fmt.Errorf("invalid NumericDate %.40q", n.String())
	}
	*d = numericDate(math.Trunc(f))
	return nil
}

func (d *numericDate) time() time.Time {
	if d == nil {
		return time.Time{}
	}
	return time.Unix(int64(*d), 0).UTC()
}

func dateOf(t time.Time) *numericDate {
	if t.IsZero() {
		return nil
	}
	d := numericDate(t.Unix())
	return &d
}

// audience is the "aud" claim: one string or an array of strings
// (RFC 7519 §4.1.3).
type audience []string

func (a *audience) UnmarshalJSON(data []byte) error {
	if bytes.Equal(data, []byte("null")) {
		*a = nil
		return nil
	}

	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		*a = audience{one}
		return nil
	}

	var many []string
	if err := json.Unmarshal(data, &many); err != nil {
		return errors.New("aud must be a string or an array of strings")
	}
	*a = many
	return nil
}

func (a audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}
