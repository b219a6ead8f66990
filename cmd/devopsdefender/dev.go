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

A second 'dev' on a state dir whose fleet runs is refused.

  devopsdefender dev token --state-dir DIR [flags]
prints a GitHub-Actions-style OIDC token from the running fleet's local
issuer, for trying the rules with curl ('dev token -h' for its flags).

  devopsdefender dev cp --state-dir DIR [flags]
starts a second control plane for the running fleet, in this process, as
a new control-plane VM would boot: it takes the fleet's hostname over and
fences the running control plane, which stops ('dev cp -h').

Flags:
`

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "token" {
		return runDevToken(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "cp" {
		return runDevCP(ctx, args[1:], stdout, stderr)
	}

	fs, level := newDevFlags("dev", devHelp, stderr)
	stateDir := fs.String("state-dir", "./.devopsdefender/dev", "state directory")
	listen := fs.String("listen", "127.0.0.1:8080", "edge address (port 0 picks a free port)")
	agents := fs.Int("agents", 1, "number of agents (1..64)")
	log, err := parseDevFlags(fs, args, level, stderr)
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

	// serve until stopped, also after a newer control plane fenced ours
	select {
	case <-ctx.Done():
	case <-f.CP().Done():
		if ctx.Err() == nil {
			fmt.Fprintln(stderr, "a newer control plane fenced this fleet's own one, "+
				"which stopped; the agents follow the new one")
		}
		<-ctx.Done()
	}

	fmt.Fprintln(stderr, "stopping the dev fleet")
	return f.Wait()
}

const devCPHelp = `usage: devopsdefender dev cp --state-dir DIR [flags]

Starts a new control plane for the dev fleet running on DIR (started by
'devopsdefender dev'), as a new control-plane VM boots in production: on
the same registry, it creates its own tunnel for app.localhost on the
fleet's edge, takes the hostname over, and fences the running control
plane, which stops while the agents keep serving and re-attach to the new
one. dev.json then points at the new control plane. It runs until Ctrl-C,
or until a newer control plane fences it in turn; then it exits.

Flags:
`

func runDevCP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, level := newDevFlags("dev cp", devCPHelp, stderr)
	stateDir := fs.String("state-dir", "./.devopsdefender/dev", "the running fleet's state directory")
	listen := fs.String("listen", "127.0.0.1:0", "the control plane's own loopback address")
	log, err := parseDevFlags(fs, args, level, stderr)
	if err != nil {
		return err
	}

	f, err := devfleet.Join(ctx, devfleet.JoinOptions{StateDir: *stateDir, Listen: *listen,
		Build: buildVersion(), Logger: log})
	if err != nil {
		return err
	}
	c := f.CP()
	fmt.Fprintf(stdout, "control plane %s now serves %s\n", c.URL, f.State().DashboardURL)

	select {
	case <-ctx.Done():
		fmt.Fprintln(stderr, "stopping the control plane")
	case <-c.Done():
		fmt.Fprintln(stderr, "this control plane was fenced (a newer one took over, or the "+
			"fleet's edge went away): exiting")
	}
	return f.Close()
}

// newDevFlags returns the flag set of a dev command, with help as its
// usage text and its --log-level flag.
func newDevFlags(name, help string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, help); fs.PrintDefaults() }
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	return fs, level
}

// parseDevFlags parses args, which take no positional arguments, and
// returns the logger at the --log-level.
func parseDevFlags(fs *flag.FlagSet, args []string, level *string,
	stderr io.Writer) (*slog.Logger, error) {
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() != 0 {
		return nil, usagef("unexpected arguments: %v", fs.Args())
	}
	return newLogger(stderr, *level)
}

// newLogger returns a text logger at the named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
