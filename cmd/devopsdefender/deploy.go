package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

const deployHelp = `usage: devopsdefender deploy [flags] FILE

Sends the workload spec FILE to an agent's POST /deploy and, with --wait
(the default), follows the workload until it is running or has completed.
A running workload must stay up for --settle to count as started. On
failure it exits 1 and prints the runtime's error and the last log lines.

Environment:
  DD_TOKEN   bearer token when --token is not given

Flags:
`

func runDeploy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var t target
	t.register(fs)
	wait := fs.Bool("wait", true, "wait until the workload is running or completed")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long --wait waits")
	settle := fs.Duration("settle", time.Second, "how long a running workload must stay up")
	fs.Usage = func() { fmt.Fprint(stderr, deployHelp); fs.PrintDefaults() }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("expected one spec FILE, got %d arguments", fs.NArg())
	}

	spec, app, err := readSpec(fs.Arg(0))
	if err != nil {
		return err
	}
	c, err := t.client(ctx)
	if err != nil {
		return err
	}
	res, err := c.Deploy(ctx, spec)
	if err != nil {
		return explain(err)
	}
	fmt.Fprintf(stderr, "deploy accepted: %s id=%s spec_sha256=%s\n", app, res.ID, res.SpecSHA256)
	if !*wait {
		fmt.Fprintln(stdout, res.ID)
		return nil
	}
	w := waiter{c: c, id: res.ID, app: app, settle: *settle, progress: stderr}
	return w.wait(ctx, *timeout, stdout)
}

// readSpec reads and validates a spec file, so that mistakes are caught
// before anything is sent.
func readSpec(path string) ([]byte, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("reading spec: %w", err)
	}
	spec, err := workload.Parse(data)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	return data, spec.Name(), nil
}

// waiter follows one deployment through the agent's /api/units.
type waiter struct {
	c        *agentapi.Client
	id, app  string
	settle   time.Duration
	progress io.Writer
}

var errDeployFailed = errors.New("deploy failed")

func (w *waiter) wait(ctx context.Context, timeout time.Duration, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()

	var last string
	var runningSince time.Time
	for {
		u, err := w.unit(ctx)
		if err != nil {
			return err
		}
		if u.Status != last {
			fmt.Fprintf(w.progress, "%s: %s\n", w.app, u.Status)
			last = u.Status
		}
		switch u.Status {
		case runtime.StatusCompleted:
			fmt.Fprintf(stdout, "%s completed (exit 0)\n", w.app)
			return nil
		case runtime.StatusFailed, runtime.StatusStopped:
			return w.failed(ctx, u)
		case runtime.StatusRunning:
			if runningSince.IsZero() {
				runningSince = time.Now()
			}
			if time.Since(runningSince) >= w.settle {
				fmt.Fprintf(stdout, "%s running (pid %d)\n", w.app, deref(u.PID))
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s still %s after %s", w.app, u.Status, timeout)
		case <-tick.C:
		}
	}
}

// unit finds this deployment among the agent's units. A unit that is gone
// was replaced by a newer deploy of the same app.
func (w *waiter) unit(ctx context.Context) (agentapi.Unit, error) {
	units, err := w.c.Units(ctx)
	if err != nil {
		return agentapi.Unit{}, fmt.Errorf("watching deploy: %w", explain(err))
	}
	for _, u := range units {
		if u.ID == w.id {
			return u, nil
		}
	}
	return agentapi.Unit{}, fmt.Errorf("deployment %s of %s is gone (replaced by a newer deploy?)",
		w.id, w.app)
}

// failed reports the runtime's error and the last log lines.
func (w *waiter) failed(ctx context.Context, u agentapi.Unit) error {
	fmt.Fprintf(w.progress, "%s %s: %s\n", w.app, u.Status, u.ErrorMessage)
	if logs, err := w.c.Logs(ctx, w.app, 20); err == nil && len(logs.Lines) > 0 {
		fmt.Fprintf(w.progress, "last %d log lines:\n", len(logs.Lines))
		for _, l := range logs.Lines {
			fmt.Fprintf(w.progress, "  %s\n", l)
		}
	}
	msg := u.ErrorMessage
	if msg == "" {
		msg = u.Status
	}
	return fmt.Errorf("%w: %s: %s", errDeployFailed, w.app, msg)
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}
