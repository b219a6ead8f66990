package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRuntimeHelpDocumentsFlagsAndEnv(t *testing.T) {
	var out bytes.Buffer
	err := runRuntime(context.Background(), []string{"-h"}, &out, io.Discard)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("runRuntime -h: %v, want flag.ErrHelp", err)
	}

	for _, want := range []string{
		"-socket", "-data-dir", "-token", "-unsealed", "-log-max-lines", "-host-tool", "-attest",
		"EE_SOCKET_PATH", "EE_DATA_DIR", "EE_BOOT_WORKLOADS", "EE_GITHUB_API_URL",
		"EE_GITHUB_TOKEN", "EE_LOCAL_ASSETS", "EE_TOKEN_FIXED",
		"at most --log-max-lines lines (default 10000)", "/var/lib/easyenclave",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

func TestRuntimeOptions(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	err := os.WriteFile(cfg, []byte(`{"socket_path":"/cfg.sock","data_dir":"/cfg-data",
		"boot_workloads":[{"app_name":"from-file","cmd":["true"]}],"other":1}`), 0o644)
	if err != nil {
		t.Fatal(err)
	}

	t.Setenv("EE_SOCKET_PATH", "/env.sock")
	t.Setenv("EE_DATA_DIR", "")
	t.Setenv("EE_BOOT_WORKLOADS", `[{"app_name":"from-env","cmd":["true"]}]`)
	t.Setenv("EE_GITHUB_TOKEN", "ghs")

	fs := flag.NewFlagSet("runtime", flag.ContinueOnError)
	var f runtimeFlags
	f.register(fs)
	args := []string{"--config", cfg, "--token", strings.Repeat("ab", 32), "--attest=refuse",
		"--host-tool", "busybox", "--host-tool", "sh", "--rewrite-data-prefix=off"}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}

	opts, err := f.options(fs, io.Discard)
	if err != nil {
		t.Fatal(err)
	}

	// The env beats the file; the file fills what neither flag nor env set.
	if opts.SocketPath != "/env.sock" || opts.DataDir != "/cfg-data" {
		t.Errorf("socket %q, data dir %q; want /env.sock and /cfg-data", opts.SocketPath, opts.DataDir)
	}
	if len(opts.BootWorkloads) != 1 || opts.BootWorkloads[0].AppName != "from-env" {
		t.Errorf("boot workloads %+v, want EE_BOOT_WORKLOADS to replace the file's", opts.BootWorkloads)
	}

	if !opts.RefuseAttest || opts.GitHubToken != "ghs" || len(opts.HostTools) != 2 ||
		opts.RewriteDataPrefix == nil || *opts.RewriteDataPrefix {
		t.Errorf("options %+v do not reflect the flags", opts)
	}
}

func TestRuntimeRejectsBadInput(t *testing.T) {
	tests := []struct {
		name, bootEnv string
		args          []string
	}{
		{"missing explicit config", "[]", []string{"--config", "/no/such/config.json"}},
		{"invalid boot workload", `[{"app_name":"../x","cmd":["true"]}]`, nil},
		{"boot workloads not an array", `{"app_name":"x"}`, nil},
		{"bad log bound", "[]", []string{"--log-max-lines=0"}},
		{"bad rewrite value", "[]", []string{"--rewrite-data-prefix=maybe"}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("EE_BOOT_WORKLOADS", tt.bootEnv)
			fs := flag.NewFlagSet("runtime", flag.ContinueOnError)
			var f runtimeFlags
			f.register(fs)
			cfg := filepath.Join(t.TempDir(), "empty.json")
			if err := os.WriteFile(cfg, []byte("{}"), 0o644); err != nil {
				t.Fatal(err)
			}
			// A later --config in tt.args wins over this one.
			if err := fs.Parse(append([]string{"--config", cfg}, tt.args...)); err != nil {
				t.Fatal(err)
			}

			if _, err := f.options(fs, io.Discard); err == nil {
				t.Error("options succeeded, want an error")
			}
		})
	}
}

func TestRuntimeSimulatedAttestation(t *testing.T) {
	dir := t.TempDir()
	fs := flag.NewFlagSet("runtime", flag.ContinueOnError)
	var f runtimeFlags
	f.register(fs)
	if err := fs.Parse([]string{"--attest=simulated", "--simulator-dir", dir}); err != nil {
		t.Fatal(err)
	}

	opts, err := f.options(fs, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Attester == nil || opts.AttestationType != "simulated" {
		t.Fatalf("attester %v type %q, want the simulated TD", opts.Attester, opts.AttestationType)
	}

	quote, typ, _, err := opts.Attester.Attest(context.Background(), [64]byte{1})
	if err != nil || typ != "simulated" || len(quote) < 1000 {
		t.Errorf("Attest = %d bytes, %q, %v; want a simulated quote", len(quote), typ, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "root.pem")); err != nil {
		t.Errorf("the simulator's root is not kept in --simulator-dir: %v", err)
	}
}
