// Command devopsdefender is the DevOps Defender binary: the control plane,
// the in-VM agent, the local workload runtime, the single-machine dev
// fleet, and the client verbs, selected by the first argument or DD_MODE.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// modeFunc runs one mode until ctx ends or the work is done.
type modeFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

type mode struct {
	run     modeFunc
	summary string

	// client marks a client verb: its failures are reported as the verb's
	// errors, not with the "fatal" prefix that boot logs are searched for.
	client bool
}

func modes() map[string]mode {
	return map[string]mode{
		"cp":         {runCP, "run the control plane (fleet registry, dashboard, collector)", false},
		"management": {runCP, "alias of cp", false},
		"agent":      {runAgent, "run the in-VM agent (deploy/exec/logs API, health)", false},
		"runtime":    {runRuntime, "run the local EasyEnclave-compatible workload runtime", false},
		"dev":        {runDev, "run a whole fleet on this machine (no TDX, no internet)", false},
		"deploy":     {runDeploy, "deploy a workload spec to an agent and wait for it", true},
		"logs":       {runLogs, "print a workload's log lines", true},
		"verify":     {runVerify, "verify attestation evidence (verify quote FILE, verify token TOKEN)", true},
		"audit":      {runAudit, "check the audit log's hash chain (audit verify --db PATH)", true},
		"version":    {runVersion, "print the build version", true},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv("DD_MODE"), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run selects the mode and maps its outcome to an exit code: 0 on success
// or -h, 1 on failure, 2 on a usage error.
func run(ctx context.Context, args []string, envMode string, stdout, stderr io.Writer) int {
	name, rest := selectMode(args, envMode)
	if name == "" || name == "help" || name == "-h" || name == "--help" {
		usage(stdout)
		if name == "" {
			return 2
		}
		return 0
	}

	m, ok := modes()[name]
	if !ok {
		fmt.Fprintf(stderr, "devopsdefender: unknown mode %q\n\n", name)
		usage(stderr)
		return 2
	}

	err := m.run(ctx, rest, stdout, stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(*usageError)):
		fmt.Fprintf(stderr, "devopsdefender %s: %v\n", name, err)
		return 2
	case m.client:
		fmt.Fprintf(stderr, "devopsdefender %s: %v\n", name, err)
		return 1
	default:
		fmt.Fprintf(stderr, "devopsdefender: fatal: %v\n", err)
		return 1
	}
}

// selectMode takes the mode from the first argument when it names one,
// else from DD_MODE, so boot specs that set only DD_MODE keep working.
func selectMode(args []string, envMode string) (string, []string) {
	if len(args) > 0 && isMode(args[0]) {
		return args[0], args[1:]
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") && envMode == "" {
		return args[0], args[1:] // an unknown mode, reported as such
	}
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") && envMode == "" {
		return "help", nil
	}
	if envMode != "" {
		return envMode, args
	}

	return "", args
}

// isMode reports whether name names a mode.
func isMode(name string) bool {
	_, ok := modes()[name]
	return ok
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: devopsdefender MODE [flags]   (or DD_MODE=MODE devopsdefender)\n\n")
	fmt.Fprintf(w, "modes:\n")

	names := make([]string, 0)
	for n := range modes() {
		names = append(names, n)
	}
	sort.Strings(names)

	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, modes()[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'devopsdefender MODE -h' for the flags and environment of a mode.\n")
}

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// parseFlags parses args, turning a bad flag into a usage error (exit 2).
// The flag package has already printed the usage text by then.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return usagef("%v", err)
}
