package server

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
)

var errLineTooLong = fmt.Errorf("request line exceeds %d bytes", MaxRequestLine)

// request is one decoded request line.
type request struct {
	// fields holds the line's members; nil when the line is JSON but not
	// an object, which then has neither token nor method.
	fields map[string]json.RawMessage
	method string // "" when missing or not a string
}

// decodeRequest parses one request line. Its error, the only one, is the
// "invalid json: …" reply.
func decodeRequest(line []byte) (request, error) {
	var req request
	err := json.Unmarshal(line, &req.fields)
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return request{}, nil // valid JSON, but no object
	}
	if err != nil {
		return request{}, fmt.Errorf("invalid json: %v", err)
	}

	req.method, _ = stringField(req.fields, "method")
	return req, nil
}

// stringField returns fields[name] when it is a JSON string.
func stringField(fields map[string]json.RawMessage, name string) (string, bool) {
	raw, ok := fields[name]
	if !ok {
		return "", false
	}

	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// uintField returns fields[name] when it is a non-negative JSON integer,
// else def, as EasyEnclave reads "tail" and "timeout_secs".
func uintField(fields map[string]json.RawMessage, name string, def uint64) uint64 {
	raw, ok := fields[name]
	if !ok {
		return def
	}

	v, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil {
		return def
	}
	return v
}

// stringsField returns the string items of the array fields[name], dropping
// others as EasyEnclave does; ok is false when there is no array.
func stringsField(fields map[string]json.RawMessage, name string) (items []string, ok bool) {
	var raw []json.RawMessage
	if v, present := fields[name]; !present || string(v) == "null" || json.Unmarshal(v, &raw) != nil {
		return nil, false
	}

	items = make([]string, 0, len(raw))
	for _, r := range raw {
		var s string
		if json.Unmarshal(r, &s) == nil {
			items = append(items, s)
		}
	}
	return items, true
}

// authorized checks the seal token in constant time (easyenclave.md §1.2).
func (s *Server) authorized(req request) bool {
	if s.token == "" {
		return true
	}
	tok, ok := stringField(req.fields, "token")
	return ok && subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) == 1
}

// serveConn answers the requests of one connection in order until the
// client closes it, the server shuts down, or an attach takes it over.
func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	br := bufio.NewReaderSize(conn, 64<<10)
	for {
		line, readErr := readLine(br)
		if errors.Is(readErr, errLineTooLong) {
			// The rest of the line cannot be told from the next request.
			writeReply(conn, errorReply{Error: readErr.Error()})
			return
		}
		if readErr != nil && len(line) == 0 {
			return
		}

		req, err := decodeRequest(line)
		var reply any
		switch {
		case err != nil:
			reply = errorReply{Error: err.Error()}
		case !s.authorized(req):
			reply = errorReply{Error: runtime.ErrUnauthenticated}
		case req.method == runtime.MethodAttach:
			s.attach(ctx, conn, br, req)
			return
		default:
			reply = s.dispatch(ctx, req)
		}

		if writeReply(conn, reply) != nil || readErr != nil {
			return
		}
	}
}

// readLine reads one line without its newline. A last line without one is
// returned with io.EOF.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > MaxRequestLine+1 {
			return nil, errLineTooLong
		}
		line = append(line, chunk...)

		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			return line, io.EOF
		default:
			return line, err
		}
	}
}

// writeReply writes one reply line; a reply that cannot be encoded becomes
// EasyEnclave's "serialize error".
func writeReply(w io.Writer, reply any) error {
	out, err := json.Marshal(reply)
	if err != nil {
		out = []byte(`{"ok":false,"error":"serialize error"}`)
	}

	_, err = w.Write(append(out, '\n'))
	return err
}

// dispatch answers every method but attach.
func (s *Server) dispatch(ctx context.Context, req request) any {
	switch req.method {
	case "":
		return errorReply{Error: runtime.ErrMissingMethod}
	case runtime.MethodHealth:
		return s.health()
	case runtime.MethodList:
		return listReply{OK: true, Deployments: s.list()}
	case runtime.MethodLogs:
		return s.logs(req.fields)
	case runtime.MethodDeploy:
		return s.deployRequest(ctx, req.fields)
	case runtime.MethodStop:
		return s.stopRequest(req.fields)
	case runtime.MethodExec:
		return s.execRequest(ctx, req.fields)
	case runtime.MethodAttest:
		return s.attest(ctx, req.fields)
	default:
		return errorReply{Error: "unknown method: " + req.method}
	}
}

func (s *Server) health() any {
	s.mu.Lock()
	n, since := len(s.deps), s.upSince
	s.mu.Unlock()

	r := healthReply{OK: true}
	r.AttestationType = s.attType
	r.Workloads = n
	if !since.IsZero() {
		r.UptimeSecs = int64(s.opts.Now().Sub(since).Seconds())
	}
	return r
}

// logs answers "logs" from the per-app file of the deployment's app, so the
// lines may come from an earlier run of the same app (easyenclave.md §1.4).
func (s *Server) logs(fields map[string]json.RawMessage) any {
	id, ok := stringField(fields, "id")
	if !ok {
		return errorReply{Error: runtime.ErrMissingID}
	}

	app, ok := s.appOf(id)
	if !ok {
		return errorReply{Error: runtime.ErrNotFound}
	}

	tail := uintField(fields, "tail", runtime.DefaultLogTail)
	n := int(min(tail, uint64(s.opts.LogMaxLines)))
	lines, err := tailLines(logPath(s.logDir, app), n)
	if err != nil {
		return errorReply{Error: "read log: " + err.Error()}
	}
	return logsReply{OK: true, Lines: lines}
}

func (s *Server) deployRequest(ctx context.Context, fields map[string]json.RawMessage) any {
	spec, err := decodeDeploy(fields)
	if err != nil {
		return errorReply{Error: "invalid deploy request: " + err.Error()}
	}

	id := s.deploy(ctx, spec, false)
	return deployReply{OK: true, ID: id, Status: runtime.StatusDeploying}
}

func (s *Server) stopRequest(fields map[string]json.RawMessage) any {
	id, ok := stringField(fields, "id")
	if !ok {
		return errorReply{Error: runtime.ErrMissingID}
	}

	if err := s.stop(id); err != nil {
		return errorReply{Error: err.Error()}
	}
	return okReply{OK: true}
}

// Replies. Every one starts with "ok"; errors carry a free-text "error".
type (
	errorReply struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	okReply struct {
		OK bool `json:"ok"`
	}
	healthReply struct {
		OK bool `json:"ok"`
		runtime.Health
	}
	listReply struct {
		OK          bool                 `json:"ok"`
		Deployments []runtime.Deployment `json:"deployments"`
	}
	logsReply struct {
		OK    bool     `json:"ok"`
		Lines []string `json:"lines"`
	}
	deployReply struct {
		OK     bool   `json:"ok"`
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	execReply struct {
		OK bool `json:"ok"`
		runtime.ExecResult
	}
	attestReply struct {
		OK bool `json:"ok"`
		runtime.Attestation
	}
	attestError struct {
		OK              bool   `json:"ok"`
		AttestationType string `json:"attestation_type"`
		Error           string `json:"error"`
	}
)
