package main

import (
	"cmp"
	"context"
	"encoding/json"
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

A deploy is never retried blindly. Each run sends one random
Idempotency-Key with its POST /deploy; the request is sent again (at most
three times in all, with a pause of 1 s, then 2 s) only when its outcome is
unknown (a network error) or the agent answered 502 or 503, and always with
the same key, for which the agent returns the first result instead of
starting the workload twice. Any other answer is final. Running the command
again is a new deploy.

With --output-json, stdout is one JSON object,
{"id", "app_name", "status", "spec_sha256"}, also when the workload failed
(status "failed") or the wait timed out (the last status seen); progress
goes to stderr.

` + targetHelp + `
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
	asJSON := fs.Bool("output-json", false,
		`print {"id","app_name","status","spec_sha256"} on stdout`)
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

	res, err := c.DeployWithKey(ctx, spec, agentapi.NewIdempotencyKey())
	if err != nil {
		return explain(err)
	}
	fmt.Fprintf(stderr, "deploy accepted: %s id=%s spec_sha256=%s\n", app, res.ID, res.SpecSHA256)

	out := deployOutcome{ID: res.ID, AppName: app, Status: res.Status, SpecSHA256: res.SpecSHA256}
	var werr error
	if *wait {
		w := waiter{c: c, id: res.ID, app: app, settle: *settle, progress: stderr}
		var u agentapi.Unit
		u, werr = w.wait(ctx, *timeout)
		out.Status = cmp.Or(u.Status, out.Status)
		out.pid = deref(u.PID)
	}

	if err := out.print(stdout, *asJSON, werr); err != nil {
		return err
	}
	return werr
}

// deployOutcome is what deploy reports on stdout; its JSON form is the
// one of --output-json.
type deployOutcome struct {
	ID         string `json:"id"`
	AppName    string `json:"app_name"`
	Status     string `json:"status"`
	SpecSHA256 string `json:"spec_sha256"`

	pid int
}

// print writes the outcome as JSON, or as a line for a person when the
// deploy succeeded (a failure is reported on stderr).
func (o deployOutcome) print(w io.Writer, asJSON bool, failure error) error {
	if asJSON {
		return json.NewEncoder(w).Encode(o)
	}
	if failure != nil {
		return nil
	}

	var err error
	switch o.Status {
	case runtime.StatusCompleted:
		_, err = fmt.Fprintf(w, "%s completed (exit 0)\n", o.AppName)
	case runtime.StatusRunning:
		_, err = fmt.Fprintf(w, "%s running (pid %d)\n", o.AppName, o.pid)
	default:
		_, err = fmt.Fprintln(w, o.ID)
	}

	return err
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

// wait follows the deployment until it has started, completed or failed,
// and returns the last state seen.
func (w *waiter) wait(parent context.Context, timeout time.Duration) (agentapi.Unit, error) {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()

	var last agentapi.Unit
	var runningSince time.Time
	for {
		u, err := w.unit(ctx)
		if err != nil && ctx.Err() != nil && parent.Err() == nil {
			return last, w.timedOut(parent, last, timeout)
		}
		if err != nil {
			return last, err
		}

		if u.Status != last.Status {
			fmt.Fprintf(w.progress, "%s: %s\n", w.app, u.Status)
		}
		last = u

		switch u.Status {
		case runtime.StatusCompleted:
			return u, nil
		case runtime.StatusFailed, runtime.StatusStopped:
			return u, w.failed(parent, u)
		case runtime.StatusRunning:
			if runningSince.IsZero() {
				runningSince = time.Now()
			}
			if time.Since(runningSince) >= w.settle {
				return u, nil
			}
		}

		select {
		case <-ctx.Done():
			return u, w.timedOut(parent, u, timeout)
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
	w.printLogs(ctx)

	msg := u.ErrorMessage
	if msg == "" {
		msg = u.Status
	}
	return fmt.Errorf("%w: %s: %s", errDeployFailed, w.app, msg)
}

// timedOut reports a wait that ran out, with the workload's last log
// lines: the agent may still start it.
func (w *waiter) timedOut(ctx context.Context, last agentapi.Unit, timeout time.Duration) error {
	w.printLogs(ctx)
	return fmt.Errorf("%s still %s after %s", w.app, cmp.Or(last.Status, "unseen"), timeout)
}

// printLogs prints the workload's last log lines, if the agent has any.
func (w *waiter) printLogs(ctx context.Context) {
	logs, err := w.c.Logs(ctx, w.app, 20)
	if err != nil || len(logs.Lines) == 0 {
		return
	}

	fmt.Fprintf(w.progress, "last %d log lines:\n", len(logs.Lines))
	for _, l := range logs.Lines {
		fmt.Fprintf(w.progress, "  %s\n", l)
	}
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}
