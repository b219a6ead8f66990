package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/sqldb"

	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver
)

const auditHelp = `usage: devopsdefender audit verify [flags]

Recomputes the hash chain of the control plane's audit log, oldest entry
first, and checks it against the head that every append records. When the
chain is whole it prints the number of entries and the head hash; otherwise
it names the first broken entry and why, and exits with status 1. It reads
the database without changing it, so the control plane may keep running.

Flags:
`

// runAudit implements 'devopsdefender audit'.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("expected a subcommand: audit verify --db PATH")
	}

	switch args[0] {
	case "verify":
		return runAuditVerify(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fs, _ := newAuditVerifyFlags(stderr)
		fs.Usage()
		return flag.ErrHelp
	}

	return usagef("unknown audit subcommand %q (want verify)", args[0])
}

func newAuditVerifyFlags(stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := fs.String("db", envOr("DD_DB_PATH", "/var/lib/devopsdefender/cp/registry.db"),
		"control-plane database file (DD_DB_PATH)")
	fs.Usage = func() { fmt.Fprint(stderr, auditHelp); fs.PrintDefaults() }
	return fs, db
}

// runAuditVerify verifies the chain; see auditHelp.
func runAuditVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := newAuditVerifyFlags(stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}

	db, err := openAuditDB(*path)
	if err != nil {
		return err
	}
	defer db.Close()

	shared := sqldb.New(db)
	defer shared.Close()

	log, err := audit.Open(ctx, shared, audit.Options{})
	if err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}

	head, err := log.Verify(ctx)
	var broken *audit.ChainError
	if errors.As(err, &broken) {
		msg := fmt.Sprintf("%s: audit log broken at entry %d: %s", *path, broken.Seq, broken.Reason)
		if broken.Detail != "" {
			msg += " (" + broken.Detail + ")"
		}
		return errors.New(msg)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}

	fmt.Fprintf(stdout, "audit log ok: %d entries, head %s\n", head.Seq, head.Hash)
	return nil
}

// openAuditDB opens an existing database for reading only: a missing file
// is an error rather than a new empty database, and query_only makes
// SQLite refuse any write.
func openAuditDB(path string) (*sql.DB, error) {
	if strings.Contains(path, "?") {
		// The driver would read the rest as connection parameters.
		return nil, usagef("--db %q must not contain '?'", path)
	}

	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("opening audit log: %s is not a file", path)
	}

	db, err := sql.Open("sqlite", path+"?_busy_timeout=5000&_query_only=1")
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	return db, nil
}
