package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/devfleet"
)

func TestSelectMode(t *testing.T) {
	tests := []struct {
		args     []string
		env      string
		wantMode string
		wantRest []string
	}{
		{[]string{"cp", "--listen", "x"}, "", "cp", []string{"--listen", "x"}},
		{[]string{"deploy", "f.json"}, "agent", "deploy", []string{"f.json"}},
		{[]string{"--vm-name", "a"}, "agent", "agent", []string{"--vm-name", "a"}},
		{nil, "agent", "agent", nil},
		{nil, "", "", nil},
		{[]string{"-h"}, "", "help", nil},
		{[]string{"quote", "q.dat"}, "verify", "verify", []string{"quote", "q.dat"}},
		{[]string{"nonsense"}, "", "nonsense", nil},
	}

	for _, tt := range tests {
		mode, rest := selectMode(tt.args, tt.env)
		if mode != tt.wantMode || strings.Join(rest, " ") != strings.Join(tt.wantRest, " ") {
			t.Errorf("selectMode(%q, %q) = %q %q, want %q %q", tt.args, tt.env, mode, rest,
				tt.wantMode, tt.wantRest)
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	tests := []struct {
		args []string
		env  string
		want int
	}{
		{nil, "", 2},
		{[]string{"nonsense"}, "", 2},
		{[]string{"help"}, "", 0},
		{[]string{"version"}, "", 0},
		{[]string{"deploy", "-h"}, "", 0},
		{[]string{"deploy"}, "", 2},
		{[]string{"deploy", "--no-such-flag"}, "", 2},
		{[]string{"logs", "--state-dir", "/nonexistent", "app"}, "", 1},
		{[]string{"cp", "--env", "production"}, "", 1},
		{[]string{"cp", "--env", "Not Valid"}, "", 2},
		{[]string{"dev", "--log-level", "bogus"}, "", 2},
		{[]string{"dev", "cp", "--log-level", "bogus"}, "", 2},
		{[]string{"dev", "cp", "extra"}, "", 2},
	}

	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if got := run(context.Background(), tt.args, tt.env, &out, &errOut); got != tt.want {
			t.Errorf("run(%q) = %d, want %d; stderr:\n%s", tt.args, got, tt.want, errOut.String())
		}
	}
}

// TestDeployVerb drives the deploy and logs verbs against a dev fleet, as
// a person would after `devopsdefender dev`.
func TestDeployVerb(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	f, err := devfleet.Start(ctx, devfleet.Options{StateDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		cancel()
		t.Fatal(err)
	}

	defer func() {
		cancel()
		if err := f.Wait(); err != nil {
			t.Error(err)
		}
	}()

	agent := f.State().Agents[0].Name
	examples := filepath.Join("..", "..", "examples")

	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr []string
	}{
		{"one-shot workload", []string{"deploy", "--state-dir", dir, "--agent", agent,
			filepath.Join(examples, "hello.json")}, 0, "hello completed", []string{"hello: completed"}},
		{"its logs", []string{"logs", "--state-dir", dir, "--agent", agent, "hello"}, 0,
			"hello from", nil},
		{"failing workload", []string{"deploy", "--state-dir", dir, "--agent", agent,
			filepath.Join(examples, "failing.json")}, 1, "",
			[]string{"exited with code 3", "something went wrong"}},
		{"invalid spec", []string{"deploy", "--state-dir", dir, "--agent", agent,
			writeFile(t, `{"app_name": "../x", "cmd": ["true"]}`)}, 1, "",
			[]string{"app_name"}},
		{"unknown agent", []string{"deploy", "--state-dir", dir, "--agent", "nope",
			filepath.Join(examples, "hello.json")}, 1, "", []string{`no agent "nope"`}},
		{"unknown app", []string{"logs", "--state-dir", dir, "--agent", agent, "nope"}, 1, "",
			[]string{"404"}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(ctx, tt.args, "", &out, &errOut)
			if code != tt.wantCode || !strings.Contains(out.String(), tt.wantStdout) {
				t.Errorf("exit %d, stdout %q; want %d and %q\nstderr:\n%s", code, out.String(),
					tt.wantCode, tt.wantStdout, errOut.String())
			}

			for _, w := range tt.wantStderr {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut.String())
				}
			}
		})
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "spec.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTrustAuthorityClient(t *testing.T) {
	if c, err := trustAuthorityClient("", "", nil); c != nil || err != nil {
		t.Errorf("no URL = %v, %v; want no client", c, err)
	}
	if _, err := trustAuthorityClient("https://api.trustauthority.intel.com", "",
		nil); !errors.As(err, new(*usageError)) {
		t.Errorf("a URL without DD_ITA_API_KEY = %v, want a usage error", err)
	}

	if _, err := trustAuthorityClient("not a url", "key", nil); err == nil {
		t.Error("a bad URL was accepted")
	}
	c, err := trustAuthorityClient("https://api.trustauthority.intel.com", "key", nil)
	if c == nil || err != nil {
		t.Errorf("URL and key = %v, %v; want a client", c, err)
	}
}

// TestClientVerbsSayTheFleetIsDown: a dev.json left by a stopped fleet
// gets a hint to start it, not a connection error.
func TestClientVerbsSayTheFleetIsDown(t *testing.T) {
	dir := t.TempDir()
	st := devfleet.State{CPURL: "http://127.0.0.1:1", OIDCIssuer: "http://127.0.0.1:1",
		Agents: []devfleet.StateAgent{{Name: "agent-1", URL: "http://127.0.0.1:1"}}}
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, devfleet.StateFile), data, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"deploy", "--state-dir", dir, "--agent", "agent-1",
			filepath.Join("..", "..", "examples", "hello.json")},
		{"logs", "--state-dir", dir, "--agent", "agent-1", "hello"},
		{"dev", "token", "--state-dir", dir},
	} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), args, "", &out, &errOut)
		if code != 1 || !strings.Contains(errOut.String(), "is not running") {
			t.Errorf("%s = %d %q, want 1 and a hint that the fleet is not running", args[0],
				code, errOut.String())
		}
	}
}
