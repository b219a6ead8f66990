package audit

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Reason says why a chain does not verify.
type Reason string

// The reasons [ChainError] gives, each naming the first entry affected.
const (
	// ReasonMissing: the entry is absent; the numbering has a gap, or the
	// head records more entries than there are (the newest were deleted).
	ReasonMissing Reason = "entry missing"
	// ReasonOrder: an entry repeats or goes back in the numbering.
	ReasonOrder Reason = "entry out of order"
	// ReasonPrevLink: the entry's prev_hash is not its predecessor's
	// hash, e.g. the predecessor was edited and its hash recomputed.
	ReasonPrevLink Reason = "prev_hash does not match the previous entry"
	// ReasonHash: the stored hash is not the hash of the stored fields;
	// a field was edited.
	ReasonHash Reason = "hash does not match the entry's fields"
	// ReasonMalformed: a stored field cannot be decoded at all.
	ReasonMalformed Reason = "entry unreadable"
	// ReasonHead: the recorded head is not the last entry.
	ReasonHead Reason = "head does not match the last entry"
	// ReasonOriginHash: a copy of an agent's entry does not hash to the
	// agent's hash that it records.
	ReasonOriginHash Reason = "copy does not match the agent's hash"
	// ReasonOriginLink: copies of an agent's entries do not continue the
	// agent's chain.
	ReasonOriginLink Reason = "copy does not continue the agent's chain"
)

// ChainError reports the first entry of a chain that does not verify.
type ChainError struct {
	Seq    int64
	Reason Reason
	// Detail says what was expected and found, e.g. the two hashes.
	Detail string
}

func (e *ChainError) Error() string {
	s := fmt.Sprintf("audit: chain broken at entry %d: %s", e.Seq, e.Reason)
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// chainChecker checks entries one at a time, in order, against the chain
// rules of the package doc.
type chainChecker struct {
	last    Head            // the last good entry, or where the chain starts
	origins map[string]Head // per agent, the last copied entry of its chain
}

func newChainChecker(start Head) *chainChecker {
	return &chainChecker{last: start, origins: make(map[string]Head)}
}

// check verifies that e follows the last good entry, then makes e the last
// good entry. The link is checked before the hash so that an edited and
// rehashed entry is reported where the chain visibly breaks.
func (c *chainChecker) check(e *Entry) *ChainError {
	switch {
	case e.Seq > c.last.Seq+1:
		return &ChainError{Seq: c.last.Seq + 1, Reason: ReasonMissing,
			Detail: fmt.Sprintf("next present entry is %d", e.Seq)}
	case e.Seq <= c.last.Seq:
		return &ChainError{Seq: e.Seq, Reason: ReasonOrder,
			Detail: fmt.Sprintf("follows entry %d", c.last.Seq)}
	case e.PrevHash != c.last.Hash:
		return &ChainError{Seq: e.Seq, Reason: ReasonPrevLink,
			Detail: fmt.Sprintf("prev_hash %s, entry %d has %s", short(e.PrevHash),
				c.last.Seq, short(c.last.Hash))}
	}

	if got := e.ComputeHash(); got != e.Hash {
		return &ChainError{Seq: e.Seq, Reason: ReasonHash,
			Detail: fmt.Sprintf("stored %s, computed %s", short(e.Hash), short(got))}
	}
	if err := c.checkOrigin(e); err != nil {
		return err
	}

	c.last = Head{Seq: e.Seq, Hash: e.Hash}
	return nil
}

// checkOrigin verifies a copy of an agent's entry: it must hash to the
// agent's own hash, and the copies of one agent must follow each other.
// The first copy of an agent may start anywhere in its chain; see
// [Log.Import].
func (c *chainChecker) checkOrigin(e *Entry) *ChainError {
	o := e.Origin
	if o == nil || o.Agent == "" {
		return nil
	}

	orig := *e
	orig.Seq, orig.PrevHash, orig.Origin = o.Seq, o.PrevHash, nil
	if got := orig.ComputeHash(); got != o.Hash {
		return &ChainError{Seq: e.Seq, Reason: ReasonOriginHash,
			Detail: fmt.Sprintf("agent %s entry %d: recorded %s, computed %s",
				o.Agent, o.Seq, short(o.Hash), short(got))}
	}

	if prev, ok := c.origins[o.Agent]; ok && (o.Seq != prev.Seq+1 || o.PrevHash != prev.Hash) {
		return &ChainError{Seq: e.Seq, Reason: ReasonOriginLink,
			Detail: fmt.Sprintf("agent %s entry %d after its entry %d", o.Agent, o.Seq, prev.Seq)}
	}
	c.origins[o.Agent] = Head{Seq: o.Seq, Hash: o.Hash}
	return nil
}

// short abbreviates a hash for messages.
func short(h string) string {
	if len(h) > 12 {
		return h[:12] + "…"
	}
	return h
}

// Verify recomputes the whole chain, oldest entry first, and checks it
// against the recorded head. It returns the head when every entry
// verifies, a [*ChainError] naming the first entry that does not, or
// another error when the database cannot be read. It reads one consistent
// snapshot and writes nothing.
func (l *Log) Verify(ctx context.Context) (Head, error) {
	tx, err := l.db.SQL().BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return Head{}, fmt.Errorf("audit: verifying: %w", err)
	}
	defer tx.Rollback()

	c := newChainChecker(Head{Seq: 0, Hash: GenesisHash})
	if err := verifyRows(ctx, tx, c); err != nil {
		return Head{}, err
	}

	var head Head
	err = tx.QueryRowContext(ctx,
		"SELECT seq, hash FROM audit_head WHERE id = 1").Scan(&head.Seq, &head.Hash)
	if err != nil {
		return Head{}, fmt.Errorf("audit: verifying: reading head: %w", err)
	}

	if err := checkHead(c.last, head); err != nil {
		return Head{}, err
	}
	return head, nil
}

func verifyRows(ctx context.Context, tx *sql.Tx, c *chainChecker) error {
	rows, err := tx.QueryContext(ctx, "SELECT "+entryColumns+" FROM audit_log ORDER BY seq")
	if err != nil {
		return fmt.Errorf("audit: verifying: %w", err)
	}
	defer rows.Close()

	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			if e.Seq == 0 {
				return fmt.Errorf("audit: verifying: %w", err)
			}
			return &ChainError{Seq: e.Seq, Reason: ReasonMalformed, Detail: err.Error()}
		}
		if cerr := c.check(&e); cerr != nil {
			return cerr
		}
	}

	if err := rows.Err(); err != nil {
		return fmt.Errorf("audit: verifying: %w", err)
	}
	return nil
}

// checkHead compares the last entry with the head the appends recorded.
func checkHead(last, head Head) error {
	switch {
	case head.Seq > last.Seq:
		return &ChainError{Seq: last.Seq + 1, Reason: ReasonMissing,
			Detail: fmt.Sprintf("the head records %d entries", head.Seq)}
	case head.Seq < last.Seq:
		return &ChainError{Seq: head.Seq + 1, Reason: ReasonHead,
			Detail: fmt.Sprintf("the head records only %d entries", head.Seq)}
	case head.Hash != last.Hash:
		return &ChainError{Seq: head.Seq, Reason: ReasonHead,
			Detail: fmt.Sprintf("head %s, entry %s", short(head.Hash), short(last.Hash))}
	}
	return nil
}

// entryColumns are the stored columns of an entry, in [scanEntry]'s order.
const entryColumns = `seq, time, actor_kind, actor_name, actor_id, action, target, outcome,
	details, origin_agent, origin_seq, origin_prev, origin_hash, prev_hash, hash`

type scanner interface{ Scan(dest ...any) error }

// scanEntry reads one row. When a field cannot be decoded it returns the
// error together with the entry's Seq, so that Verify can name it.
func scanEntry(s scanner) (Entry, error) {
	var e Entry
	var t, details string
	var o Origin
	err := s.Scan(&e.Seq, &t, &e.Actor.Kind, &e.Actor.Name, &e.Actor.ID, &e.Action,
		&e.Target, &e.Outcome, &details, &o.Agent, &o.Seq, &o.PrevHash, &o.Hash,
		&e.PrevHash, &e.Hash)
	if err != nil {
		return Entry{}, fmt.Errorf("reading entry: %w", err)
	}

	if e.Time, err = time.Parse(timeLayout, t); err != nil {
		return Entry{Seq: e.Seq}, fmt.Errorf("time %q: %w", t, err)
	}

	e.Details = []byte(details)
	if o != (Origin{}) {
		e.Origin = &o
	}
	return e, nil
}
