package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

// auditDB creates a control-plane database with n audit entries.
func auditDB(t *testing.T, n int) (string, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry.db")
	db, err := sql.Open("sqlite", path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { db.Close() })
	ctx := context.Background()
	if err := audit.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}

	l, err := audit.Open(ctx, sqldb.New(db), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}

	for range n {
		_, err := l.Append(ctx, audit.Event{Actor: audit.CI("org:acme(1)", "acme/app", "abc"),
			Action: audit.ActionDeploy, Target: "dd-dev-agent-0001", Outcome: audit.OutcomeOK,
			Details: map[string]string{"sha": "abc"}})
		if err != nil {
			t.Fatal(err)
		}
	}

	return path, db
}

func runAuditCmd(args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	err := runAudit(context.Background(), args, &stdout, &stderr)
	return stdout.String(), err
}

func TestAuditVerify(t *testing.T) {
	path, db := auditDB(t, 3)
	out, err := runAuditCmd("verify", "--db", path)
	if err != nil || !strings.HasPrefix(out, "audit log ok: 3 entries, head ") {
		t.Fatalf("verify = %q, %v; want ok with 3 entries", out, err)
	}

	// Edit one row as someone with write access to the file would.
	for _, stmt := range []string{
		"DROP TRIGGER audit_log_no_update",
		`UPDATE audit_log SET details = '{"sha":"evil"}' WHERE seq = 2`,
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}

	out, err = runAuditCmd("verify", "--db", path)
	if err == nil || !strings.Contains(err.Error(), "broken at entry 2: hash does not match") {
		t.Errorf("verify after an edit = %v, want entry 2 named", err)
	}
	if out != "" {
		t.Errorf("verify printed %q on failure, want nothing on stdout", out)
	}
}

func TestAuditVerifyErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.db")
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		args  []string
		want  string
		usage bool
	}{
		{"no subcommand", nil, "expected a subcommand", true},
		{"unknown subcommand", []string{"list"}, "unknown audit subcommand", true},
		{"extra argument", []string{"verify", "--db", empty, "x"}, "unexpected arguments", true},
		{"bad flag", []string{"verify", "--nope"}, "not defined", true},
		{"missing file", []string{"verify", "--db", missing}, "no such file", false},
		{"no audit log", []string{"verify", "--db", empty}, "no audit log", false},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runAuditCmd(tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
			if got := errors.As(err, new(*usageError)); got != tc.usage {
				t.Errorf("usage error = %v, want %v", got, tc.usage)
			}
		})
	}

	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("verify created %s: %v", missing, err)
	}
}
