package localedge

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// MinAPITokenLen is the shortest bearer token [NewAPI] and [NewClient]
// accept.
const MinAPITokenLen = 16

// maxAPIBody bounds request bodies: an ingress with every workload of an
// agent is a few kilobytes.
const maxAPIBody = 64 << 10

// APIOptions configures the handler [NewAPI] returns.
type APIOptions struct {
	// Token is the bearer every request must carry ("Authorization:
	// Bearer TOKEN"), at least [MinAPITokenLen] characters. Required.
	Token string

	// Logger receives refused requests and connection events. Nil
	// discards them.
	Logger *slog.Logger
}

// api serves a [Provider] to other processes.
type api struct {
	p       *Provider
	log     *slog.Logger
	tokenID [sha256.Size]byte // the token's digest, compared in constant time
}

// The JSON bodies of the API. ingress.Tunnel hides its token from JSON
// and ingress.Ingress has no JSON names, so both have a wire form here.
type (
	ingressJSON struct {
		Hostname string         `json:"hostname"`
		Service  string         `json:"service,omitempty"`
		Extras   []ingress.Rule `json:"extras,omitempty"`
	}
	createTunnelRequest struct {
		Name    string      `json:"name"`
		Ingress ingressJSON `json:"ingress"`
	}
	tunnelJSON struct {
		ID        string    `json:"id"`
		Name      string    `json:"name"`
		CreatedAt time.Time `json:"created_at"`
		Token     string    `json:"token"`
	}
	rulesJSON struct {
		Rules []ingress.Rule `json:"rules"`
	}
	connectRequest struct {
		Token    string            `json:"token"`
		Services map[string]string `json:"services,omitempty"`
	}
	// helloJSON is the first line of a connection stream.
	helloJSON struct {
		TunnelID string `json:"tunnel_id"`
	}
)

func toIngressJSON(in ingress.Ingress) ingressJSON {
	return ingressJSON{Hostname: in.Hostname, Service: in.Service, Extras: in.Extras}
}

func (in ingressJSON) ingress() ingress.Ingress {
	return ingress.Ingress{Hostname: in.Hostname, Service: in.Service, Extras: in.Extras}
}

// NewAPI returns an HTTP handler that serves p to another process, such
// as a second control plane, which uses it through a [Client]:
//
//	POST   /tunnels               create a tunnel (201, with its token)
//	PUT    /tunnels/{id}/ingress  replace its ingress (204)
//	DELETE /tunnels/{id}          delete it (204)
//	GET    /tunnels/{id}          read it
//	GET    /tunnels/{id}/ingress  read its rules
//	DELETE /records/{id}          delete a DNS record (204)
//	GET    /view                  list (?ingress_prefix=P&apps=true)
//	POST   /connections           hold a tunnel as a connector
//
// Errors are httpapi {code, message} bodies: 401 without the token, 400
// for a body or ingress the provider refuses, 404 for an unknown tunnel.
//
// POST /connections answers 200 with one JSON line, {"tunnel_id": ID},
// and then keeps the response open for as long as the connection lives:
// the body ends when the tunnel is deleted, and the connection ends when
// the client goes away. A server's graceful Shutdown therefore waits for
// open connections; close their clients first, or use Close.
func NewAPI(p *Provider, opts APIOptions) (http.Handler, error) {
	if p == nil {
		return nil, errors.New("localedge: the API needs a provider")
	}
	if len(opts.Token) < MinAPITokenLen {
		return nil, fmt.Errorf("localedge: the API token must have at least %d characters",
			MinAPITokenLen)
	}

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &api{p: p, log: log.With("component", "localedge-api"),
		tokenID: sha256.Sum256([]byte(opts.Token))}
	return a.routes(), nil
}

func (a *api) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, h httpapi.HandlerFunc) {
		mux.Handle(pattern, httpapi.Handle(a.log, h))
	}
	handle("POST /tunnels", a.createTunnel)
	handle("PUT /tunnels/{id}/ingress", a.replaceIngress)

	handle("DELETE /tunnels/{id}", a.deleteTunnel)
	handle("GET /tunnels/{id}", a.tunnel)
	handle("GET /tunnels/{id}/ingress", a.tunnelIngress)
	handle("DELETE /records/{id}", a.deleteRecord)
	handle("GET /view", a.view)
	handle("POST /connections", a.connect)
	return a.authenticate(mux)
}

// authenticate refuses every request without the token before any route
// runs. Comparing digests keeps the comparison constant-time even in the
// token's length.
func (a *api) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := sha256.Sum256([]byte(httpapi.BearerToken(r)))
		if subtle.ConstantTimeCompare(got[:], a.tokenID[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="localedge"`)
			err := httpapi.Unauthorized("a valid bearer token is required")
			httpapi.WriteError(a.log, w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// providerError maps a failure of the provider to a reply. The in-memory
// provider fails only on what the caller sent (an unknown tunnel, an
// invalid ingress), so its text is safe, and useful, to show.
func providerError(err error) error {
	he := &httpapi.Error{Status: http.StatusBadRequest, Code: httpapi.CodeBadRequest,
		Message: err.Error(), Err: err}
	switch {
	case errors.Is(err, ingress.ErrNotFound):
		he.Status, he.Code = http.StatusNotFound, httpapi.CodeNotFound
	case errors.Is(err, ingress.ErrHostnameTaken):
		he.Status, he.Code = http.StatusConflict, httpapi.CodeConflict
	}

	return he
}

func (a *api) createTunnel(w http.ResponseWriter, r *http.Request) error {
	var req createTunnelRequest
	if err := httpapi.DecodeBody(w, r, maxAPIBody, &req); err != nil {
		return err
	}

	t, err := a.p.CreateTunnel(r.Context(), req.Name, req.Ingress.ingress())
	if err != nil {
		return providerError(err)
	}
	return httpapi.WriteJSON(w, http.StatusCreated,
		tunnelJSON{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt, Token: t.Token})
}

func (a *api) replaceIngress(w http.ResponseWriter, r *http.Request) error {
	var in ingressJSON
	if err := httpapi.DecodeBody(w, r, maxAPIBody, &in); err != nil {
		return err
	}
	if err := a.p.ReplaceIngress(r.Context(), r.PathValue("id"), in.ingress()); err != nil {
		return providerError(err)
	}

	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) deleteTunnel(w http.ResponseWriter, r *http.Request) error {
	if err := a.p.DeleteTunnel(r.Context(), r.PathValue("id")); err != nil {
		return providerError(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) deleteRecord(w http.ResponseWriter, r *http.Request) error {
	if err := a.p.DeleteRecord(r.Context(), r.PathValue("id")); err != nil {
		return providerError(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) tunnel(w http.ResponseWriter, r *http.Request) error {
	info, err := a.p.Tunnel(r.Context(), r.PathValue("id"))
	if err != nil {
		return providerError(err)
	}
	return httpapi.WriteJSON(w, http.StatusOK, info)
}

func (a *api) tunnelIngress(w http.ResponseWriter, r *http.Request) error {
	rules, err := a.p.TunnelIngress(r.Context(), r.PathValue("id"))
	if err != nil {
		return providerError(err)
	}
	return httpapi.WriteJSON(w, http.StatusOK, rulesJSON{Rules: rules})
}

// view answers GET /view. ingress.View's JSON already carries its fetch
// errors as text and its Complete flag, so a degraded view stays
// degraded on the other side.
func (a *api) view(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	opts := ingress.ListOptions{IngressPrefix: q.Get("ingress_prefix")}

	if s := q.Get("apps"); s != "" {
		apps, err := strconv.ParseBool(s)
		if err != nil {
			return httpapi.BadRequest("apps must be true or false")
		}
		opts.Apps = apps
	}

	return httpapi.WriteJSON(w, http.StatusOK, a.p.List(r.Context(), opts))
}

// connect holds a connection for the caller until the tunnel is deleted
// (the response ends) or the caller goes away (the request's context
// ends).
func (a *api) connect(w http.ResponseWriter, r *http.Request) error {
	var req connectRequest
	if err := httpapi.DecodeBody(w, r, maxAPIBody, &req); err != nil {
		return err
	}

	conn, err := a.p.Connect(req.Token, req.Services)
	if errors.Is(err, errTokenRefused) {
		return httpapi.Forbidden(err.Error())
	}
	if err != nil {
		return providerError(err)
	}
	defer conn.Close()

	log := a.log.With("tunnel_id", conn.TunnelID())
	if err := startStream(w, conn.TunnelID()); err != nil {
		// The status is sent, so only the log can tell.
		log.InfoContext(r.Context(), "connection stream failed", "err", err)
		return nil
	}

	log.InfoContext(r.Context(), "connection opened")
	select {
	case <-conn.Done():
		log.InfoContext(r.Context(), "connection ended by the provider")
	case <-r.Context().Done():
		log.InfoContext(r.Context(), "connection closed by the connector")
	}

	return nil
}

// startStream sends the connection's first line and flushes it, so the
// client learns the tunnel id at once. A server's read and write timeouts
// would cut a long-lived stream, so they are lifted for this response.
func startStream(w http.ResponseWriter, tunnelID string) error {
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Time{}); err != nil &&
		!errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("lifting the read deadline: %w", err)
	}
	if err := rc.SetWriteDeadline(time.Time{}); err != nil &&
		!errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("lifting the write deadline: %w", err)
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if err := json.NewEncoder(w).Encode(helloJSON{TunnelID: tunnelID}); err != nil {
		return fmt.Errorf("writing the first line: %w", err)
	}

	if err := rc.Flush(); err != nil {
		return fmt.Errorf("flushing the first line: %w", err)
	}
	return nil
}
