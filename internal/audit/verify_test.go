package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

func TestVerifyPasses(t *testing.T) {
	l, _, _ := newTestLog(t)
	ctx := context.Background()
	head, err := l.Verify(ctx)
	if err != nil || head != (Head{Seq: 0, Hash: GenesisHash}) {
		t.Fatalf("Verify of an empty log = %+v, %v; want the genesis head", head, err)
	}

	fillLog(t, l)
	want, _ := l.Head(ctx)
	if head, err := l.Verify(ctx); err != nil || head != want {
		t.Fatalf("Verify = %+v, %v; want %+v", head, err, want)
	}
}

func TestTriggersKeepTheLogAppendOnly(t *testing.T) {
	l, db, _ := newTestLog(t)
	fillLog(t, l)
	for _, stmt := range []string{
		"UPDATE audit_log SET details = '{}' WHERE seq = 3",
		"DELETE FROM audit_log WHERE seq = 10",
	} {
		_, err := db.Exec(stmt)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: error = %v, want the append-only refusal", stmt, err)
		}
	}

	if _, err := l.Verify(context.Background()); err != nil {
		t.Errorf("Verify after refused changes: %v", err)
	}
}

func TestVerifyFindsTampering(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, db *sql.DB)
		seq    int64
		reason Reason
	}{
		{"edited details", sqlTamper(
			`UPDATE audit_log SET details = '{"spec_hash":"sha256:evil"}' WHERE seq = 3`),
			3, ReasonHash},
		{"edited actor", sqlTamper(
			"UPDATE audit_log SET actor_name = 'mallory' WHERE seq = 2"), 2, ReasonHash},
		{"edited outcome", sqlTamper(
			"UPDATE audit_log SET outcome = 'ok' WHERE seq = 8"), 8, ReasonHash},
		{"edited time", sqlTamper(
			"UPDATE audit_log SET time = '2020-01-01T00:00:00.000000000Z' WHERE seq = 4"),
			4, ReasonHash},
		{"unreadable time", sqlTamper(
			"UPDATE audit_log SET time = 'yesterday' WHERE seq = 4"), 4, ReasonMalformed},
		{"deleted row", sqlTamper("DELETE FROM audit_log WHERE seq = 3"), 3, ReasonMissing},
		{"deleted first row", sqlTamper("DELETE FROM audit_log WHERE seq = 1"),
			1, ReasonMissing},
		{"deleted newest row", sqlTamper("DELETE FROM audit_log WHERE seq = 10"),
			10, ReasonMissing},
		{"swapped hashes", sqlTamper(
			"UPDATE audit_log SET hash = 'x' WHERE seq = 2",
			"UPDATE audit_log SET hash = (SELECT prev_hash FROM audit_log WHERE seq = 4) "+
				"WHERE seq = 2",
			"UPDATE audit_log SET hash = (SELECT prev_hash FROM audit_log WHERE seq = 2) "+
				"WHERE seq = 3"),
			2, ReasonHash},
		{"reordered rows", sqlTamper(
			"UPDATE audit_log SET seq = 100 WHERE seq = 2",
			"UPDATE audit_log SET seq = 2 WHERE seq = 3",
			"UPDATE audit_log SET seq = 3 WHERE seq = 100"),
			2, ReasonPrevLink},
		{"edited and rehashed", rehash(3), 4, ReasonPrevLink},
		{"edited head", sqlTamper("UPDATE audit_head SET hash = '" + GenesisHash + "'"),
			10, ReasonHead},
		{"row added behind the head", forgeAfter(10), 11, ReasonHead},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, db, _ := newTestLog(t)
			fillLog(t, l)
			tc.mutate(t, db)

			_, err := l.Verify(context.Background())
			var ce *ChainError
			if !errors.As(err, &ce) {
				t.Fatalf("Verify error = %v, want a ChainError", err)
			}
			if ce.Seq != tc.seq || ce.Reason != tc.reason {
				t.Errorf("Verify = entry %d %q, want entry %d %q (%v)", ce.Seq, ce.Reason,
					tc.seq, tc.reason, err)
			}
		})
	}
}

func sqlTamper(stmts ...string) func(t *testing.T, db *sql.DB) {
	return func(t *testing.T, db *sql.DB) { tamper(t, db, stmts...) }
}

// rehash edits entry seq and stores its recomputed hash, as someone who
// knows the hash function would: the entry verifies, the link after it
// does not.
func rehash(seq int64) func(t *testing.T, db *sql.DB) {
	return func(t *testing.T, db *sql.DB) {
		e, err := scanEntry(db.QueryRow(
			"SELECT "+entryColumns+" FROM audit_log WHERE seq = ?", seq))
		if err != nil {
			t.Fatal(err)
		}

		e.Details = json.RawMessage(`{"spec_hash":"sha256:evil"}`)
		tamper(t, db)
		_, err = db.Exec("UPDATE audit_log SET details = ?, hash = ? WHERE seq = ?",
			string(e.Details), e.ComputeHash(), seq)
		if err != nil {
			t.Fatal(err)
		}
	}
}

// forgeAfter inserts a well-chained copy of entry seq after it, without
// moving the head.
func forgeAfter(seq int64) func(t *testing.T, db *sql.DB) {
	return func(t *testing.T, db *sql.DB) {
		e, err := scanEntry(db.QueryRow(
			"SELECT "+entryColumns+" FROM audit_log WHERE seq = ?", seq))
		if err != nil {
			t.Fatal(err)
		}

		e.Seq, e.PrevHash = seq+1, e.Hash
		head := Head{Seq: seq, Hash: e.Hash}
		shared := sqldb.New(db)
		defer shared.Close()

		err = shared.Write(context.Background(), func(tx sqldb.Tx) error {
			return appendTx(context.Background(), tx, &head, &e)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
