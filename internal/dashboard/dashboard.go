// Package dashboard renders the HTML pages of DevOps Defender: the control
// plane's fleet and agent pages, the per-VM page an agent serves, and the
// control plane's sign-in page.
//
// Pages come only from html/template, so every agent-supplied string (VM
// names, app names, error messages) is escaped for its context. The
// templates and the stylesheet are embedded and parsed once. Pages carry no
// script and no inline style, so they are served under a strict
// Content-Security-Policy ([CSP]); live pages refresh with a meta refresh.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
)

// CSP is the Content-Security-Policy of every page: nothing may load except
// the embedded stylesheet and images from the same origin, forms post only
// to the same origin, and no page may be framed.
const CSP = "default-src 'none'; style-src 'self'; img-src 'self'; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// AssetPrefix is the path under which [Assets] serves the embedded files.
const AssetPrefix = "/static/"

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

var (
	assets    = loadAssets()
	templates = template.Must(template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html"))
)

// Attestation is how a page shows an agent's evidence.
type Attestation struct {
	// Type is "tdx", "simulated" or "none" as the agent claims it.
	Type string
	// Verified is true only when the control plane checked the evidence;
	// otherwise the page labels it "unverified".
	Verified bool
	// Status is "verified", "unattested" (the last verified evidence is
	// too old) or "unverified".
	Status string
	MRTD   string
	// RTMR holds RTMR0-3 in hex; empty when unverified.
	RTMR       []string
	Debug      bool
	TCBStatus  string
	TCBDate    time.Time
	VerifiedAt time.Time
}

// Agent is one agent as the control plane's pages show it.
type Agent struct {
	ID       string
	VMName   string
	Hostname string
	// URL is the agent's public URL; the detail page links to it.
	URL    string
	Origin string
	Status string
	// RegisteredAt and LastSeen are shown relative to the page's Now;
	// zero means never.
	RegisteredAt time.Time
	LastSeen     time.Time
	LastError    string
	Attestation  Attestation
	Units        []agentapi.Unit
	// Exposed are the hostnames the agent's workloads published; the
	// agent page lists them.
	Exposed []agentapi.Exposed
	// Tenant is the principal holding the agent, e.g.
	// "user:octocat(583231)"; empty when only the fleet owner does.
	Tenant string
}

// FleetPage is the control plane's fleet overview.
type FleetPage struct {
	// Env and Hostname name the control plane.
	Env      string
	Hostname string
	// Now is the time relative times are computed from.
	Now time.Time
	// RefreshSecs reloads the page that often; zero disables it.
	RefreshSecs int
	// Agents are shown in this order.
	Agents []Agent
	// Ingress is the control plane's own tunnel; nil shows none.
	Ingress *Ingress
}

// Ingress is the control plane's own tunnel as the fleet page shows it.
type Ingress struct {
	TunnelID string
	// Connector is the state of the connector (cloudflared) carrying it,
	// e.g. "running" or "backoff", and Restarts how often it restarted.
	Connector string
	Restarts  int
	// Serving is true when the hostname reaches this control plane.
	Serving bool
	// Fenced is true once a newer control plane took over; FencedReason
	// says what showed it.
	Fenced       bool
	FencedReason string
}

// AgentPage is the control plane's page about one agent.
type AgentPage struct {
	Env         string
	Hostname    string
	Now         time.Time
	RefreshSecs int
	Agent       Agent
	// CanAssign shows the form that assigns or clears the tenant: the
	// viewer is a fleet admin.
	CanAssign bool
	// Error is shown above the tenant form, e.g. after a bad principal.
	Error string
}

// VMPage is the page an agent serves about its own VM.
type VMPage struct {
	VMName   string
	Hostname string
	// AgentID is the control plane's id for the agent; empty before it
	// registered.
	AgentID         string
	Registered      bool
	AttestationType string
	Build           string
	Uptime          time.Duration
	RefreshSecs     int
	// LogsPrefix is prepended to a unit's app name to link its logs.
	// Empty means "/logs/".
	LogsPrefix string
	Units      []agentapi.Unit
}

// LoginPage is the control plane's sign-in form.
type LoginPage struct {
	Env      string
	Hostname string
	// Error is shown above the form, e.g. after a wrong token.
	Error string
}

// RenderFleet writes the fleet page.
func RenderFleet(w io.Writer, p FleetPage) error { return render(w, "fleet", p) }

// RenderAgent writes the control plane's page about one agent.
func RenderAgent(w io.Writer, p AgentPage) error { return render(w, "agent", p) }

// RenderVM writes an agent's page about its VM.
func RenderVM(w io.Writer, p VMPage) error {
	if p.LogsPrefix == "" {
		p.LogsPrefix = "/logs/"
	}
	return render(w, "vm", p)
}

// RenderLogin writes the sign-in page.
func RenderLogin(w io.Writer, p LoginPage) error { return render(w, "login", p) }

func render(w io.Writer, name string, data any) error {
	if err := templates.ExecuteTemplate(w, name, data); err != nil {
		return fmt.Errorf("dashboard: rendering %s: %w", name, err)
	}
	return nil
}

// Write renders a page into memory and only then sends it with status and
// the headers of [SetHeaders], so that a template error never leaves half a
// page on the wire.
func Write(w http.ResponseWriter, status int, render func(io.Writer) error) error {
	var buf bytes.Buffer
	if err := render(&buf); err != nil {
		return err
	}

	SetHeaders(w.Header())
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, err := w.Write(buf.Bytes())
	return err
}

// SetHeaders sets the content type and security headers of an HTML page.
// Pages show live fleet state, so they are not cached.
func SetHeaders(h http.Header) {
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

// asset is one embedded static file.
type asset struct {
	data        []byte
	contentType string
	version     string
}

func loadAssets() map[string]asset {
	out := map[string]asset{}
	err := fs.WalkDir(staticFS, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := staticFS.ReadFile(p)
		if err != nil {
			return err
		}

		// a short content hash versions the asset's URL
		sum := sha256.Sum256(data)
		out[path.Base(p)] = asset{data: data, contentType: contentType(p),
			version: hex.EncodeToString(sum[:4])}
		return nil
	})
	if err != nil {
		panic(fmt.Sprintf("dashboard: loading embedded assets: %v", err))
	}
	return out
}

func contentType(name string) string {
	switch path.Ext(name) {
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".png":
		return "image/png"
	}

	return "application/octet-stream"
}

// Assets serves the embedded stylesheet (and any other static file) under
// [AssetPrefix]. Pages link them with a content hash in the query, so they
// may be cached.
func Assets() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := path.Base(r.URL.Path)
		a, ok := assets[name]
		if !ok || r.URL.Path != AssetPrefix+name {
			http.NotFound(w, r)
			return
		}

		w.Header().Set("Content-Type", a.contentType)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "public, max-age=86400")
		w.Header().Set("Content-Length", strconv.Itoa(len(a.data)))
		if r.Method == http.MethodHead {
			return
		}
		w.Write(a.data)
	})
}
