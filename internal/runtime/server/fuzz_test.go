package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzDecodeRequest checks that no request line panics the decoder, that
// only invalid JSON is refused, and that a decoded method is the line's
// "method" string.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"method":"health","token":"ab"}`,
		`{"method":"deploy","app_name":null,"cmd":["a",1],"github_release":{"repo":"o/r"}}`,
		`{"method":5}`, `[1,2]`, `null`, `"x"`, ``, `{`, "{\"method\":\"\xff\"}",
		`{"method":"logs","id":"x","tail":1e3}`, `{"method":"a","method":"b"}`,
	} {
		f.Add([]byte(seed))
	}

	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := decodeRequest(line)
		if valid := json.Valid(line); (err == nil) != valid {
			t.Fatalf("decodeRequest(%q) error %v, but json.Valid = %v", line, err, valid)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "invalid json: ") {
				t.Fatalf("error %q lacks the invalid json prefix", err)
			}
			return
		}

		if m, _ := stringField(req.fields, "method"); m != req.method {
			t.Fatalf("method %q, but the line's method member is %q", req.method, m)
		}

		// The request-level decoders must not panic either.
		decodeDeploy(req.fields)
		reportData(req.fields)
		stringsField(req.fields, "cmd")
		uintField(req.fields, "tail", 100)
	})
}

// FuzzReadLine checks the line reader against a simple split: every line
// within the limit comes back whole and in order.
func FuzzReadLine(f *testing.F) {
	f.Add([]byte("a\nbc\n\nlast"))
	f.Add([]byte("\n\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(strings.NewReader(string(data)), 16)
		want := strings.Split(string(data), "\n")
		if want[len(want)-1] == "" {
			want = want[:len(want)-1]
		}

		for i, w := range want {
			line, err := readLine(br)
			if string(line) != w {
				t.Fatalf("line %d = %q, want %q", i, line, w)
			}
			if err != nil && !(errors.Is(err, io.EOF) && i == len(want)-1) {
				t.Fatalf("line %d: %v", i, err)
			}
		}
	})
}
