package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
)

// build is set at link time: -ldflags "-X main.build=<commit>".
var build = ""

// buildVersion returns the link-time build id, else the VCS revision Go
// recorded, else "dev".
func buildVersion() string {
	if build != "" {
		return build
	}

	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return s.Value[:12]
			}
		}
	}
	return "dev"
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: devopsdefender version\n\nPrints the build version "+
			"(set at link time, else the VCS revision of the build, else \"dev\").\n")
	}

	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments: %v", fs.Args())
	}
	fmt.Fprintln(stdout, "devopsdefender", buildVersion())
	return nil
}
