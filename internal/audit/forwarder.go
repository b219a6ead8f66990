package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Recorder records events. [*Log] and [*Forwarder] implement it, so code
// that runs in the control plane and in agents records the same way.
type Recorder interface {
	Append(ctx context.Context, ev Event) (Entry, error)
}

var (
	_ Recorder = (*Log)(nil)
	_ Recorder = (*Forwarder)(nil)
)

// SendFunc delivers entries, oldest first, to the control plane. It must
// return nil only once the control plane has recorded all of them (with
// [Log.Import]); the forwarder then forgets them. A SendFunc may be
// called again with entries it already delivered, when the forwarder
// could not learn that it succeeded.
type SendFunc func(ctx context.Context, entries []Entry) error

// ForwarderOptions configures [OpenForwarder].
type ForwarderOptions struct {
	// Path is the queue file: one JSON [Entry] a line. The head the
	// control plane acknowledged is kept beside it in Path + ".ack".
	// Required; its directory is created private if missing.
	Path string
	// Logger receives the forwarder's own events. Nil discards them.
	Logger *slog.Logger
	// Now is the clock of events recorded without a time. Nil means
	// time.Now.
	Now func() time.Time
	// Batch is the most entries one SendFunc call carries. Zero means
	// 100; at most MaxImport.
	Batch int
}

// Forwarder is an agent's audit log: a chain of its own in a local
// append-only file, whose entries it keeps until the control plane
// acknowledges them. Appends are on disk (fsynced) before they return;
// acknowledged entries are then dropped from the file, and the chain goes
// on from the acknowledged head, so the file holds only what the control
// plane may not have yet. A Forwarder is safe for concurrent use.
//
// The pending entries are also held in memory; an agent that cannot reach
// its control plane for long grows both.
type Forwarder struct {
	path, ackPath string
	log           *slog.Logger
	now           func() time.Time
	batch         int
	kick          chan struct{} // wakes Run after an append

	shipMu sync.Mutex // one Ship at a time, so no batch is sent twice at once

	mu      sync.Mutex // guards the fields below
	file    *os.File   // the queue opened for appending; nil once closed
	size    int64      // length of the queue's complete lines
	acked   Head       // the last entry the control plane recorded
	pending []Entry    // the entries after acked, oldest first
	head    Head       // the newest entry
	broken  error      // a write that could not be undone; appends fail with it
}

// OpenForwarder opens the queue at opts.Path, creating it if missing, and
// checks its chain. A line cut short by a crash during an append (which
// then never returned) is dropped; any other damage, or a chain that does
// not verify, is an error wrapping a [*ChainError], and the files are left
// as they are for inspection.
func OpenForwarder(opts ForwarderOptions) (*Forwarder, error) {
	f, err := newForwarder(opts)
	if err != nil {
		return nil, err
	}

	if err := f.load(); err != nil {
		return nil, fmt.Errorf("audit: opening forwarder %s: %w", opts.Path, err)
	}
	return f, nil
}

func newForwarder(opts ForwarderOptions) (*Forwarder, error) {
	if opts.Path == "" {
		return nil, errors.New("audit: forwarder path is required")
	}
	if opts.Batch < 0 || opts.Batch > MaxImport {
		return nil, fmt.Errorf("audit: forwarder batch must be between 1 and %d", MaxImport)
	}

	f := &Forwarder{path: opts.Path, ackPath: opts.Path + ".ack", log: opts.Logger,
		now: opts.Now, batch: opts.Batch, kick: make(chan struct{}, 1)}

	// zero options mean the defaults.
	if f.log == nil {
		f.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if f.now == nil {
		f.now = time.Now
	}
	if f.batch == 0 {
		f.batch = 100
	}
	return f, nil
}

// load reads the acknowledged head and the queue, checks that they form
// one chain, repairs a torn last line, and opens the queue for appending.
func (f *Forwarder) load() error {
	if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
		return fmt.Errorf("creating directory: %w", err)
	}

	acked, err := readAck(f.ackPath)
	if err != nil {
		return err
	}
	entries, size, torn, err := readQueue(f.path)
	if err != nil {
		return err
	}

	pending, err := pendingAfter(acked, entries)
	if err != nil {
		return err
	}

	f.acked, f.pending, f.size, f.head = acked, pending, size, acked
	if len(pending) > 0 {
		last := pending[len(pending)-1]
		f.head = Head{Seq: last.Seq, Hash: last.Hash}
	}

	if torn {
		f.log.Warn("audit queue had a torn last line; dropped it", "path", f.path)
	}
	if torn || len(pending) < len(entries) {
		// Rewriting also drops the torn line: it was never appended.
		return f.compactLocked()
	}
	return f.openLocked()
}

// readAck reads the acknowledged head; without a file, nothing was.
func readAck(path string) (Head, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Head{Seq: 0, Hash: GenesisHash}, nil
	}
	if err != nil {
		return Head{}, fmt.Errorf("reading acknowledged head: %w", err)
	}

	var h Head
	if err := json.Unmarshal(data, &h); err != nil || h.Seq < 0 || !validHash(h.Hash) {
		return Head{}, fmt.Errorf("reading acknowledged head: %s is malformed", path)
	}
	return h, nil
}

// readQueue parses the queue's complete lines. Text after the last
// newline is a torn append: size excludes it and torn reports it.
func readQueue(path string) (entries []Entry, size int64, torn bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("reading queue: %w", err)
	}

	complete := data[:bytes.LastIndexByte(data, '\n')+1]
	for i, line := range bytes.SplitAfter(complete, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, 0, false, fmt.Errorf("queue line %d: %w", i+1, err)
		}
		entries = append(entries, e)
	}
	return entries, int64(len(complete)), len(complete) < len(data), nil
}

// pendingAfter checks that entries form one chain that reaches at least to
// the acknowledged head and agrees with it, and returns those after it.
// The queue may still hold acknowledged entries when a crash came between
// writing the acknowledgement and compacting the queue.
func pendingAfter(acked Head, entries []Entry) ([]Entry, error) {
	if len(entries) == 0 {
		return nil, nil
	}

	first := entries[0]
	if first.Seq > acked.Seq+1 {
		return nil, &ChainError{Seq: acked.Seq + 1, Reason: ReasonMissing,
			Detail: fmt.Sprintf("the queue starts at entry %d", first.Seq)}
	}

	c := newChainChecker(Head{Seq: first.Seq - 1, Hash: first.PrevHash})
	var pending []Entry
	for i := range entries {
		e := &entries[i]
		if cerr := c.check(e); cerr != nil {
			return nil, cerr
		}

		switch {
		case e.Seq == acked.Seq && e.Hash != acked.Hash:
			return nil, &ChainError{Seq: e.Seq, Reason: ReasonHead,
				Detail: "differs from the entry the control plane acknowledged"}
		case e.Seq == acked.Seq+1 && e.PrevHash != acked.Hash:
			return nil, &ChainError{Seq: e.Seq, Reason: ReasonPrevLink,
				Detail: "does not follow the acknowledged entry"}
		case e.Seq > acked.Seq:
			pending = append(pending, *e)
		}
	}

	if c.last.Seq < acked.Seq {
		return nil, &ChainError{Seq: c.last.Seq + 1, Reason: ReasonOrder,
			Detail: fmt.Sprintf("the acknowledged head is entry %d", acked.Seq)}
	}
	return pending, nil
}

// Append records ev as the next entry of the agent's chain, on disk, and
// returns it. An event that breaks a rule of its fields fails with
// [ErrInvalid]; on any error nothing is recorded.
func (f *Forwarder) Append(ctx context.Context, ev Event) (Entry, error) {
	if err := ctx.Err(); err != nil {
		return Entry{}, fmt.Errorf("audit: recording %q: %w", ev.Action, err)
	}

	e, err := newEntry(ev, f.now)
	if err != nil {
		return Entry{}, fmt.Errorf("audit: recording %q: %w: %w", ev.Action, ErrInvalid, err)
	}

	f.mu.Lock()
	err = f.appendLocked(&e)
	f.mu.Unlock()
	if err != nil {
		return Entry{}, fmt.Errorf("audit: recording %q: %w", ev.Action, err)
	}

	select {
	case f.kick <- struct{}{}:
	default:
	}
	return e, nil
}

func (f *Forwarder) appendLocked(e *Entry) error {
	switch {
	case f.file == nil:
		return fmt.Errorf("forwarder: %w", os.ErrClosed)
	case f.broken != nil:
		return f.broken
	}

	e.Seq, e.PrevHash = f.head.Seq+1, f.head.Hash
	e.Hash = e.ComputeHash()
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encoding entry: %w", err)
	}

	line = append(line, '\n')
	if _, err := f.file.Write(line); err != nil {
		return f.undoLocked(fmt.Errorf("writing queue: %w", err))
	}
	if err := f.file.Sync(); err != nil {
		return f.undoLocked(fmt.Errorf("syncing queue: %w", err))
	}

	f.size += int64(len(line))
	f.pending = append(f.pending, *e)
	f.head = Head{Seq: e.Seq, Hash: e.Hash}
	return nil
}

// undoLocked cuts a failed append off the queue. If that fails too, the
// queue may hold half a line, and appending after it would hide the next
// entry, so the forwarder refuses appends until it is reopened.
func (f *Forwarder) undoLocked(err error) error {
	if terr := f.file.Truncate(f.size); terr != nil {
		f.broken = fmt.Errorf("audit queue unusable until reopened: %w", errors.Join(err, terr))
		f.log.Error("audit queue unusable", "path", f.path, "err", f.broken)
	}
	return err
}

// Ship sends the pending entries with send, in batches, oldest first,
// until none is left, send fails or ctx ends, and returns how many the
// control plane acknowledged. Each acknowledged batch is forgotten before
// the next is sent.
func (f *Forwarder) Ship(ctx context.Context, send SendFunc) (int, error) {
	f.shipMu.Lock()
	defer f.shipMu.Unlock()

	shipped := 0
	for {
		if err := ctx.Err(); err != nil {
			return shipped, fmt.Errorf("audit: shipping: %w", err)
		}

		batch, err := f.nextBatch()
		if err != nil || len(batch) == 0 {
			return shipped, err
		}
		if err := send(ctx, batch); err != nil {
			return shipped, fmt.Errorf("audit: shipping %d entries: %w", len(batch), err)
		}

		if err := f.acknowledge(batch[len(batch)-1]); err != nil {
			return shipped, fmt.Errorf("audit: shipping: %w", err)
		}
		shipped += len(batch)
	}
}

func (f *Forwarder) nextBatch() ([]Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	if f.file == nil {
		return nil, fmt.Errorf("audit: shipping: forwarder: %w", os.ErrClosed)
	}
	return append([]Entry(nil), f.pending[:min(len(f.pending), f.batch)]...), nil
}

// acknowledge records that the control plane has every entry up to last,
// then drops them from memory and from the queue. The acknowledgement is
// written first: a crash before the queue is rewritten leaves acknowledged
// entries in the queue, which the next open skips.
func (f *Forwarder) acknowledge(last Entry) error {
	f.mu.Lock()
	defer f.mu.Unlock()

	head := Head{Seq: last.Seq, Hash: last.Hash}
	data, err := json.Marshal(head)
	if err != nil {
		return fmt.Errorf("encoding acknowledged head: %w", err)
	}
	if err := writeFileAtomic(f.ackPath, append(data, '\n')); err != nil {
		return fmt.Errorf("writing acknowledged head: %w", err)
	}

	f.acked = head
	n := 0
	for n < len(f.pending) && f.pending[n].Seq <= last.Seq {
		n++
	}
	f.pending = append([]Entry(nil), f.pending[n:]...)
	if f.file == nil {
		return nil
	}

	if err := f.compactLocked(); err != nil {
		// Not fatal while the old queue is still open: it keeps growing
		// and the next open skips the acknowledged entries.
		f.log.Warn("audit queue not compacted", "path", f.path, "err", err)
	}
	return nil
}

// compactLocked rewrites the queue with only the pending entries and
// reopens it for appending.
func (f *Forwarder) compactLocked() error {
	var buf bytes.Buffer
	for i := range f.pending {
		line, err := json.Marshal(&f.pending[i])
		if err != nil {
			return fmt.Errorf("encoding entry %d: %w", f.pending[i].Seq, err)
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}

	if err := writeFileAtomic(f.path, buf.Bytes()); err != nil {
		return fmt.Errorf("rewriting queue: %w", err)
	}
	f.size = int64(buf.Len())
	return f.openLocked()
}

// openLocked (re)opens the queue for appending. Once the queue was
// replaced, a failure leaves the old handle pointing at a removed file, so
// the forwarder stops accepting appends.
func (f *Forwarder) openLocked() error {
	file, err := os.OpenFile(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		err = fmt.Errorf("opening queue: %w", err)
		if f.file != nil {
			f.broken = err
		}
		return err
	}

	if f.file != nil {
		f.file.Close()
	}
	f.file, f.broken = file, nil
	return nil
}

// writeFileAtomic replaces path with data: readers and a crash see either
// the old or the new contents, never a mix.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename

	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return err
	}

	// The rename is durable only once the directory is synced.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Pending returns a copy of the entries not yet acknowledged, oldest
// first.
func (f *Forwarder) Pending() []Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Entry(nil), f.pending...)
}

// Head returns the newest entry of the agent's chain.
func (f *Forwarder) Head() Head {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.head
}

// Run ships pending entries every interval, and soon after each append,
// until ctx ends; then it returns nil. After a failed send it waits for
// the next tick, so that a control plane that is down is not called at
// the rate of appends. interval zero means 10s. The caller owns the
// goroutine that runs it and closes the forwarder after Run returned.
func (f *Forwarder) Run(ctx context.Context, send SendFunc, interval time.Duration) error {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()

	for {
		kick := f.kick
		if _, err := f.Ship(ctx, send); err != nil && ctx.Err() == nil {
			f.log.Warn("audit entries not shipped", "err", err, "pending", len(f.Pending()))
			kick = nil
		}

		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-kick:
		}
	}
}

// Close closes the queue. Entries not yet acknowledged stay in it for the
// next [OpenForwarder]. Calling Close again returns nil; appending or
// shipping after Close fails with os.ErrClosed.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()

	if f.file == nil {
		return nil
	}
	err := f.file.Close()
	f.file = nil
	return err
}
