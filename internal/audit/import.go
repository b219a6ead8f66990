package audit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

// MaxImport bounds the entries of one [Log.Import] call; a [Forwarder]
// ships batches of at most this many.
const MaxImport = 500

// Import copies entries of agent agentID's own chain (as its [Forwarder]
// ships them) into the log and returns how many were new. agentID must be
// the id the control plane authenticated, never one the agent claims. Each
// copy keeps the agent's fields and time and records the agent's seq and
// hashes in Origin, so that the agent's hash stays checkable.
//
// Import is idempotent: entries already copied are skipped, so a forwarder
// may resend a batch whose acknowledgement it lost. The entries must form
// an unbroken piece of a chain, each hashing correctly ([ErrInvalid]
// otherwise), and must continue the last entry copied from the same agent
// ([ErrOriginGap]). The first batch of an agent may start anywhere,
// because an agent that registers again gets a new id but keeps its
// chain. Nothing is recorded on any error.
func (l *Log) Import(ctx context.Context, agentID string, entries []Entry) (int, error) {
	batch, err := checkBatch(agentID, entries)
	if err != nil {
		return 0, fmt.Errorf("audit: importing from %s: %w: %w", agentID, ErrInvalid, err)
	}
	if len(batch) == 0 {
		return 0, nil
	}

	added := 0
	err = l.db.Write(ctx, func(tx sqldb.Tx) error {
		return l.withHead(ctx, tx, func(head *Head) error {
			n, err := importTx(ctx, tx, head, agentID, batch)
			added = n
			return err
		})
	})
	if err != nil {
		return 0, fmt.Errorf("audit: importing from %s: %w", agentID, err)
	}

	l.log.Debug("audit entries imported", "agent", agentID, "received", len(entries),
		"added", added)
	return added, nil
}

// checkBatch canonicalises and checks forwarded entries on their own: the
// fields, each hash, and the links between them.
func checkBatch(agentID string, entries []Entry) ([]Entry, error) {
	if err := checkText("agent id", agentID, MaxField, true); err != nil {
		return nil, err
	}
	if len(entries) > MaxImport {
		return nil, fmt.Errorf("%d entries, at most %d per batch", len(entries), MaxImport)
	}

	batch := make([]Entry, len(entries))
	for i, e := range entries {
		if err := checkForwarded(&e); err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.Seq, err)
		}
		if i > 0 && (e.Seq != batch[i-1].Seq+1 || e.PrevHash != batch[i-1].Hash) {
			return nil, fmt.Errorf("entry %d does not follow entry %d", e.Seq, batch[i-1].Seq)
		}
		batch[i] = e
	}
	return batch, nil
}

func checkForwarded(e *Entry) error {
	details, err := canonicalDetails(e.Details)
	if err != nil {
		return err
	}
	e.Details, e.Time = details, e.Time.UTC()

	switch {
	case e.Origin != nil:
		return errors.New("an agent's entry has no origin")
	case e.Seq <= 0:
		return errors.New("seq must be positive")
	case !validHash(e.PrevHash) || !validHash(e.Hash):
		return errors.New("hashes must be 64 lowercase hex digits")
	case e.Seq == 1 && e.PrevHash != GenesisHash:
		return errors.New("entry 1 must follow the genesis hash")
	}

	if err := e.validateFields(); err != nil {
		return err
	}
	if e.ComputeHash() != e.Hash {
		return errors.New("hash does not match the entry's fields")
	}
	return nil
}

func importTx(ctx context.Context, tx sqldb.Tx, head *Head, agentID string,
	batch []Entry) (int, error) {
	last, found, err := lastOrigin(ctx, tx, agentID)
	if err != nil {
		return 0, err
	}

	added := 0
	for _, e := range batch {
		if found && e.Seq <= last.Seq {
			if err := checkCopied(ctx, tx, agentID, &e); err != nil {
				return 0, err
			}
			continue
		}

		if found && (e.Seq != last.Seq+1 || e.PrevHash != last.Hash) {
			return 0, fmt.Errorf("%w: entry %d after entry %d", ErrOriginGap, e.Seq, last.Seq)
		}
		e.Origin = &Origin{Agent: agentID, Seq: e.Seq, PrevHash: e.PrevHash, Hash: e.Hash}
		if err := appendTx(ctx, tx, head, &e); err != nil {
			return 0, err
		}
		last, found = Head{Seq: e.Origin.Seq, Hash: e.Origin.Hash}, true
		added++
	}
	return added, nil
}

// lastOrigin returns the newest entry of agentID's chain copied so far.
func lastOrigin(ctx context.Context, tx sqldb.Tx, agentID string) (Head, bool, error) {
	var h Head
	err := tx.QueryRowContext(ctx, `SELECT origin_seq, origin_hash FROM audit_log
		WHERE origin_agent = ? ORDER BY origin_seq DESC LIMIT 1`, agentID).Scan(&h.Seq, &h.Hash)
	if errors.Is(err, sql.ErrNoRows) {
		return Head{}, false, nil
	}
	if err != nil {
		return Head{}, false, fmt.Errorf("reading last copied entry: %w", err)
	}
	return h, true, nil
}

// checkCopied accepts a resent entry only if it is the copy on record.
func checkCopied(ctx context.Context, tx sqldb.Tx, agentID string, e *Entry) error {
	var hash string
	err := tx.QueryRowContext(ctx, `SELECT origin_hash FROM audit_log
		WHERE origin_agent = ? AND origin_seq = ?`, agentID, e.Seq).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: entry %d precedes the first one recorded", ErrOriginGap, e.Seq)
	}
	if err != nil {
		return fmt.Errorf("reading copied entry %d: %w", e.Seq, err)
	}

	if hash != e.Hash {
		return fmt.Errorf("%w: entry %d", ErrOriginConflict, e.Seq)
	}
	return nil
}
