package cp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/dashboard"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// codeMethodNotAllowed is the error code of a 405 reply.
const codeMethodNotAllowed = "METHOD_NOT_ALLOWED"

// Route is one entry of the control plane's route table.
type Route struct {
	Pattern string
	Rule    rule
	handler httpapi.HandlerFunc
}

// Routes returns the route table: every route with its authorization
// rule. The README's matrix and the authorization tests walk it.
func (s *Server) Routes() []Route {
	return []Route{
		{"GET /health", ruleAnyone, s.health},
		{"POST /register/nonce", ruleAttested, s.issueNonce},
		{"POST /register", ruleAttested, s.register},
		{"POST /agents/{id}/nonce", ruleAgent, s.issueAgentNonce},
		{"POST /agents/{id}/attest", ruleAgent, s.reattest},
		{"GET /agents/{id}/config", ruleAgent, s.agentConfig},
		{"POST /agents/{id}/audit", ruleAgent, s.importAudit},
		{"POST /agents/{id}/ingress", ruleAgent, s.setIngress},
		{"GET /api/agents", ruleViewer, s.listAgents},
		{"POST /api/agents/{id}/tenant", ruleAdminCI, s.setTenant},
		{"GET /api/audit", ruleAdmin, s.listAudit},
		{"GET /admin/cf/snapshot", ruleAdmin, s.cfSnapshot},
		{"GET /admin/cf/map", ruleAdmin, s.cfMap},
		{"GET /{$}", rulePage, s.fleetPage},
		{"GET /agent/{id}", rulePage, s.agentPage},
		{"POST /agent/{id}/tenant", ruleAdmin, s.tenantForm},
	}
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.Routes() {
		mux.Handle(rt.Pattern, httpapi.Handle(s.log, s.authorize(rt.Rule, rt.handler)))
	}

	// The sign-in routes are public by nature: GitHub's OAuth flow, the
	// device flow, and sign-out, which ends the caller's own session.
	if s.opts.Sessions != nil {
		s.opts.Sessions.Mount(mux)
	}

	mux.Handle("GET "+dashboard.AssetPrefix, dashboard.Assets())
	return s.accessLog(s.refuseWhenFenced(s.jsonRouteErrors(mux)))
}

// jsonRouteErrors sends the mux's own "no such route" and "method not
// allowed" replies as JSON error bodies, like every other error.
func (s *Server) jsonRouteErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			// Serve through the mux, which sets r's path values.
			mux.ServeHTTP(w, r)
			return
		}

		// No route: let the mux pick 404 or 405 (and its Allow header),
		// then replace its plain-text body.
		rec := &recorder{header: http.Header{}}
		h.ServeHTTP(rec, r)

		switch rec.status {
		case http.StatusNotFound:
			httpapi.WriteError(s.log, w, r, httpapi.NotFound("no such route"))
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", rec.header.Get("Allow"))
			httpapi.WriteError(s.log, w, r, &httpapi.Error{Status: http.StatusMethodNotAllowed,
				Code: codeMethodNotAllowed, Message: "method not allowed"})
		default:
			rec.replay(w)
		}
	})
}

// recorder buffers a small reply of the mux's built-in handlers.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(p)
}

func (r *recorder) replay(w http.ResponseWriter) {
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.WriteHeader(r.status)
	w.Write(r.body.Bytes())
}

type requestIDKey struct{}

// accessLog gives every request an id (sent back as X-Request-Id and
// attached to every log record made with the request's context) and logs
// one record per request. It logs the path only: no query, no headers, no
// body, so no credential reaches the log.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := newRequestID()
		w.Header().Set("X-Request-Id", id)
		ctx := context.WithValue(r.Context(), requestIDKey{}, id)
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r.WithContext(ctx))
		if sw.status == 0 {
			sw.status = http.StatusOK
		}

		s.log.LogAttrs(ctx, slog.LevelInfo, "http request",
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Int("status", sw.status), slog.Int64("bytes", sw.bytes),
			slog.Duration("duration", time.Since(start)),
			slog.String("remote", r.RemoteAddr))
	})
}

func newRequestID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// statusWriter remembers the status and size of a reply.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// requestIDHandler adds the request id found in a record's context.
type requestIDHandler struct{ slog.Handler }

func (h requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if id, ok := ctx.Value(requestIDKey{}).(string); ok {
		r.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(attrs)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}
