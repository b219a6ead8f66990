package cp

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/dashboard"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// TODO(#4): replace the shared admin token with GitHub login and per-user
// sessions that can be revoked one by one.

// sessionTTL is the life of an admin session cookie. Changing the admin
// token ends every session, because the cookie's MAC key derives from it.
const sessionTTL = 12 * time.Hour

// maxLoginBody bounds the sign-in form.
const maxLoginBody = 4 << 10

// cookieConfig holds the attributes of the session cookie.
type cookieConfig struct {
	name   string
	secure bool
}

// newCookieConfig picks a Secure, "__Host-" cookie, which browsers bind to
// the exact host, unless the control plane is served on a loopback name
// over plain HTTP (the dev fleet), where Secure cookies may be refused.
// Either way the cookie is host-only: it carries no Domain attribute.
func newCookieConfig(hostname string) cookieConfig {
	if isLoopbackHost(hostname) {
		return cookieConfig{name: "dd_admin"}
	}
	return cookieConfig{name: "__Host-dd_admin", secure: true}
}

// isAdminToken compares tok with the admin token in constant time.
func (s *Server) isAdminToken(tok string) bool {
	if tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], s.adminHash[:]) == 1
}

// requireAdminBearer admits only a request carrying the admin token as a
// bearer token. Being on loopback earns nothing: a tunnel daemon connects
// from loopback on behalf of anyone (cp.md §10.1).
func (s *Server) requireAdminBearer(next httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		tok := httpapi.BearerToken(r)
		if tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="devopsdefender"`)
			return httpapi.Unauthorized("admin bearer token required")
		}
		if !s.isAdminToken(tok) {
			w.Header().Set("WWW-Authenticate",
				`Bearer realm="devopsdefender", error="invalid_token"`)
			return httpapi.Unauthorized("invalid token")
		}
		return next(w, r)
	}
}

// requireAdminPage admits the admin bearer token or a valid session
// cookie. A browser without either is sent to the sign-in form; other
// clients get a 401.
func (s *Server) requireAdminPage(next httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if tok := httpapi.BearerToken(r); tok != "" {
			if !s.isAdminToken(tok) {
				return httpapi.Unauthorized("invalid token")
			}
			return next(w, r)
		}
		if c, err := r.Cookie(s.cookie.name); err == nil && s.validSession(c.Value) {
			return next(w, r)
		}
		if strings.Contains(r.Header.Get("Accept"), "text/html") {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return nil
		}
		return httpapi.Unauthorized("sign in or send the admin bearer token")
	}
}

// newSession returns a session value "<expiry>.<mac>": it proves that
// its holder knew the admin token, without being the token.
func (s *Server) newSession() string {
	exp := strconv.FormatInt(s.opts.Now().Add(sessionTTL).Unix(), 10)
	return exp + "." + base64.RawURLEncoding.EncodeToString(s.sessionMAC(exp))
}

func (s *Server) validSession(v string) bool {
	exp, mac, ok := strings.Cut(v, ".")
	if !ok {
		return false
	}
	unix, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || s.opts.Now().Unix() >= unix {
		return false
	}
	got, err := base64.RawURLEncoding.DecodeString(mac)
	return err == nil && hmac.Equal(got, s.sessionMAC(exp))
}

func (s *Server) sessionMAC(exp string) []byte {
	m := hmac.New(sha256.New, s.sessionKey)
	m.Write([]byte("admin\x00" + exp))
	return m.Sum(nil)
}

func (s *Server) setSessionCookie(w http.ResponseWriter, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name:     s.cookie.name,
		Value:    value,
		Path:     "/",
		MaxAge:   maxAge,
		Secure:   s.cookie.secure,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
}

// loginForm serves the sign-in page. The token is posted in a form, never
// put in a URL, where it would land in browser history and access logs.
func (s *Server) loginForm(w http.ResponseWriter, r *http.Request) error {
	return s.renderLogin(w, http.StatusOK, "")
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
	if err := r.ParseForm(); err != nil {
		return httpapi.BadRequest("invalid sign-in form")
	}
	if !s.isAdminToken(r.PostForm.Get("token")) {
		s.log.InfoContext(r.Context(), "admin sign-in refused", "remote", r.RemoteAddr)
		return s.renderLogin(w, http.StatusUnauthorized, "That token is not valid.")
	}
	s.setSessionCookie(w, s.newSession(), int(sessionTTL/time.Second))
	s.log.InfoContext(r.Context(), "admin signed in", "remote", r.RemoteAddr)
	http.Redirect(w, r, "/", http.StatusSeeOther)
	return nil
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) error {
	s.setSessionCookie(w, "", -1)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
	return nil
}

func (s *Server) renderLogin(w http.ResponseWriter, status int, msg string) error {
	return dashboard.Write(w, status, func(out io.Writer) error {
		return dashboard.RenderLogin(out, dashboard.LoginPage{
			Env: s.opts.Env, Hostname: s.opts.Hostname, Error: msg})
	})
}
