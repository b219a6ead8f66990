package localedge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// Bounds on what the client reads from the API.
const (
	maxReplyBody = 16 << 20 // a view of every tunnel and record
	maxErrorBody = 4 << 10  // an httpapi error
	maxHelloLine = 4 << 10  // the first line of a connection stream
)

// ClientOptions configures a [Client].
type ClientOptions struct {
	// URL is the base URL the [NewAPI] handler is served at, e.g.
	// "http://127.0.0.1:8079". Required.
	URL string

	// Token is the API's bearer token. Required; see [APIOptions].
	Token string

	// HTTPClient sends the requests. Nil means a client that resolves
	// *.localhost to loopback (as [HTTPClient]) and gives each unary call
	// 30 seconds. A Timeout of the client's applies to unary calls only:
	// connection streams are meant to last.
	HTTPClient *http.Client

	// Logger receives link events. Nil discards them.
	Logger *slog.Logger
}

// Client is an [ingress.Provider] and a [Linker] backed by another
// process's [Provider], served with [NewAPI]: a second control plane
// uses it to manage tunnels on the first one's edge, and its connectors
// use it to hold them. It is safe for concurrent use.
type Client struct {
	base   string // the URL without a trailing slash
	token  string
	unary  *http.Client
	stream *http.Client // unary without its Timeout
	log    *slog.Logger
}

var (
	_ ingress.Provider = (*Client)(nil)
	_ Linker           = (*Client)(nil)
)

// APIError is a reply of the API other than the expected success. It
// matches [ingress.ErrNotFound] (with errors.Is) when the API reported
// an unknown tunnel.
type APIError struct {
	Status  int
	Code    string // an httpapi code, e.g. "NOT_FOUND"; empty without a JSON body
	Message string
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("localedge API answered %d", e.Status)
	}
	return fmt.Sprintf("localedge API answered %d %s: %s", e.Status, e.Code, e.Message)
}

// Is reports whether e is [ingress.ErrNotFound] or
// [ingress.ErrHostnameTaken], by status and code. A bare 404 without the
// code (a route this server lacks) is not: that is no statement about a
// tunnel.
func (e *APIError) Is(target error) bool {
	switch target {
	case ingress.ErrNotFound:
		return e.Status == http.StatusNotFound && e.Code == httpapi.CodeNotFound
	case ingress.ErrHostnameTaken:
		return e.Status == http.StatusConflict && e.Code == httpapi.CodeConflict
	}

	return false
}

// NewClient validates opts and returns a client. It makes no request.
func NewClient(opts ClientOptions) (*Client, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("localedge: API URL %q is not an http(s) base URL", opts.URL)
	}
	if len(opts.Token) < MinAPITokenLen {
		return nil, fmt.Errorf("localedge: the API token must have at least %d characters",
			MinAPITokenLen)
	}

	unary := opts.HTTPClient
	if unary == nil {
		unary = defaultAPIClient()
	}

	// A whole-request timeout would cut connection streams, which last.
	stream := *unary
	stream.Timeout = 0
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{base: strings.TrimSuffix(u.String(), "/"), token: opts.Token,
		unary: unary, stream: &stream, log: log.With("component", "localedge-client")}, nil
}

// defaultAPIClient returns the client of [ClientOptions] HTTPClient nil.
// The header timeout also bounds opening a connection stream, whose
// headers the API sends at once.
func defaultAPIClient() *http.Client {
	hc := HTTPClient()
	hc.Transport.(*http.Transport).ResponseHeaderTimeout = 15 * time.Second
	hc.Timeout = 30 * time.Second
	return hc
}

// CreateTunnel implements [ingress.Provider].
func (c *Client) CreateTunnel(ctx context.Context, name string,
	in ingress.Ingress) (ingress.Tunnel, error) {
	req := createTunnelRequest{Name: name, Ingress: toIngressJSON(in)}
	var t tunnelJSON
	if err := c.call(ctx, http.MethodPost, "/tunnels", req, http.StatusCreated, &t); err != nil {
		return ingress.Tunnel{}, fmt.Errorf("localedge: creating tunnel %s: %w", name, err)
	}
	return ingress.Tunnel{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt, Token: t.Token}, nil
}

// ReplaceIngress implements [ingress.Provider].
func (c *Client) ReplaceIngress(ctx context.Context, tunnelID string,
	in ingress.Ingress) error {
	path, err := tunnelPath(tunnelID, "/ingress")
	if err == nil {
		err = c.call(ctx, http.MethodPut, path, toIngressJSON(in), http.StatusNoContent, nil)
	}
	if err != nil {
		return fmt.Errorf("localedge: replacing ingress of tunnel %s: %w", tunnelID, err)
	}
	return nil
}

// DeleteTunnel implements [ingress.Provider].
func (c *Client) DeleteTunnel(ctx context.Context, tunnelID string) error {
	if tunnelID == "" {
		return errors.New("localedge: tunnel id is required")
	}

	path := "/tunnels/" + url.PathEscape(tunnelID)
	if err := c.call(ctx, http.MethodDelete, path, nil, http.StatusNoContent, nil); err != nil {
		return fmt.Errorf("localedge: deleting tunnel %s: %w", tunnelID, err)
	}
	return nil
}

// DeleteRecord implements [ingress.Provider].
func (c *Client) DeleteRecord(ctx context.Context, recordID string) error {
	if recordID == "" {
		return nil // no record has an empty id, and a missing one is no error
	}

	path := "/records/" + url.PathEscape(recordID)
	if err := c.call(ctx, http.MethodDelete, path, nil, http.StatusNoContent, nil); err != nil {
		return fmt.Errorf("localedge: deleting record %s: %w", recordID, err)
	}
	return nil
}

// Tunnel implements [ingress.Provider].
func (c *Client) Tunnel(ctx context.Context, tunnelID string) (ingress.TunnelInfo, error) {
	var info ingress.TunnelInfo
	path, err := tunnelPath(tunnelID, "")
	if err == nil {
		err = c.call(ctx, http.MethodGet, path, nil, http.StatusOK, &info)
	}
	if err != nil {
		return ingress.TunnelInfo{}, fmt.Errorf("localedge: reading tunnel %s: %w", tunnelID, err)
	}
	return info, nil
}

// TunnelIngress implements [ingress.Provider].
func (c *Client) TunnelIngress(ctx context.Context, tunnelID string) ([]ingress.Rule, error) {
	var rules rulesJSON
	path, err := tunnelPath(tunnelID, "/ingress")
	if err == nil {
		err = c.call(ctx, http.MethodGet, path, nil, http.StatusOK, &rules)
	}
	if err != nil {
		return nil, fmt.Errorf("localedge: reading ingress of tunnel %s: %w", tunnelID, err)
	}
	return rules.Rules, nil
}

// List implements [ingress.Provider]. When the API cannot be read, the
// view says so for every list asked for and is not Complete.
func (c *Client) List(ctx context.Context, opts ingress.ListOptions) ingress.View {
	q := url.Values{}
	if opts.IngressPrefix != "" {
		q.Set("ingress_prefix", opts.IngressPrefix)
	}
	if opts.Apps {
		q.Set("apps", "true")
	}

	path := "/view"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var v ingress.View
	if err := c.call(ctx, http.MethodGet, path, nil, http.StatusOK, &v); err != nil {
		return failedView(opts, err)
	}
	return v
}

// failedView is the view of a List whose request failed: nothing was
// read, so every list is reported as failed.
func failedView(opts ingress.ListOptions, err error) ingress.View {
	v := ingress.View{FetchedAt: time.Now().UTC()}
	what := []string{"tunnels", "dns"}
	if opts.Apps {
		what = append(what, "apps")
	}

	for _, w := range what {
		v.Errors = append(v.Errors, ingress.FetchError{What: w, Err: err.Error()})
	}

	return v
}

// tunnelPath returns the API path of a tunnel. No tunnel has an empty
// id, so asking for one is answered here as the API would.
func tunnelPath(tunnelID, suffix string) (string, error) {
	if tunnelID == "" {
		return "", fmt.Errorf("empty tunnel id: %w", ingress.ErrNotFound)
	}
	return "/tunnels/" + url.PathEscape(tunnelID) + suffix, nil
}

// call sends one unary request with body (if not nil) as JSON and
// decodes a reply of status want into out (if not nil).
func (c *Client) call(ctx context.Context, method, path string, body any, want int,
	out any) error {
	resp, err := c.send(ctx, c.unary, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	if resp.StatusCode != want {
		return readError(resp)
	}
	if out == nil {
		return nil
	}

	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBody))
	if err != nil {
		return fmt.Errorf("reading reply: %w", err)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding reply: %w", err)
	}
	return nil
}

// send sends one request with hc. The token goes only into the
// Authorization header.
func (c *Client) send(ctx context.Context, hc *http.Client, method, path string,
	body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding request: %w", err)
		}
		rd = bytes.NewReader(data)
	}

	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}

	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)

	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling the localedge API: %w", err)
	}
	return resp, nil
}

// readError turns a reply other than the expected one into an
// [*APIError].
func readError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return parseError(resp.StatusCode, data)
}

// parseError builds the error of a reply with status and body data. A
// body that is not an httpapi error leaves Code and Message empty.
func parseError(status int, data []byte) *APIError {
	var b httpapi.Body
	if json.Unmarshal(data, &b) != nil {
		b = httpapi.Body{}
	}
	return &APIError{Status: status, Code: b.Code, Message: b.Message}
}

// clientLink is a connection held through the API: the response of POST
// /connections, which lasts as long as the connection does.
type clientLink struct {
	tunnelID string
	cancel   context.CancelFunc // ends the request
	done     chan struct{}
}

// Link implements [Linker]: it opens a connection stream on the API and
// returns once the API has named the tunnel. ctx bounds only the
// opening; the link's Done closes when the stream ends for any reason.
func (c *Client) Link(ctx context.Context, token string,
	services map[string]string) (Link, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("localedge: opening a link: %w", err)
	}

	// The request must outlive ctx, which only bounds the opening.
	reqCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	body, tunnelID, err := c.openStream(reqCtx, token, services)
	if !stop() && err == nil {
		body.Close()
		err = ctx.Err()
	}

	if err != nil {
		cancel()
		return nil, fmt.Errorf("localedge: opening a link: %w", err)
	}

	l := &clientLink{tunnelID: tunnelID, cancel: cancel, done: make(chan struct{})}
	go l.hold(body, c.log.With("tunnel_id", tunnelID))
	return l, nil
}

// openStream posts the connection request and reads the stream's first
// line. On success the caller owns body, positioned after that line.
func (c *Client) openStream(ctx context.Context, token string,
	services map[string]string) (io.ReadCloser, string, error) {
	resp, err := c.send(ctx, c.stream, http.MethodPost, "/connections",
		connectRequest{Token: token, Services: services})
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, "", readError(resp)
	}

	br := bufio.NewReaderSize(resp.Body, maxHelloLine)
	tunnelID, err := readHello(br)
	if err != nil {
		resp.Body.Close()
		return nil, "", err
	}
	return readCloser{br, resp.Body}, tunnelID, nil
}

// readCloser reads from a buffered reader and closes what it buffers.
type readCloser struct {
	io.Reader
	io.Closer
}

// readHello reads the first line of a connection stream and returns its
// tunnel id.
func readHello(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return "", fmt.Errorf("reading the stream's first line: %w", err)
	}

	var h helloJSON
	if err := json.Unmarshal(line, &h); err != nil {
		return "", fmt.Errorf("decoding the stream's first line: %w", err)
	}
	if h.TunnelID == "" {
		return "", errors.New("the stream's first line names no tunnel")
	}
	return h.TunnelID, nil
}

// hold reads the stream until it ends, which is the link's end: the API
// ends it when the tunnel is deleted, Close ends it by cancelling the
// request, and a vanished API ends it with an error.
func (l *clientLink) hold(body io.ReadCloser, log *slog.Logger) {
	defer close(l.done)
	_, err := io.Copy(io.Discard, body)
	body.Close()
	l.cancel()
	log.Info("link ended", "err", err)
}

// TunnelID implements [Link].
func (l *clientLink) TunnelID() string { return l.tunnelID }

// Done implements [Link].
func (l *clientLink) Done() <-chan struct{} { return l.done }

// Close implements [Link]. It returns once the stream is closed; the API
// drops the connection as soon as it notices.
func (l *clientLink) Close() {
	l.cancel()
	<-l.done
}
