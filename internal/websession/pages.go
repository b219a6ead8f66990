package websession

import (
	"bytes"
	"embed"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

//go:embed templates/*.html
var templateFS embed.FS

var pages = template.Must(template.ParseFS(templateFS, "templates/*.html"))

// pageCSP allows nothing but the page's own inline style and forms posted
// to itself; frame-ancestors stops the device approval page from being
// framed to trick a click.
const pageCSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; " +
	"frame-ancestors 'none'; base-uri 'none'"

type loginData struct {
	StartURL  string
	SignedOut bool
}

type messageData struct {
	Title    string
	Message  string
	LoginURL string
}

type deviceData struct {
	Login    string
	UserCode string
	Approved bool
	Denied   bool
}

// render executes a page into a buffer first, so a template error becomes
// a clean 500 instead of half a page.
func render(w http.ResponseWriter, status int, name string, data any) error {
	return renderCSP(w, status, name, data, pageCSP)
}

func renderCSP(w http.ResponseWriter, status int, name string, data any, csp string) error {
	var buf bytes.Buffer
	if err := pages.ExecuteTemplate(&buf, name, data); err != nil {
		return err
	}

	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")

	w.WriteHeader(status)
	_, err := w.Write(buf.Bytes())
	return err
}

// renderError shows err to a browser as a page, with the same status and
// message a JSON client would get, and logs it like [httpapi.WriteError].
func (s *Service) renderError(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpapi.Error
	if !errors.As(err, &he) {
		he = &httpapi.Error{Status: http.StatusInternalServerError, Code: httpapi.CodeInternal,
			Message: "internal error", Err: err}
	}

	level := slog.LevelInfo
	if he.Status >= 500 {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "request failed", "method", r.Method, "path", r.URL.Path,
		"status", he.Status, "code", he.Code, "err", err)

	title := http.StatusText(he.Status)
	if title == "" {
		title = "Error " + strconv.Itoa(he.Status)
	}
	data := messageData{Title: title, Message: he.Message, LoginURL: LoginPath}
	if rerr := render(w, he.Status, "message.html", data); rerr != nil {
		s.log.ErrorContext(r.Context(), "rendering error page", "err", rerr)
	}
}
