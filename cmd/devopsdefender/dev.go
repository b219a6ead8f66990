package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/devopsdefender/devopsdefender/internal/devfleet"
)

const devHelp = `usage: devopsdefender dev [flags]

Runs a whole fleet on this machine, on loopback, with no TDX and no
internet: a local GitHub Actions OIDC issuer, the control plane (registry in
STATE-DIR/cp/registry.db), a local edge on --listen that routes
app.localhost to the control plane and AGENT.localhost to each agent, and
--agents agents, each with its own local workload runtime booting
examples/ticker.json. When ready it writes STATE-DIR/dev.json (URLs, the
admin token, the OIDC issuer) for the client verbs. Running it again on the
same state dir keeps the registry. Ctrl-C stops everything.

  devopsdefender dev token --state-dir DIR [flags]
prints a GitHub-Actions-style OIDC token from the running fleet's local
issuer, for trying the rules with curl ('dev token -h' for its flags).

Flags:
`

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "token" {
		return runDevToken(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "./.devopsdefender/dev", "state directory")
	listen := fs.String("listen", "127.0.0.1:8080", "edge address (port 0 picks a free port)")
	agents := fs.Int("agents", 1, "number of agents (1..64)")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = func() { fmt.Fprint(stderr, devHelp); fs.PrintDefaults() }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments: %v", fs.Args())
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}

	f, err := devfleet.Start(ctx, devfleet.Options{
		StateDir: *stateDir, Listen: *listen, Agents: *agents, Build: buildVersion(),
		Logger: log,
	})
	if err != nil {
		return err
	}
	f.PrintSummary(stdout)
	<-ctx.Done()
	fmt.Fprintln(stderr, "stopping the dev fleet")
	return f.Wait()
}

// newLogger returns a text logger at the named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
