package main

import (
	"context"
	"flag"
	"fmt"
	"io"
)

const logsHelp = `usage: devopsdefender logs [flags] APP

Prints the last log lines of the workload APP from an agent's GET /logs/{app}.

` + targetHelp + `
Flags:
`

func runLogs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var t target
	t.register(fs)
	tail := fs.Int("tail", 100, "number of lines to print (0..10000)")
	fs.Usage = func() { fmt.Fprint(stderr, logsHelp); fs.PrintDefaults() }

	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("expected one APP name, got %d arguments", fs.NArg())
	}

	c, err := t.client(ctx)
	if err != nil {
		return err
	}
	res, err := c.Logs(ctx, fs.Arg(0), *tail)
	if err != nil {
		return explain(err)
	}

	for _, l := range res.Lines {
		fmt.Fprintln(stdout, l)
	}
	return nil
}
