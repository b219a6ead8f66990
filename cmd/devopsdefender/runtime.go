package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/runtime/server"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// defaultEEConfig is EasyEnclave's config file; it is read when present.
const defaultEEConfig = "/etc/easyenclave/config.json"

const runtimeUsage = `usage: devopsdefender runtime [flags]

Runs a local stand-in for the EasyEnclave workload runtime: it serves
EasyEnclave's unix-socket protocol (health, list, logs, deploy, stop, exec,
attach, attest) and runs workloads as real processes, each in its own
process group. Without configfs-tsm it never claims TDX: attest answers with
quotes of a simulated TD (--attest=simulated, attestation_type "simulated"),
a documented local blob (attestation_type "none"), or fails with
--attest=refuse.

Logs: each app's log keeps at most --log-max-lines lines (default %d) of at
most %d bytes each; the newest lines are kept, longer lines are split, and
invalid UTF-8 is replaced. Workload output is mirrored to this process's log
at debug level as "[<app>] <line>" (--log-level=debug shows it).

Paths: workload specs written for EasyEnclave hard-code /var/lib/easyenclave.
Unless the data dir is /var/lib/easyenclave, that prefix is rewritten to the
data dir in every cmd, env, exec and attach string (--rewrite-data-prefix).

Flags:
%s
Environment (a flag, when given, wins over its variable):
  EE_SOCKET_PATH      socket path (--socket); exported to every workload
  EE_DATA_DIR         data dir (--data-dir); exported to every workload
  EE_TOKEN_FIXED      fixed seal token (--token), for tests
  EE_BOOT_WORKLOADS   JSON array of boot workload specs; replaces the config
                      file's boot_workloads
  EE_GITHUB_API_URL   release API base URL (--github-api-url)
  EE_GITHUB_TOKEN     bearer token for the release API and asset downloads
  EE_LOCAL_ASSETS     offline asset dir (--local-assets):
                      <dir>/<owner>/<repo>/<tag or latest>/<asset>, then <dir>/<asset>

Workloads inherit this process's environment, minus EE_TOKEN, EE_TOKEN_FIXED,
EE_GITHUB_TOKEN and EE_BOOT_WORKLOADS, with <data-dir>/bin first on PATH.
Only boot workloads with "inherit_token": true receive EE_TOKEN.
`

// runtimeFlags holds the command line of the runtime mode.
type runtimeFlags struct {
	socket, dataDir, config, token string
	unsealed                       bool
	logMaxLines                    int
	hostTools                      stringList
	githubAPI, localAssets         string
	rewrite, attest, shell         string
	simDir                         string
	logLevel                       string
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func (f *runtimeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.socket, "socket", "", "unix socket path (default: $XDG_RUNTIME_DIR/easyenclave/"+
		"agent.sock, or /var/lib/easyenclave/agent.sock as root)")
	fs.StringVar(&f.dataDir, "data-dir", "", "data dir holding bin/, workloads/logs/ and shared/ "+
		"(default: ~/.local/state/easyenclave, or /var/lib/easyenclave as root)")
	fs.StringVar(&f.config, "config", "", "EasyEnclave config JSON with socket_path, data_dir and "+
		"boot_workloads (default: "+defaultEEConfig+" when it exists)")

	fs.StringVar(&f.token, "token", "", "fixed seal token, 64 lowercase hex characters (tests only)")
	fs.BoolVar(&f.unsealed, "unsealed", false, "accept requests without a token; only for a "+
		"single-user machine")
	fs.IntVar(&f.logMaxLines, "log-max-lines", server.DefaultLogMaxLines,
		"lines kept per app log, newest first")

	fs.Var(&f.hostTools, "host-tool", "host program to symlink into <data-dir>/bin at startup, "+
		"e.g. busybox (repeatable)")
	fs.StringVar(&f.githubAPI, "github-api-url", "", "GitHub release API base URL (default "+
		server.DefaultGitHubAPIURL+")")
	fs.StringVar(&f.localAssets, "local-assets", "", "directory searched for release assets "+
		"before the network")
	fs.StringVar(&f.rewrite, "rewrite-data-prefix", "auto", "rewrite /var/lib/easyenclave to the "+
		"data dir: auto (unless the data dir is that path), on or off")

	fs.StringVar(&f.attest, "attest", "auto", "attest backend: auto (configfs-tsm when present, "+
		"else local), simulated (quotes of a simulated TD, see --simulator-dir), local (a blob "+
		"that is not a quote) or refuse")
	fs.StringVar(&f.simDir, "simulator-dir", "", "with --attest=simulated: directory keeping "+
		"the simulated TD's PCK chain and root.pem, which verifiers must trust; empty keeps a "+
		"fresh chain in memory")

	fs.StringVar(&f.shell, "shell", server.DefaultShell, "program attach runs without a cmd")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
}

// runRuntime runs the local workload runtime until ctx ends.
func runRuntime(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("runtime", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f runtimeFlags
	f.register(fs)

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printRuntimeUsage(stdout, fs)
			return flag.ErrHelp
		}
		return usagef("%v (see devopsdefender runtime -h)", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments: %q", fs.Args())
	}

	opts, err := f.options(fs, stderr)
	if err != nil {
		return err
	}

	srv, err := server.New(opts)
	if err != nil {
		return err
	}
	return srv.Serve(ctx)
}

func printRuntimeUsage(w io.Writer, fs *flag.FlagSet) {
	var flags strings.Builder
	fs.SetOutput(&flags)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprintf(w, runtimeUsage, server.DefaultLogMaxLines, server.MaxLogLine, flags.String())
}

// options turns flags, environment and config file into server options.
func (f *runtimeFlags) options(fs *flag.FlagSet, stderr io.Writer) (server.Options, error) {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	pick := func(name, flagValue, env string) string {
		if set[name] {
			return flagValue
		}
		return os.Getenv(env)
	}

	cfg, err := loadEEConfig(f.config)
	if err != nil {
		return server.Options{}, err
	}
	level, err := parseLevel(f.logLevel)
	if err != nil {
		return server.Options{}, err
	}

	opts := server.Options{
		SocketPath:     firstNonEmpty(pick("socket", f.socket, "EE_SOCKET_PATH"), cfg.SocketPath),
		DataDir:        firstNonEmpty(pick("data-dir", f.dataDir, "EE_DATA_DIR"), cfg.DataDir),
		Token:          pick("token", f.token, "EE_TOKEN_FIXED"),
		Unsealed:       f.unsealed,
		LogMaxLines:    f.logMaxLines,
		GitHubAPIURL:   pick("github-api-url", f.githubAPI, "EE_GITHUB_API_URL"),
		GitHubToken:    os.Getenv("EE_GITHUB_TOKEN"),
		LocalAssetsDir: pick("local-assets", f.localAssets, "EE_LOCAL_ASSETS"),
		HostTools:      f.hostTools,
		Shell:          f.shell,
		Logger:         slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	}

	if opts.LogMaxLines <= 0 {
		return opts, usagef("--log-max-lines must be positive")
	}
	if opts.RewriteDataPrefix, err = parseRewrite(f.rewrite); err != nil {
		return opts, err
	}
	if err := f.attester(&opts); err != nil {
		return opts, err
	}

	// EE_BOOT_WORKLOADS, when set, replaces the config file's boot workloads
	opts.BootWorkloads = cfg.BootWorkloads
	if raw, ok := os.LookupEnv("EE_BOOT_WORKLOADS"); ok {
		if opts.BootWorkloads, err = parseBootWorkloads([]byte(raw)); err != nil {
			return opts, fmt.Errorf("EE_BOOT_WORKLOADS: %w", err)
		}
	}
	return opts, nil
}

// attester selects the attest backend (easyenclave.md §7.6): configfs-tsm
// when the kernel offers it and --attest=auto, else the local non-quote.
func (f *runtimeFlags) attester(opts *server.Options) error {
	switch f.attest {
	case "auto":
		p, err := tdx.DetectProvider()
		if errors.Is(err, tdx.ErrNoTDX) {
			return nil
		}
		if err != nil {
			return err
		}
		opts.Attester, opts.AttestationType = server.ProviderAttester(p), p.Type()
	case "simulated":
		sim, err := tdx.NewSimulator(tdx.SimulatorOptions{Dir: f.simDir})
		if err != nil {
			return err
		}
		opts.Attester, opts.AttestationType = server.ProviderAttester(sim), sim.Type()
	case "local":
	case "refuse":
		opts.RefuseAttest = true
	default:
		return usagef("--attest must be auto, simulated, local or refuse, not %q", f.attest)
	}

	return nil
}

// eeConfig is the part of EasyEnclave's config file the runtime honours.
type eeConfig struct {
	SocketPath    string
	DataDir       string
	BootWorkloads []workload.Spec
}

// loadEEConfig reads path, or the default config when path is empty and
// that file exists. A config that does not parse is an error.
func loadEEConfig(path string) (eeConfig, error) {
	if path == "" {
		if _, err := os.Stat(defaultEEConfig); err != nil {
			return eeConfig{}, nil
		}
		path = defaultEEConfig
	}

	data, err := os.ReadFile(path)
	if err != nil {
		return eeConfig{}, fmt.Errorf("reading config: %w", err)
	}

	var raw struct {
		SocketPath    string          `json:"socket_path"`
		DataDir       string          `json:"data_dir"`
		BootWorkloads json.RawMessage `json:"boot_workloads"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return eeConfig{}, fmt.Errorf("config %s: %w", path, err)
	}

	cfg := eeConfig{SocketPath: raw.SocketPath, DataDir: raw.DataDir}
	if len(raw.BootWorkloads) > 0 && string(raw.BootWorkloads) != "null" {
		if cfg.BootWorkloads, err = parseBootWorkloads(raw.BootWorkloads); err != nil {
			return eeConfig{}, fmt.Errorf("config %s: boot_workloads: %w", path, err)
		}
	}
	return cfg, nil
}

// parseBootWorkloads reads a JSON array of workload specs, validating each.
func parseBootWorkloads(data []byte) ([]workload.Spec, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(data, &items); err != nil {
		return nil, fmt.Errorf("want a JSON array of workload specs: %w", err)
	}

	specs := make([]workload.Spec, 0, len(items))
	for i, item := range items {
		spec, err := workload.Parse(item)
		if err != nil {
			return nil, fmt.Errorf("workload %d: %w", i, err)
		}
		specs = append(specs, spec)
	}

	return specs, nil
}

func parseRewrite(v string) (*bool, error) {
	on, off := true, false
	switch v {
	case "auto":
		return nil, nil
	case "on", "true":
		return &on, nil
	case "off", "false":
		return &off, nil
	}

	return nil, usagef("--rewrite-data-prefix must be auto, on or off, not %q", v)
}

func parseLevel(v string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		return l, usagef("--log-level must be debug, info, warn or error, not %q", v)
	}
	return l, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
