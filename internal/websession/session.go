package websession

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// Role is what a signed-in person may be in the fleet.
type Role string

// The roles. Someone who is neither gets no session.
const (
	RoleAdmin  Role = "admin"
	RoleTenant Role = "tenant"
)

// Client is how a session is carried.
type Client string

// The clients: a browser cookie, or a device-flow bearer token.
const (
	ClientBrowser Client = "browser"
	ClientDevice  Client = "device"
)

// BearerPrefix starts every bearer token this package issues, so a server
// that also accepts other bearer tokens (GitHub OIDC JWTs) can tell them
// apart; see [IsSessionToken].
const BearerPrefix = "ddws_"

// Errors of [Service.Authenticate].
var (
	// ErrNoSession: the request carries no session cookie and no session
	// bearer token.
	ErrNoSession = errors.New("websession: no session")
	// ErrInvalidSession: the cookie or token is forged, expired, revoked
	// or belongs to another fleet owner.
	ErrInvalidSession = errors.New("websession: invalid session")
	// ErrCrossOrigin: a state-changing request authenticated by cookie came
	// from another origin (CSRF).
	ErrCrossOrigin = errors.New("websession: cross-origin request refused")
)

// Session is a signed-in person, as recorded server-side.
type Session struct {
	// ID is the hex SHA-256 of the session's secret: safe to log and to
	// show, useless to present.
	ID     string
	Login  string
	UserID int64
	Role   Role
	Client Client
	// Agents are the agents the person held as tenant at sign-in. An
	// authorization check must still compare with the agent's current
	// tenant, which may have been cleared since.
	Agents  []string
	Created time.Time
	Expires time.Time
}

// IsAdmin reports whether s is a fleet admin's session.
func (s *Session) IsAdmin() bool { return s != nil && s.Role == RoleAdmin }

// Actor names the person for the audit log: "user:alice(42)".
func (s *Session) Actor() string { return actor(s.Login, s.UserID) }

func actor(login string, id int64) string { return fmt.Sprintf("user:%s(%d)", login, id) }

// IsSessionToken reports whether a bearer token is one of ours.
func IsSessionToken(tok string) bool { return strings.HasPrefix(tok, BearerPrefix) }

// cookieNames are the names of our cookies. The "__Host-" prefix makes
// browsers refuse the cookie unless it is Secure, host-only and on "/", so
// a sibling host cannot plant one (auth.md §7.4).
type cookieNames struct {
	session, nonce string
	secure         bool
}

func newCookieNames(secure, domain bool) cookieNames {
	switch {
	case !secure:
		return cookieNames{session: "dd_session", nonce: "dd_oauth"}
	case domain:
		return cookieNames{session: "__Secure-dd_session", nonce: "__Host-dd_oauth", secure: true}
	}
	return cookieNames{session: "__Host-dd_session", nonce: "__Host-dd_oauth", secure: true}
}

func (s *Service) setCookie(w http.ResponseWriter, name, value string, maxAge int,
	domain string) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: "/", Domain: domain, MaxAge: maxAge,
		Secure: s.cookies.secure, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
}

func (s *Service) setSessionCookie(w http.ResponseWriter, value string) {
	s.setCookie(w, s.cookies.session, value, int(s.cfg.SessionTTL/time.Second),
		s.cfg.CookieDomain)
}

func (s *Service) clearSessionCookie(w http.ResponseWriter) {
	s.setCookie(w, s.cookies.session, "", -1, s.cfg.CookieDomain)
}

// newSecret returns a fresh session secret and its id.
func newSecret() (secret, id string) {
	var b [32]byte
	rand.Read(b[:])
	secret = base64.RawURLEncoding.EncodeToString(b[:])
	return secret, secretID(secret)
}

func secretID(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// createSession records a session for who and returns the value to put in
// its cookie or bearer token. A device session names the browser session
// that approved it as parent, and expires no later than it.
func (s *Service) createSession(ctx context.Context, db execer, who grant,
	client Client, parent *Session) (value string, sess *Session, err error) {
	secret, id := newSecret()
	ttl, codec, name := s.cfg.SessionTTL, s.cookie, codecCookie
	if client == ClientDevice {
		ttl, codec, name = s.cfg.DeviceTokenTTL, s.bearer, codecBearer
	}

	now := s.now().Truncate(time.Second)
	row := &sessionRow{
		Session: Session{ID: id, Login: who.Login, UserID: who.UserID, Role: who.Role,
			Client: client, Agents: nonNil(who.Agents), Created: now, Expires: now.Add(ttl)},
		owner: s.cfg.Owner.String(),
	}

	if parent != nil {
		row.parent = parent.ID
		if parent.Expires.Before(row.Expires) {
			row.Expires = parent.Expires
		}
	}

	if value, err = codec.Encode(name, secret); err != nil {
		return "", nil, fmt.Errorf("encoding session: %w", err)
	}
	if client == ClientDevice {
		value = BearerPrefix + value
	}

	if err := insertSession(ctx, db, row); err != nil {
		return "", nil, err
	}
	return value, &row.Session, nil
}

// grant is who a new session is for.
type grant struct {
	Login  string
	UserID int64
	Role   Role
	Agents []string
}

// Authenticate returns the session a request carries: an "Authorization:
// Bearer" device token if the request has one of ours (a bearer that is
// not ours, such as a CI OIDC token, is ignored here), else the session
// cookie. It fails with [ErrNoSession] when there is neither, and
// [ErrInvalidSession] when the credential does not name a live session.
// A state-changing request authenticated by cookie must come from the
// same origin, or it fails with [ErrCrossOrigin].
func (s *Service) Authenticate(r *http.Request) (*Session, error) {
	if tok := httpapi.BearerToken(r); IsSessionToken(tok) {
		var secret string
		err := s.bearer.Decode(codecBearer, strings.TrimPrefix(tok, BearerPrefix), &secret)
		if err != nil {
			return nil, fmt.Errorf("%w: bad token", ErrInvalidSession)
		}
		return s.lookup(r.Context(), secretID(secret), ClientDevice)
	}

	c, err := r.Cookie(s.cookies.session)
	if err != nil || c.Value == "" {
		return nil, ErrNoSession
	}

	var secret string
	if err := s.cookie.Decode(codecCookie, c.Value, &secret); err != nil {
		return nil, fmt.Errorf("%w: bad cookie", ErrInvalidSession)
	}

	if err := s.CheckCrossOrigin(r); err != nil {
		return nil, err
	}
	return s.lookup(r.Context(), secretID(secret), ClientBrowser)
}

// CheckCrossOrigin refuses a state-changing browser request from another
// origin, with [http.CrossOriginProtection]: safe methods and requests
// without Sec-Fetch-Site or Origin (non-browser clients) pass.
func (s *Service) CheckCrossOrigin(r *http.Request) error {
	if err := s.cop.Check(r); err != nil {
		return fmt.Errorf("%w: %w", ErrCrossOrigin, err)
	}
	return nil
}

func (s *Service) lookup(ctx context.Context, id string, client Client) (*Session, error) {
	row, err := getSession(ctx, s.cfg.DB, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: unknown", ErrInvalidSession)
	}
	if err != nil {
		return nil, fmt.Errorf("websession: reading session: %w", err)
	}

	switch {
	case row.revoked:
		return nil, fmt.Errorf("%w: revoked", ErrInvalidSession)
	case !s.now().Before(row.Expires):
		return nil, fmt.Errorf("%w: expired", ErrInvalidSession)
	case row.Client != client:
		return nil, fmt.Errorf("%w: wrong client", ErrInvalidSession)
	case row.owner != s.cfg.Owner.String():
		// The fleet owner changed since sign-in: roles were decided
		// against another principal.
		return nil, fmt.Errorf("%w: other fleet owner", ErrInvalidSession)
	}

	if client == ClientDevice {
		if err := s.checkParent(ctx, row.parent); err != nil {
			return nil, err
		}
	}
	return &row.Session, nil
}

// checkParent refuses a device session whose approving browser session
// has ended. [Service.Revoke] also ends a session's devices, but checking
// here covers expiry, a parent pruned from the table, and a token issued
// while its parent was being revoked.
func (s *Service) checkParent(ctx context.Context, parent string) error {
	if parent == "" {
		return fmt.Errorf("%w: no approving session", ErrInvalidSession)
	}

	if _, err := s.lookup(ctx, parent, ClientBrowser); err != nil {
		return fmt.Errorf("approving session: %w", err)
	}
	return nil
}

type sessionKey struct{}

// NewContext returns ctx carrying sess, as [Service.RequireSession] does.
func NewContext(ctx context.Context, sess *Session) context.Context {
	return context.WithValue(ctx, sessionKey{}, sess)
}

// FromContext returns the session [Service.RequireSession] put in ctx, or
// nil.
func FromContext(ctx context.Context) *Session {
	sess, _ := ctx.Value(sessionKey{}).(*Session)
	return sess
}

// RequireSession serves next only to requests with a live session, which
// it puts in the request context ([FromContext]). A browser asking for a
// page (GET or HEAD, Accept: text/html) without one is redirected to the
// sign-in page and back; any other caller gets a JSON 401, or 403 for a
// cross-origin state-changing request.
func (s *Service) RequireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.Authenticate(r)
		if err == nil {
			next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), sess)))
			return
		}
		s.refuse(w, r, err)
	})
}

// refuse answers a request that [Service.Authenticate] turned down.
func (s *Service) refuse(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrCrossOrigin):
		httpapi.WriteError(s.log, w, r, httpapi.Forbidden("cross-origin request refused"))
		return
	case !errors.Is(err, ErrNoSession) && !errors.Is(err, ErrInvalidSession):
		httpapi.WriteError(s.log, w, r, err)
		return
	}

	if errors.Is(err, ErrInvalidSession) && httpapi.BearerToken(r) == "" {
		s.clearSessionCookie(w)
	}

	if wantsHTML(r) && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		http.Redirect(w, r, s.LoginURL(r.URL.RequestURI()), http.StatusSeeOther)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="devopsdefender"`)
	httpapi.WriteError(s.log, w, r, httpapi.Unauthorized("sign in required"))
}

// LoginURL returns the sign-in page's path with returnTo (a path on this
// site or an allowed URL) to come back to.
func (s *Service) LoginURL(returnTo string) string {
	return LoginPath + "?" + url.Values{"return_to": {returnTo}}.Encode()
}

// wantsHTML reports whether the client asked for a page. "*/*" alone does
// not count, so curl gets a 401 rather than a redirect (auth.md §7.15).
func wantsHTML(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// Revoke ends the session with the given id and the device sessions it
// approved, so a device paired from a stolen cookie ends when the cookie's
// owner signs out. Ending an ended session is not an error.
func (s *Service) Revoke(ctx context.Context, id string) error {
	_, err := s.cfg.DB.ExecContext(ctx, `UPDATE websession_sessions SET revoked_at = ?
		WHERE (id = ? OR parent = ?) AND revoked_at IS NULL`, s.now().Unix(), id, id)
	if err != nil {
		return fmt.Errorf("websession: revoking session: %w", err)
	}
	return nil
}

// RevokeUser ends every live session of a GitHub user, e.g. after their
// tenancy was cleared, and returns how many it ended.
func (s *Service) RevokeUser(ctx context.Context, userID int64) (int, error) {
	res, err := s.cfg.DB.ExecContext(ctx, `UPDATE websession_sessions SET revoked_at = ?
		WHERE user_id = ? AND revoked_at IS NULL`, s.now().Unix(), userID)
	if err != nil {
		return 0, fmt.Errorf("websession: revoking sessions of user %d: %w", userID, err)
	}

	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("websession: revoking sessions of user %d: %w", userID, err)
	}
	return int(n), nil
}

// Prune deletes sessions that expired or were revoked more than a day ago
// and device codes past their expiry, and returns how many rows it
// deleted. Run it from time to time; nothing depends on it for safety.
func (s *Service) Prune(ctx context.Context) (int, error) {
	now := s.now().Unix()
	cutoff := now - int64(24*time.Hour/time.Second)

	sessions, err := s.cfg.DB.ExecContext(ctx, `DELETE FROM websession_sessions
		WHERE expires_at < ? OR revoked_at < ?`, cutoff, cutoff)
	if err != nil {
		return 0, fmt.Errorf("websession: pruning sessions: %w", err)
	}

	devices, err := s.cfg.DB.ExecContext(ctx,
		`DELETE FROM websession_devices WHERE expires_at < ?`, now)
	if err != nil {
		return 0, fmt.Errorf("websession: pruning device codes: %w", err)
	}

	n, _ := sessions.RowsAffected()
	m, _ := devices.RowsAffected()
	return int(n + m), nil
}

// logout ends the session of the request's cookie or bearer token and
// clears the cookie. Without a session it still clears the cookie, so
// signing out twice is harmless.
func (s *Service) logout(w http.ResponseWriter, r *http.Request) error {
	sess, err := s.Authenticate(r)
	switch {
	case errors.Is(err, ErrCrossOrigin):
		return httpapi.Forbidden("cross-origin request refused")
	case err == nil:
		if err := s.Revoke(r.Context(), sess.ID); err != nil {
			return err
		}
		s.log.InfoContext(r.Context(), "session ended", "session", sess.ID, "login", sess.Login)
		s.emit(r.Context(), Event{Action: ActionLogout, Outcome: OutcomeOK,
			Login: sess.Login, UserID: sess.UserID, Role: sess.Role, Session: sess.ID,
			Details: map[string]any{"client": string(sess.Client)}})
	case !errors.Is(err, ErrNoSession) && !errors.Is(err, ErrInvalidSession):
		return err
	}

	if sess == nil || sess.Client == ClientBrowser {
		s.clearSessionCookie(w)
	}

	if wantsHTML(r) {
		http.Redirect(w, r, LoginPath+"?signed_out=1", http.StatusSeeOther)
		return nil
	}
	return httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "signed_out"})
}
