package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/devfleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
	"github.com/google/go-cmp/cmp"
)

// startDevFleet runs a one-agent dev fleet for the test.
func startDevFleet(t *testing.T) (context.Context, devfleet.State, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	f, err := devfleet.Start(ctx, devfleet.Options{StateDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		cancel()
		t.Fatal(err)
	}

	t.Cleanup(func() {
		cancel()
		if err := f.Wait(); err != nil {
			t.Error(err)
		}
	})
	return ctx, f.State(), dir
}

func readExample(t *testing.T, name string) []byte {
	t.Helper()
	spec, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// TestDevToken mints tokens with dev token and presents them to a dev
// fleet's agent, which must judge them by the fleet's rules.
func TestDevToken(t *testing.T) {
	ctx, st, dir := startDevFleet(t)
	spec := readExample(t, "hello.json")

	tests := []struct {
		name       string
		args       []string
		wantStatus int // of POST /deploy with the token
	}{
		{"fleet owner", nil, http.StatusOK},
		{"fleet owner's repository", []string{"--repository", st.Owner.Name + "/site",
			"--ref", "refs/tags/v1", "--sha", strings.Repeat("ab", 20)}, http.StatusOK},
		{"expired", []string{"--expires-in", "-1m"}, http.StatusUnauthorized},
		{"another audience", []string{"--audience", "someone-else"}, http.StatusUnauthorized},
		{"another owner", []string{"--owner", "intruder"}, http.StatusForbidden},
		{"owner's name, another id", []string{"--owner-id", "4242"}, http.StatusForbidden},
		{"another owner's repository", []string{"--repository", "intruder/app"},
			http.StatusForbidden},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			args := append([]string{"--state-dir", dir}, tt.args...)
			if err := runDevToken(ctx, args, &out, &errOut); err != nil {
				t.Fatalf("dev token: %v\n%s", err, errOut.String())
			}
			tok := strings.TrimSpace(out.String())
			c := &agentapi.Client{BaseURL: st.Agents[0].URL, Token: tok,
				HTTP: localedge.HTTPClient()}

			_, err := c.Deploy(ctx, spec)
			var ae *agentapi.APIError
			switch {
			case tt.wantStatus == http.StatusOK && err != nil:
				t.Errorf("deploy: %v", err)
			case tt.wantStatus != http.StatusOK &&
				(!errors.As(err, &ae) || ae.Status != tt.wantStatus):
				t.Errorf("deploy error = %v, want status %d", err, tt.wantStatus)
			}
		})
	}
}

func TestDevTokenBadInput(t *testing.T) {
	_, _, dir := startDevFleet(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no fleet", []string{"--state-dir", t.TempDir()}, 1, "no dev fleet state"},
		{"bad sha", []string{"--state-dir", dir, "--sha", "xyz"}, 1, "sha must be"},
		{"too long", []string{"--state-dir", dir, "--expires-in", "48h"}, 1, "expires_in_secs"},
		{"fraction", []string{"--state-dir", dir, "--expires-in", "1.5s"}, 2, "whole seconds"},
		{"argument", []string{"--state-dir", dir, "extra"}, 2, "unexpected arguments"},
		{"owner mismatch", []string{"--state-dir", dir, "--repository", "a/b", "--owner", "c"},
			1, "not owned"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := exitCode(runDevToken(context.Background(), tt.args, &out, &errOut), &errOut)
			if code != tt.wantCode || !strings.Contains(errOut.String(), tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut.String(),
					tt.wantCode, tt.wantErr)
			}

			if out.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", out.String())
			}
		})
	}
}

// exitCode maps a mode's error as run does, writing it to stderr.
func exitCode(err error, stderr *bytes.Buffer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, err)
	if errors.As(err, new(*usageError)) {
		return 2
	}
	return 1
}

func TestDevTokenMintRequest(t *testing.T) {
	org := devfleet.Owner{Kind: "org", Name: "acme", ID: 7}
	repo := devfleet.Owner{Kind: "repo", Name: "acme/site", ID: 9}

	tests := []struct {
		name  string
		owner devfleet.Owner
		flags devTokenFlags
		want  ghoidc.MintRequest
	}{
		{"defaults", org, devTokenFlags{},
			ghoidc.MintRequest{RepositoryOwner: "acme", RepositoryOwnerID: 7}},
		{"owner's repository", org, devTokenFlags{repository: "acme/x"},
			ghoidc.MintRequest{Repository: "acme/x", RepositoryOwnerID: 7}},
		{"owner by name, other case", org, devTokenFlags{owner: "ACME"},
			ghoidc.MintRequest{RepositoryOwner: "ACME", RepositoryOwnerID: 7}},
		{"another owner gets its own id", org, devTokenFlags{owner: "other"},
			ghoidc.MintRequest{RepositoryOwner: "other"}},
		{"another repository", org, devTokenFlags{repository: "other/x"},
			ghoidc.MintRequest{Repository: "other/x"}},
		{"explicit id wins", org, devTokenFlags{ownerID: 5},
			ghoidc.MintRequest{RepositoryOwner: "acme", RepositoryOwnerID: 5}},
		{"repo principal", repo, devTokenFlags{},
			ghoidc.MintRequest{Repository: "acme/site", RepositoryID: 9}},
		{"repo principal, other repository", repo, devTokenFlags{repository: "acme/x"},
			ghoidc.MintRequest{Repository: "acme/x"}},
		{"claims", org, devTokenFlags{ref: "refs/tags/v1", sha: "ab", audience: "aud",
			repositoryID: 3}, ghoidc.MintRequest{RepositoryOwner: "acme", RepositoryOwnerID: 7,
			RepositoryID: 3, Ref: "refs/tags/v1", SHA: "ab", Audience: "aud"}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.flags.expiresIn = -time.Minute
			got, err := tt.flags.mintRequest(tt.owner)
			if err != nil {
				t.Fatal(err)
			}

			secs := int64(-60)
			tt.want.ExpiresInSecs = &secs
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("mint request (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeJWT returns an unsigned token whose payload is payload.
func fakeJWT(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestTokenExpiry(t *testing.T) {
	tests := []struct {
		name string
		tok  string
		want time.Time
	}{
		{"number", fakeJWT(`{"exp":1700000000}`), time.Unix(1700000000, 0)},
		{"fraction", fakeJWT(`{"exp":1700000000.5}`), time.Unix(1700000000, 0)},
		{"no exp", fakeJWT(`{"sub":"x"}`), time.Time{}},
		{"string exp", fakeJWT(`{"exp":"soon"}`), time.Time{}},
		{"not JSON", fakeJWT(`exp`), time.Time{}},
		{"two parts", "a.b", time.Time{}},
		{"bad base64", "a.!!!.c", time.Time{}},
		{"empty", "", time.Time{}},
	}

	for _, tt := range tests {
		if got := tokenExpiry(tt.tok); !got.Equal(tt.want) {
			t.Errorf("%s: tokenExpiry = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestTokenSourceRefresh steps a clock through a token's life: the token
// is reused until it is within a minute of expiry, then replaced.
func TestTokenSourceRefresh(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	now := start
	var fetches int
	fetch := func(context.Context) (string, error) {
		fetches++
		exp := now.Add(5 * time.Minute).Unix()
		return fakeJWT(fmt.Sprintf(`{"exp":%d,"n":%d}`, exp, fetches)), nil
	}

	ts := &tokenSource{now: func() time.Time { return now }, fetch: fetch}

	steps := []struct {
		at          time.Duration // since start
		wantFetches int
	}{
		{0, 1},
		{time.Minute, 1},
		{3*time.Minute + 59*time.Second, 1},
		{4 * time.Minute, 2}, // 60 s left: replaced
		{5 * time.Minute, 2}, // the first has expired; the second lives to +9m
		{7*time.Minute + 59*time.Second, 2},
		{8 * time.Minute, 3},
		{20 * time.Minute, 4}, // long expired
	}

	var last string
	for i, s := range steps {
		now = start.Add(s.at)
		tok, err := ts.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}

		if fetches != s.wantFetches {
			t.Errorf("at +%v: %d fetches, want %d", s.at, fetches, s.wantFetches)
		}
		replaced := i == 0 || s.wantFetches != steps[i-1].wantFetches
		if (tok != last) != replaced {
			t.Errorf("at +%v: token replaced = %t, want %t", s.at, tok != last, replaced)
		}
		last = tok
	}
}

func TestTokenSourceWithoutExpiryFetchesEachTime(t *testing.T) {
	var fetches int
	ts := &tokenSource{now: time.Now, fetch: func(context.Context) (string, error) {
		fetches++
		return "opaque", nil
	}}

	for range 3 {
		ts.Token(context.Background())
	}
	if fetches != 3 {
		t.Errorf("%d fetches for 3 tokens of unknown expiry, want 3", fetches)
	}
}

func TestTokenSourceFetchError(t *testing.T) {
	errDown := errors.New("runner unavailable")
	ts := &tokenSource{now: time.Now, fetch: func(context.Context) (string, error) {
		return "", errDown
	}}
	if _, err := ts.Token(context.Background()); !errors.Is(err, errDown) {
		t.Errorf("Token() error = %v, want %v", err, errDown)
	}
}
