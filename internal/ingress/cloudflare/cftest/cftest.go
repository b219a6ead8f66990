// Package cftest is an in-memory fake of the parts of the Cloudflare v4 API
// that DevOps Defender uses (reference cf.md §1 and §10.A): account tunnels
// (cfd_tunnel) with their token, remotely managed configuration and
// connections, zone DNS records, and legacy Access applications.
//
// It answers like the real API, so the real client code runs against it:
// every response is the envelope {success, errors, messages, result,
// result_info}; lists are paged with page and per_page and report
// result_info.page, per_page, count, total_count and total_pages; deleted
// tunnels are soft-deleted (deleted_at) and filtered with is_deleted;
// deleting a tunnel with live connections fails with code 1022, and a
// second CNAME for a name fails with code 81053. None of the lists DevOps
// Defender reads is cursor-paged in the real API, so the fake has no
// cursors either.
//
// Tests seed state ([Server.AddTunnel], [Server.AddRecord],
// [Server.AddApp]), inject faults per route ([Server.Inject]: 429 with
// Retry-After, 5xx, success:false, a short page, a hang until the client
// times out) and read the request log ([Server.Requests]).
package cftest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Routes of the fake, as ServeMux patterns. [Server.Inject] and
// [Request.Route] use them.
const (
	RouteCreateTunnel      = "POST /client/v4/accounts/{account}/cfd_tunnel"
	RouteListTunnels       = "GET /client/v4/accounts/{account}/cfd_tunnel"
	RouteGetTunnel         = "GET /client/v4/accounts/{account}/cfd_tunnel/{tunnel}"
	RouteDeleteTunnel      = "DELETE /client/v4/accounts/{account}/cfd_tunnel/{tunnel}"
	RouteTunnelToken       = "GET /client/v4/accounts/{account}/cfd_tunnel/{tunnel}/token"
	RoutePutConfig         = "PUT /client/v4/accounts/{account}/cfd_tunnel/{tunnel}/configurations"
	RouteGetConfig         = "GET /client/v4/accounts/{account}/cfd_tunnel/{tunnel}/configurations"
	RouteDeleteConnections = "DELETE /client/v4/accounts/{account}/cfd_tunnel/{tunnel}/connections"
	RouteListRecords       = "GET /client/v4/zones/{zone}/dns_records"
	RouteCreateRecord      = "POST /client/v4/zones/{zone}/dns_records"
	RouteUpdateRecord      = "PUT /client/v4/zones/{zone}/dns_records/{record}"
	RouteDeleteRecord      = "DELETE /client/v4/zones/{zone}/dns_records/{record}"
	RouteListApps          = "GET /client/v4/accounts/{account}/access/apps"
	RouteDeleteApp         = "DELETE /client/v4/accounts/{account}/access/apps/{app}"
)

// Error codes the fake answers with. Those marked "real" are codes the
// real API is known to send for the same condition; the others are the
// fake's own choice for conditions whose code is not documented.
const (
	CodeAuth            = 10000 // real: authentication error
	CodeRateLimited     = 971   // real: "please wait and consider throttling"
	CodeInternal        = 10001 // the fake's choice for injected 5xx
	CodeBadRequest      = 1001  // the fake's choice for malformed input
	CodeNoRoute         = 7003  // real: unknown account or zone id
	CodeTunnelNotFound  = 1003  // the fake's choice
	CodeTunnelExists    = 1013  // the fake's choice: a live tunnel has the name
	CodeActiveConns     = 1022  // real: tunnel has active connections
	CodeInvalidConfig   = 1056  // the fake's choice: ingress rules rejected
	CodeRecordNotFound  = 81044 // real: record does not exist
	CodeHostTaken       = 81053 // real: an A, AAAA or CNAME with that host exists
	CodeCNAMEExists     = 81054 // real: a CNAME with that host exists
	CodeRecordDuplicate = 81057 // real: the record already exists
	CodeAppNotFound     = 12130 // the fake's choice
)

// Options configures a [Server].
type Options struct {
	// AccountID and ZoneID are the only ids the fake routes; others get
	// 404 with code 7003. Empty means "test-account" and "test-zone".
	AccountID string
	ZoneID    string

	// Token, when set, must be sent as "Authorization: Bearer <Token>".
	Token string

	// MaxPerPage caps per_page, so that small fixtures span several
	// pages. Zero means 1000.
	MaxPerPage int

	// Now stamps created_at and deleted_at. Nil means time.Now.
	Now func() time.Time
}

// Server is the fake API on an httptest server. It is safe for concurrent
// use.
type Server struct {
	opts Options
	srv  *httptest.Server

	mu      sync.Mutex
	tunnels []*Tunnel // in creation order
	records []*Record
	apps    []*App
	faults  map[string][]*Fault
	log     []Request
}

// New starts a fake API and closes it when the test ends.
func New(tb testing.TB, opts Options) *Server {
	tb.Helper()
	if opts.AccountID == "" {
		opts.AccountID = "test-account"
	}

	if opts.ZoneID == "" {
		opts.ZoneID = "test-zone"
	}
	if opts.MaxPerPage <= 0 {
		opts.MaxPerPage = 1000
	}

	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts, faults: map[string][]*Fault{}}
	mux := http.NewServeMux()
	for route, h := range s.routes() {
		mux.Handle(route, s.wrap(h))
	}

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.record(r, nil, http.StatusNotFound)
		writeError(w, http.StatusNotFound, CodeNoRoute, "No route for that URI")
	})
	s.srv = httptest.NewServer(mux)
	tb.Cleanup(s.srv.Close)
	return s
}

func (s *Server) routes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		RouteCreateTunnel:      s.createTunnel,
		RouteListTunnels:       s.listTunnels,
		RouteGetTunnel:         s.getTunnel,
		RouteDeleteTunnel:      s.deleteTunnel,
		RouteTunnelToken:       s.tunnelToken,
		RoutePutConfig:         s.putConfig,
		RouteGetConfig:         s.getConfig,
		RouteDeleteConnections: s.deleteConnections,
		RouteListRecords:       s.listRecords,
		RouteCreateRecord:      s.createRecord,
		RouteUpdateRecord:      s.updateRecord,
		RouteDeleteRecord:      s.deleteRecord,
		RouteListApps:          s.listApps,
		RouteDeleteApp:         s.deleteApp,
	}
}

// URL returns the API base URL, ending in "/client/v4/".
func (s *Server) URL() string { return s.srv.URL + "/client/v4/" }

// AccountID returns the account id the fake serves.
func (s *Server) AccountID() string { return s.opts.AccountID }

// ZoneID returns the zone id the fake serves.
func (s *Server) ZoneID() string { return s.opts.ZoneID }

// Fault replaces the normal answer to matching requests.
type Fault struct {
	// Status answers with this HTTP status and an error envelope, e.g.
	// 429 or 500.
	Status int

	// Code is the error code in the envelope. Zero picks one that fits
	// Status.
	Code int

	// RetryAfter is sent as the Retry-After header.
	RetryAfter string

	// SuccessFalse answers 200 with success:false and Code, as the real
	// API does for some validation failures.
	SuccessFalse bool

	// Hang holds the request until the client gives up, like a timeout.
	Hang bool

	// ShortPage drops this many items from the end of a list page while
	// result_info still reports the full page and totals.
	ShortPage int

	// Page limits the fault to one page of a list (1-based); zero means
	// any request.
	Page int

	// Times is how many matching requests the fault affects; zero means
	// every one.
	Times int
}

// Inject adds a fault to route, one of the Route constants. Faults of a
// route apply in the order they were injected.
func (s *Server) Inject(route string, f Fault) {
	if _, ok := s.routes()[route]; !ok {
		panic("cftest: unknown route " + route)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[route] = append(s.faults[route], &f)
}

// ClearFaults removes every injected fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = map[string][]*Fault{}
}

// Request is one request the fake received.
type Request struct {
	Method string
	Route  string // the matched Route constant, "" for unknown paths
	Path   string
	Query  url.Values
	Body   string
	Status int
}

// Requests returns the request log in arrival order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

// RequestsTo returns the logged requests to route.
func (s *Server) RequestsTo(route string) []Request {
	var out []Request
	for _, r := range s.Requests() {
		if r.Route == route {
			out = append(out, r)
		}
	}

	return out
}

// ResetRequests empties the request log.
func (s *Server) ResetRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = nil
}

func (s *Server) record(r *http.Request, body []byte, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()

	route := r.Pattern
	if route == "/" {
		route = ""
	}
	s.log = append(s.log, Request{Method: r.Method, Route: route, Path: r.URL.Path,
		Query: r.URL.Query(), Body: string(body), Status: status})
}

type shortPageKey struct{}

// wrap logs the request, checks auth and ids, and applies faults before
// the route's handler runs.
func (s *Server) wrap(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() { s.record(r, body, rec.status) }()

		if s.opts.Token != "" && r.Header.Get("Authorization") != "Bearer "+s.opts.Token {
			writeError(rec, http.StatusForbidden, CodeAuth, "Authentication error")
			return
		}
		if !s.knownIDs(r) {
			writeError(rec, http.StatusNotFound, CodeNoRoute,
				"Could not route to "+r.URL.Path+", perhaps your object identifier is invalid?")
			return
		}

		f := s.takeFault(r)
		if f != nil && s.applyFault(rec, r, f) {
			return
		}

		if f != nil && f.ShortPage > 0 {
			r = r.WithContext(context.WithValue(r.Context(), shortPageKey{}, f.ShortPage))
		}
		h(rec, r)
	})
}

func (s *Server) knownIDs(r *http.Request) bool {
	if a := r.PathValue("account"); a != "" && a != s.opts.AccountID {
		return false
	}
	if z := r.PathValue("zone"); z != "" && z != s.opts.ZoneID {
		return false
	}
	return true
}

// takeFault returns the first fault of the route that matches r, counting
// it against its Times.
func (s *Server) takeFault(r *http.Request) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()

	page := queryInt(r.URL.Query(), "page", 1)
	for _, f := range s.faults[r.Pattern] {
		if f.Times < 0 || (f.Page != 0 && f.Page != page) {
			continue
		}

		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				f.Times = -1 // used up
			}
		}

		return f
	}

	return nil
}

// applyFault answers r as f says and reports whether it did; a ShortPage
// fault is left to the handler.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, f *Fault) bool {
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}

	switch {
	case f.Hang:
		<-r.Context().Done()
		w.WriteHeader(http.StatusGatewayTimeout)
		return true

	case f.Status != 0:
		writeError(w, f.Status, faultCode(f), http.StatusText(f.Status))
		return true
	case f.SuccessFalse:
		writeError(w, http.StatusOK, faultCode(f), "injected failure")
		return true
	}

	return false
}

func faultCode(f *Fault) int {
	switch {
	case f.Code != 0:
		return f.Code
	case f.Status == http.StatusTooManyRequests:
		return CodeRateLimited
	case f.Status >= 500:
		return CodeInternal
	}

	return CodeBadRequest
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// envelope is the v4 API's response body.
type envelope struct {
	Success    bool         `json:"success"`
	Errors     []apiMessage `json:"errors"`
	Messages   []apiMessage `json:"messages"`
	Result     any          `json:"result"`
	ResultInfo *resultInfo  `json:"result_info,omitempty"`
}

type apiMessage struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type resultInfo struct {
	Page       int `json:"page"`
	PerPage    int `json:"per_page"`
	Count      int `json:"count"`
	TotalCount int `json:"total_count"`
	TotalPages int `json:"total_pages"`
}

func writeJSON(w http.ResponseWriter, status int, env envelope) {
	if env.Errors == nil {
		env.Errors = []apiMessage{}
	}
	env.Messages = []apiMessage{}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cf-Ray", newHex(8)+"-TST")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(env)
}

func writeResult(w http.ResponseWriter, result any) {
	writeJSON(w, http.StatusOK, envelope{Success: true, Result: result})
}

func writeError(w http.ResponseWriter, status, code int, msg string) {
	writeJSON(w, status, envelope{Errors: []apiMessage{{Code: code, Message: msg}}})
}

// paginate returns the requested page of items, as the real API pages:
// page counts from 1, per_page defaults to def and is capped at the
// server's maximum, and a page past the end is empty. A ShortPage fault
// drops items from the page without changing result_info.
func paginate[T any](s *Server, r *http.Request, items []T, def int) envelope {
	q := r.URL.Query()
	page := max(queryInt(q, "page", 1), 1)
	per := min(max(queryInt(q, "per_page", def), 1), s.opts.MaxPerPage)
	total := len(items)
	start := min((page-1)*per, total)
	end := min(start+per, total)
	out := slices.Clone(items[start:end])

	info := &resultInfo{Page: page, PerPage: per, Count: len(out), TotalCount: total,
		TotalPages: int(math.Ceil(float64(total) / float64(per)))}
	if drop, _ := r.Context().Value(shortPageKey{}).(int); drop > 0 {
		out = out[:max(len(out)-drop, 0)]
	}
	if out == nil {
		out = []T{}
	}
	return envelope{Success: true, Result: out, ResultInfo: info}
}

// queryInt reads an integer parameter; cloudflare-go sends page numbers
// as floats ("2"), and a malformed value reads as def.
func queryInt(q url.Values, key string, def int) int {
	v := q.Get(key)
	if v == "" {
		return def
	}

	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f != math.Trunc(f) {
		return def
	}
	return int(f)
}

func decodeBody(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return fmt.Errorf("decoding body: %w", err)
	}
	return nil
}

func newHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newUUID() string {
	h := newHex(16)
	return h[:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:]
}

func (s *Server) now() time.Time { return s.opts.Now().UTC() }
