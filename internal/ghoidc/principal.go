package ghoidc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Kind is the kind of GitHub account a [Principal] names.
type Kind string

// The kinds of principal. A user and an org match the same claims: GitHub
// puts either in repository_owner.
const (
	KindUser Kind = "user"
	KindOrg  Kind = "org"
	KindRepo Kind = "repo"
)

// maxNamePart bounds each "/"-separated part of a principal name; GitHub
// logins are at most 39 characters and repository names at most 100.
const maxNamePart = 100

// Principal is a GitHub account or repository allowed to act, named by
// login (or "owner/repo") and by numeric id. The id is what makes it safe:
// a login can be deleted and registered again by someone else, the id
// cannot (auth.md §2.3).
type Principal struct {
	Kind Kind
	Name string
	ID   int64
}

// ParsePrincipal builds a principal from its configuration strings, such
// as DD_OWNER_KIND, DD_OWNER and DD_OWNER_ID. A repo name is "owner/repo";
// user and org names have no "/". The id must be a positive decimal.
func ParsePrincipal(kind, name, id string) (Principal, error) {
	k := Kind(kind)
	if k != KindUser && k != KindOrg && k != KindRepo {
		return Principal{}, fmt.Errorf("ghoidc: principal kind %q is not user, org or repo", kind)
	}

	if err := checkPrincipalName(k, name); err != nil {
		return Principal{}, fmt.Errorf("ghoidc: %s principal name %q: %w", k, name, err)
	}

	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil || n <= 0 || strings.TrimLeft(id, "0123456789") != "" {
		return Principal{}, fmt.Errorf("ghoidc: principal id %q is not a positive integer", id)
	}
	return Principal{Kind: k, Name: name, ID: n}, nil
}

func checkPrincipalName(k Kind, name string) error {
	parts := strings.Split(name, "/")
	switch {
	case k == KindRepo && len(parts) != 2:
		return errors.New("must be owner/repo")
	case k != KindRepo && len(parts) != 1:
		return errors.New("must not contain /")
	}

	for _, p := range parts {
		if err := checkNamePart(p); err != nil {
			return err
		}
	}
	return nil
}

// checkNamePart allows the characters GitHub allows in logins and
// repository names: letters, digits, "-", "_" and ".".
func checkNamePart(p string) error {
	if p == "" || len(p) > maxNamePart {
		return fmt.Errorf("parts must have 1 to %d characters", maxNamePart)
	}

	for _, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("character %q not allowed", r)
		}
	}

	if p == "." || p == ".." {
		return errors.New("invalid name")
	}
	return nil
}

// Matches reports whether the verified claims c come from p: for a user or
// org, a repository owned by p (repository_owner and
// repository_owner_id); for a repo, that repository (repository and
// repository_id). Names compare case-insensitively, as GitHub logins do;
// ids must be equal. Nothing about the ref, workflow or environment is
// checked here.
func (p Principal) Matches(c *Claims) bool {
	if c == nil || p.ID <= 0 || p.Name == "" {
		return false
	}

	switch p.Kind {
	case KindUser, KindOrg:
		return c.RepositoryOwnerID == p.ID && strings.EqualFold(c.RepositoryOwner, p.Name)
	case KindRepo:
		return c.RepositoryID == p.ID && strings.EqualFold(c.Repository, p.Name)
	}
	return false
}

// String returns p as "kind:name(id)", e.g. "org:acme(123)".
func (p Principal) String() string {
	return fmt.Sprintf("%s:%s(%d)", p.Kind, p.Name, p.ID)
}
