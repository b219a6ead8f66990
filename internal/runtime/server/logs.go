package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// logSink writes one spawn's output lines to its app's log file and keeps
// the file at most about a quarter above max lines by rewriting it with the
// newest max lines. Only the output reader of that spawn uses it.
type logSink struct {
	path  string
	app   string
	max   int
	log   *slog.Logger
	f     *os.File
	lines int
}

// logPath is where app's log lives; app is a validated name.
func logPath(dir, app string) string { return filepath.Join(dir, app+".log") }

// createLog starts an empty log for app. The file is replaced, not
// truncated, so a reader still draining an older spawn writes to the old,
// unlinked file instead of into the new one.
func createLog(dir, app string, max int, log *slog.Logger) (*logSink, error) {
	path := logPath(dir, app)
	f, err := os.CreateTemp(dir, "."+app+".log.*")
	if err != nil {
		return nil, fmt.Errorf("creating log: %w", err)
	}

	if err := os.Rename(f.Name(), path); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("creating log: %w", err)
	}
	return &logSink{path: path, app: app, max: max, log: log, f: f}, nil
}

// drain copies r line by line until it ends or fails (a PTY master fails
// with EIO once the terminal closes). Lines longer than MaxLogLine are split;
// invalid UTF-8 is replaced, and reading goes on.
func (l *logSink) drain(r io.Reader) {
	br := bufio.NewReaderSize(r, MaxLogLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			l.add(line)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// add logs one line, dropping its line ending.
func (l *logSink) add(raw []byte) {
	raw = bytes.TrimSuffix(raw, []byte("\n"))
	raw = bytes.TrimSuffix(raw, []byte("\r"))
	line := strings.ToValidUTF8(string(raw), "\uFFFD")

	// The console mirror keeps EasyEnclave's "[app] line" form, which smoke
	// tests grep for, instead of a constant message.
	l.log.Debug("["+l.app+"] "+line, "app", l.app)

	if _, err := l.f.WriteString(line + "\n"); err != nil {
		l.log.Warn("writing log", "app", l.app, "err", err)
		return
	}

	l.lines++
	if l.lines >= l.max+compactSlack(l.max) {
		l.compact()
	}
}

// compactSlack is how far a log may grow past its bound before it is
// rewritten; the slack makes rewrites rare.
func compactSlack(max int) int { return max/4 + 1 }

// compact rewrites the log with its newest max lines.
func (l *logSink) compact() {
	keep, err := tailLines(l.path, l.max)
	if err != nil {
		l.log.Warn("compacting log", "app", l.app, "err", err)
		return
	}

	dir := filepath.Dir(l.path)
	f, err := os.CreateTemp(dir, "."+l.app+".log.*")
	if err != nil {
		l.log.Warn("compacting log", "app", l.app, "err", err)
		return
	}

	var buf bytes.Buffer
	for _, line := range keep {
		buf.WriteString(line)
		buf.WriteByte('\n')
	}
	if _, err := f.Write(buf.Bytes()); err == nil {
		err = os.Rename(f.Name(), l.path)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		l.log.Warn("compacting log", "app", l.app, "err", err)
		return
	}

	l.f.Close()
	l.f, l.lines = f, len(keep)
}

func (l *logSink) close() { l.f.Close() }

// tailLines returns the last n complete lines of the file at path, reading
// backwards so a long log costs only what is returned. A missing file has
// no lines.
func tailLines(path string, n int) ([]string, error) {
	if n <= 0 {
		return []string{}, nil
	}

	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return []string{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()

	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	data, err := readTail(f, fi.Size(), n)
	if err != nil {
		return nil, err
	}
	return lastLines(data, n), nil
}

// readTail reads blocks from the end of f until they hold more than n
// newlines or the whole file.
func readTail(f *os.File, size int64, n int) ([]byte, error) {
	const block = 64 << 10
	var data []byte

	for off := size; off > 0 && bytes.Count(data, []byte("\n")) <= n; {
		start := max(off-block, 0)
		chunk := make([]byte, off-start)
		if _, err := f.ReadAt(chunk, start); err != nil {
			return nil, err
		}
		data = append(chunk, data...)
		off = start
	}

	return data, nil
}

// lastLines splits data into newline-terminated lines and returns the last
// n. A trailing partial line, still being written, is left out; a leading
// one is not complete either, but only ever lies beyond the last n.
func lastLines(data []byte, n int) []string {
	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		return []string{}
	}

	lines := strings.Split(string(data[:end]), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
