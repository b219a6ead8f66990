package runtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// maxReplyLine bounds one reply line; logs of 100 long lines fit easily.
const maxReplyLine = 64 << 20

// ClientOptions configures a [Client].
type ClientOptions struct {
	// SocketPath is the runtime's unix socket. Required.
	SocketPath string

	// Token is the runtime's seal token (EE_TOKEN). Empty sends none.
	Token string

	// DialTimeout bounds connecting to the socket. Zero means 5s.
	DialTimeout time.Duration
}

// Client calls a runtime, one connection per call. It is safe for
// concurrent use.
type Client struct {
	opts ClientOptions
}

// NewClient validates opts and returns a client.
func NewClient(opts ClientOptions) (*Client, error) {
	if opts.SocketPath == "" {
		return nil, errors.New("runtime: SocketPath is required")
	}

	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	return &Client{opts: opts}, nil
}

// SocketPath returns the socket the client talks to.
func (c *Client) SocketPath() string { return c.opts.SocketPath }

// Health calls "health".
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.call(ctx, map[string]any{"method": MethodHealth}, &h)
	return h, err
}

// List calls "list".
func (c *Client) List(ctx context.Context) ([]Deployment, error) {
	var r struct {
		Deployments []Deployment `json:"deployments"`
	}
	err := c.call(ctx, map[string]any{"method": MethodList}, &r)
	return r.Deployments, err
}

// Find returns the deployment of app, or nil when the runtime has none. When
// several entries share the name, a live one wins over a finished one.
func (c *Client) Find(ctx context.Context, app string) (*Deployment, error) {
	deps, err := c.List(ctx)
	if err != nil {
		return nil, err
	}

	var found *Deployment
	for i := range deps {
		d := &deps[i]
		if d.AppName != app {
			continue
		}
		if found == nil || (Terminal(found.Status) && !Terminal(d.Status)) {
			found = d
		}
	}

	return found, nil
}

// Logs calls "logs" for deployment id and returns at most tail lines.
func (c *Client) Logs(ctx context.Context, id string, tail int) ([]string, error) {
	var r struct {
		Lines []string `json:"lines"`
	}
	req := map[string]any{"method": MethodLogs, "id": id, "tail": tail}
	err := c.call(ctx, req, &r)
	return r.Lines, err
}

// Deploy calls "deploy" with spec and returns the new deployment's id.
// The runtime answers at once; the work happens in the background.
func (c *Client) Deploy(ctx context.Context, spec workload.Spec) (string, error) {
	req, err := specRequest(spec)
	if err != nil {
		return "", err
	}

	var r struct {
		ID string `json:"id"`
	}
	if err := c.call(ctx, req, &r); err != nil {
		return "", err
	}
	return r.ID, nil
}

// specRequest turns a spec into a deploy request object.
func specRequest(spec workload.Spec) (map[string]any, error) {
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encoding spec: %w", err)
	}

	req := map[string]any{}
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("encoding spec: %w", err)
	}
	req["method"] = MethodDeploy
	return req, nil
}

// Stop calls "stop" for deployment id.
func (c *Client) Stop(ctx context.Context, id string) error {
	return c.call(ctx, map[string]any{"method": MethodStop, "id": id}, nil)
}

// Exec runs argv on the runtime host and waits for it. timeout is rounded
// up to whole seconds; zero means the runtime's default.
func (c *Client) Exec(ctx context.Context, argv []string, timeout time.Duration) (ExecResult, error) {
	req := map[string]any{"method": MethodExec, "cmd": argv}
	if timeout > 0 {
		req["timeout_secs"] = int64((timeout + time.Second - 1) / time.Second)
	}

	var r ExecResult
	err := c.call(ctx, req, &r)
	return r, err
}

// Attest calls "attest" with up to 64 bytes of report data.
func (c *Client) Attest(ctx context.Context, reportData []byte) (Attestation, error) {
	req := map[string]any{"method": MethodAttest}
	if len(reportData) > 0 {
		req["report_data_b64"] = reportData // encoding/json writes []byte as std base64
	}

	var a Attestation
	err := c.call(ctx, req, &a)
	return a, err
}

// Attach opens a PTY session running argv (nil means the runtime's shell).
// After the acknowledgement the returned connection carries raw terminal
// bytes both ways; closing it ends the session. The caller must not
// half-close it (easyenclave.md §1.5).
func (c *Client) Attach(ctx context.Context, argv []string) (net.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}

	req := map[string]any{"method": MethodAttach}
	if len(argv) > 0 {
		req["cmd"] = argv
	}

	if err := c.writeRequest(conn, req); err != nil {
		conn.Close()
		return nil, err
	}

	line, err := readLineUnbuffered(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading attach ack: %w", err)
	}
	if err := decodeReply(MethodAttach, line, nil); err != nil {
		conn.Close()
		return nil, err
	}

	return conn, nil
}

// readLineUnbuffered reads one line a byte at a time so that no terminal
// bytes after the acknowledgement are swallowed by a buffer.
func readLineUnbuffered(r io.Reader) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)

	for len(line) < maxReplyLine {
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}

	return nil, errors.New("reply line too long")
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: c.opts.DialTimeout}
	conn, err := d.DialContext(ctx, "unix", c.opts.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("runtime: connecting to %s: %w", c.opts.SocketPath, err)
	}
	return conn, nil
}

func (c *Client) writeRequest(conn net.Conn, req map[string]any) error {
	if c.opts.Token != "" {
		req["token"] = c.opts.Token
	}

	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encoding request: %w", err)
	}
	if _, err := conn.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("runtime: writing request: %w", err)
	}
	return nil
}

// call sends one request and decodes its reply into out (which may be nil).
func (c *Client) call(ctx context.Context, req map[string]any, out any) error {
	method, _ := req["method"].(string)
	conn, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()

	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := c.writeRequest(conn, req); err != nil {
		return err
	}

	// the reply is exactly one line
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 0, 64<<10), maxReplyLine)
	if !sc.Scan() {
		if ctx.Err() != nil {
			return fmt.Errorf("runtime %s: %w", method, ctx.Err())
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("runtime %s: reading reply: %w", method, err)
		}
		return fmt.Errorf("runtime %s: connection closed without a reply", method)
	}

	return decodeReply(method, sc.Bytes(), out)
}

// decodeReply checks the envelope's "ok" and decodes the rest into out.
func decodeReply(method string, line []byte, out any) error {
	var env struct {
		OK    *bool  `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(line), &env); err != nil {
		return fmt.Errorf("runtime %s: decoding reply: %w", method, err)
	}

	if env.OK == nil {
		return fmt.Errorf("runtime %s: reply has no \"ok\" field", method)
	}
	if !*env.OK {
		return &Error{Method: method, Message: env.Error}
	}

	if out == nil {
		return nil
	}
	if err := json.Unmarshal(line, out); err != nil {
		return fmt.Errorf("runtime %s: decoding reply: %w", method, err)
	}
	return nil
}
