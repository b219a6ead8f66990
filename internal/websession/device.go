package websession

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/sqldb"
)

// Error codes of POST /auth/device/poll, after RFC 8628 §3.5.
const (
	CodeAuthorizationPending = "AUTHORIZATION_PENDING"
	CodeSlowDown             = "SLOW_DOWN"
	CodeExpiredToken         = "EXPIRED_TOKEN"
	CodeAccessDenied         = "ACCESS_DENIED"
	CodeTooManyRequests      = "TOO_MANY_REQUESTS"
)

// userCodeAlphabet has no vowels (no words) and no look-alikes, as RFC
// 8628 §6.1 suggests. Eight letters give 20^8 ≈ 2.6e10 codes.
const (
	userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"
	userCodeLen      = 8
	maxDeviceForm    = 4 << 10
)

// DeviceAuthorization answers POST /auth/device/start.
type DeviceAuthorization struct {
	DeviceCode              string `json:"device_code"`
	UserCode                string `json:"user_code"`
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete"`
	ExpiresIn               int    `json:"expires_in"`
	Interval                int    `json:"interval"`
}

// DevicePoll is the body of POST /auth/device/poll.
type DevicePoll struct {
	DeviceCode string `json:"device_code"`
}

// DeviceToken answers a poll once the code was approved. Send AccessToken
// as "Authorization: Bearer"; POST /logout with it ends its session.
type DeviceToken struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Login       string `json:"login"`
	Role        Role   `json:"role"`
}

// deviceStart hands a native client a device code to poll with and a user
// code for a person to approve.
func (s *Service) deviceStart(w http.ResponseWriter, r *http.Request) error {
	ctx, now := r.Context(), s.now()
	if err := s.checkPendingRoom(ctx, now); err != nil {
		return err
	}

	device, hash := newSecret()
	var user string
	for attempt := 0; ; attempt++ {
		user = newUserCode()
		_, err := s.cfg.DB.ExecContext(ctx, `INSERT INTO websession_devices
			(code_hash, user_code, state, created_at, expires_at)
			VALUES (?, ?, 'pending', ?, ?)`,
			hash, user, now.Unix(), now.Add(s.cfg.DeviceCodeTTL).Unix())
		if err == nil {
			break
		}

		// A user code still in the table: draw again.
		if attempt == 3 || !strings.Contains(err.Error(), "UNIQUE") {
			return fmt.Errorf("websession: recording device code: %w", err)
		}
	}

	verify := s.cfg.public.String() + DevicePath
	return httpapi.WriteJSON(w, http.StatusOK, DeviceAuthorization{
		DeviceCode: device, UserCode: formatUserCode(user), VerificationURI: verify,
		VerificationURIComplete: verify + "?" + url.Values{"user_code": {user}}.Encode(),
		ExpiresIn:               int(s.cfg.DeviceCodeTTL / time.Second),
		Interval:                int(s.cfg.PollInterval / time.Second),
	})
}

// checkPendingRoom drops expired codes and refuses a new one while too
// many wait, so anonymous callers cannot grow the table without bound.
func (s *Service) checkPendingRoom(ctx context.Context, now time.Time) error {
	if _, err := s.cfg.DB.ExecContext(ctx,
		`DELETE FROM websession_devices WHERE expires_at <= ?`, now.Unix()); err != nil {
		return fmt.Errorf("websession: dropping expired device codes: %w", err)
	}

	var n int
	err := s.cfg.DB.QueryRowContext(ctx,
		`SELECT COUNT(*) FROM websession_devices WHERE state = 'pending'`).Scan(&n)
	if err != nil {
		return fmt.Errorf("websession: counting device codes: %w", err)
	}

	if n >= s.cfg.MaxPendingDevices {
		return &httpapi.Error{Status: http.StatusTooManyRequests, Code: CodeTooManyRequests,
			Message: "too many devices waiting for approval; try again later"}
	}
	return nil
}

func newUserCode() string {
	var b strings.Builder
	buf := make([]byte, 1)
	for b.Len() < userCodeLen {
		rand.Read(buf)
		// Reject the top of the byte range so every letter is equally
		// likely.
		if int(buf[0]) < 256-256%len(userCodeAlphabet) {
			b.WriteByte(userCodeAlphabet[int(buf[0])%len(userCodeAlphabet)])
		}
	}
	return b.String()
}

func formatUserCode(c string) string { return c[:4] + "-" + c[4:] }

// normalizeUserCode accepts what a person types: any case, with dashes or
// spaces. It returns "" for anything that cannot be a code.
func normalizeUserCode(s string) string {
	s = strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(s))
	if len(s) != userCodeLen || strings.Trim(s, userCodeAlphabet) != "" {
		return ""
	}
	return s
}

// devicePage shows the form where a signed-in person enters a user code.
func (s *Service) devicePage(w http.ResponseWriter, r *http.Request) error {
	sess := FromContext(r.Context())
	code := normalizeUserCode(r.URL.Query().Get("user_code"))
	if code != "" {
		code = formatUserCode(code)
	}
	return render(w, http.StatusOK, "device.html", deviceData{Login: sess.Login, UserCode: code})
}

// deviceDecide approves or denies a user code for the signed-in person.
// Only a browser session may approve: a device must not mint more devices.
func (s *Service) deviceDecide(w http.ResponseWriter, r *http.Request) error {
	sess := FromContext(r.Context())
	if sess.Client != ClientBrowser {
		return httpapi.Forbidden("approve devices from a browser session")
	}

	r.Body = http.MaxBytesReader(w, r.Body, maxDeviceForm)
	if err := r.ParseForm(); err != nil {
		return httpapi.BadRequest("invalid form")
	}

	code := normalizeUserCode(r.PostForm.Get("user_code"))
	approve := r.PostForm.Get("decision") == "approve"
	if code == "" || !approve && r.PostForm.Get("decision") != "deny" {
		return httpapi.BadRequest("enter the code your device shows and approve or deny it")
	}

	ok, err := s.decide(r.Context(), sess, code, approve)
	if err != nil {
		return err
	}
	if !ok {
		return httpapi.BadRequest("that code is unknown, expired or already used")
	}

	s.log.InfoContext(r.Context(), "device code decided", "login", sess.Login,
		"approved", approve, "session", sess.ID)
	if !approve {
		s.emit(r.Context(), Event{Action: ActionDevicePaired, Outcome: OutcomeDenied,
			Login: sess.Login, UserID: sess.UserID, Role: sess.Role,
			Details: map[string]any{"reason": "denied by user", "approved_by": sess.ID}})
	}
	return render(w, http.StatusOK, "device.html", deviceData{Login: sess.Login,
		Approved: approve, Denied: !approve})
}

// decide records the decision on a pending, unexpired code. On approval
// the code takes the approver's identity, which the device's session
// inherits.
func (s *Service) decide(ctx context.Context, sess *Session, code string,
	approve bool) (bool, error) {
	state := "denied"
	if approve {
		state = "approved"
	}

	agents, err := json.Marshal(nonNil(sess.Agents))
	if err != nil {
		return false, fmt.Errorf("websession: encoding agents: %w", err)
	}

	res, err := s.cfg.DB.ExecContext(ctx, `UPDATE websession_devices
		SET state = ?, approver = ?, login = ?, user_id = ?, role = ?, agents = ?
		WHERE user_code = ? AND state = 'pending' AND expires_at > ?`,
		state, sess.ID, sess.Login, sess.UserID, string(sess.Role), string(agents),
		code, s.now().Unix())
	if err != nil {
		return false, fmt.Errorf("websession: recording device decision: %w", err)
	}

	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("websession: recording device decision: %w", err)
	}
	return n == 1, nil
}

// deviceRow is a row of websession_devices.
type deviceRow struct {
	state    string
	expires  time.Time
	lastPoll int64
	approver string
	grant    grant
}

// devicePoll answers a native client's poll: pending (428), too fast
// (429), denied (403), expired or used (400), or its bearer token.
func (s *Service) devicePoll(w http.ResponseWriter, r *http.Request) error {
	var req DevicePoll
	if err := httpapi.DecodeBody(w, r, 4<<10, &req); err != nil {
		return err
	}

	ctx, now := r.Context(), s.now()
	hash := secretID(req.DeviceCode)
	row, err := s.getDevice(ctx, hash)
	if errors.Is(err, sql.ErrNoRows) || req.DeviceCode == "" {
		return httpapi.BadRequest("unknown device code")
	}
	if err != nil {
		return fmt.Errorf("websession: reading device code: %w", err)
	}

	approver, err := s.checkPoll(ctx, hash, row, now)
	if err != nil {
		return err
	}
	return s.issueDeviceToken(w, r, hash, row, approver)
}

// checkPoll records the poll and returns the error answer for every state
// but "approved", for which it returns the approving browser session.
func (s *Service) checkPoll(ctx context.Context, hash string, row *deviceRow,
	now time.Time) (*Session, error) {
	if !now.Before(row.expires) || row.state == "consumed" {
		return nil, &httpapi.Error{Status: http.StatusBadRequest, Code: CodeExpiredToken,
			Message: "device code expired or already used; start again"}
	}

	_, err := s.cfg.DB.ExecContext(ctx,
		`UPDATE websession_devices SET last_poll = ? WHERE code_hash = ?`, now.Unix(), hash)
	if err != nil {
		return nil, fmt.Errorf("websession: recording poll: %w", err)
	}

	if now.Unix()-row.lastPoll < int64(s.cfg.PollInterval/time.Second) {
		return nil, &httpapi.Error{Status: http.StatusTooManyRequests, Code: CodeSlowDown,
			Message: fmt.Sprintf("poll at most every %s", s.cfg.PollInterval)}
	}

	switch row.state {
	case "pending":
		return nil, &httpapi.Error{Status: http.StatusPreconditionRequired,
			Code: CodeAuthorizationPending, Message: "waiting for approval"}
	case "denied":
		if _, err := s.consumeDevice(ctx, s.cfg.DB, hash, "denied"); err != nil {
			return nil, fmt.Errorf("websession: %w", err)
		}
		return nil, &httpapi.Error{Status: http.StatusForbidden, Code: CodeAccessDenied,
			Message: "the device was denied"}
	}

	// The approver must still be signed in: a session revoked since (a
	// stolen cookie ended by its owner) must not leave a device behind.
	approver, err := s.lookup(ctx, row.approver, ClientBrowser)
	if err != nil {
		if _, err := s.consumeDevice(ctx, s.cfg.DB, hash, "approved"); err != nil {
			return nil, fmt.Errorf("websession: %w", err)
		}
		return nil, &httpapi.Error{Status: http.StatusForbidden, Code: CodeAccessDenied,
			Message: "the approving session has ended", Err: err}
	}
	return approver, nil
}

// issueDeviceToken consumes the approved code and creates the device's
// session in one transaction, so two polls cannot both get a token. The
// session lives no longer than its approver's.
func (s *Service) issueDeviceToken(w http.ResponseWriter, r *http.Request, hash string,
	row *deviceRow, approver *Session) error {
	ctx := r.Context()
	var (
		used  bool
		token string
		sess  *Session
	)
	err := s.cfg.DB.Write(ctx, func(tx sqldb.Tx) error {
		ok, err := s.consumeDevice(ctx, tx, hash, "approved")
		if err != nil || !ok {
			used = !ok
			return err
		}

		token, sess, err = s.createSession(ctx, tx, row.grant, ClientDevice, approver)
		return err
	})
	switch {
	case err != nil:
		return fmt.Errorf("websession: issuing device token: %w", err)
	case used:
		// Another poll got the token between this one's read and its
		// write; the empty transaction committed harmlessly.
		return &httpapi.Error{Status: http.StatusBadRequest, Code: CodeExpiredToken,
			Message: "device code already used; start again"}
	}

	s.log.InfoContext(ctx, "device paired", "login", sess.Login, "session", sess.ID)
	s.emit(ctx, Event{Action: ActionDevicePaired, Outcome: OutcomeOK, Login: sess.Login,
		UserID: sess.UserID, Role: sess.Role, Session: sess.ID,
		Details: map[string]any{"client": string(ClientDevice), "approved_by": row.approver}})

	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, DeviceToken{AccessToken: token,
		TokenType: "Bearer", ExpiresIn: int(sess.Expires.Sub(sess.Created) / time.Second),
		Login: sess.Login, Role: sess.Role})
}

// consumeDevice marks a code in state from as used and reports whether it
// was still in that state.
func (s *Service) consumeDevice(ctx context.Context, db execer, hash, from string) (bool, error) {
	res, err := db.ExecContext(ctx, `UPDATE websession_devices SET state = 'consumed'
		WHERE code_hash = ? AND state = ?`, hash, from)
	if err != nil {
		return false, fmt.Errorf("consuming device code: %w", err)
	}

	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("consuming device code: %w", err)
	}
	return n == 1, nil
}

func (s *Service) getDevice(ctx context.Context, hash string) (*deviceRow, error) {
	var (
		d            deviceRow
		expires      int64
		role, agents string
	)
	err := s.cfg.DB.QueryRowContext(ctx, `SELECT state, expires_at, last_poll, approver,
		login, user_id, role, agents FROM websession_devices WHERE code_hash = ?`, hash).
		Scan(&d.state, &expires, &d.lastPoll, &d.approver, &d.grant.Login, &d.grant.UserID,
			&role, &agents)
	if err != nil {
		return nil, err
	}

	d.expires, d.grant.Role = unixTime(expires), Role(role)
	if err := json.Unmarshal([]byte(agents), &d.grant.Agents); err != nil {
		return nil, fmt.Errorf("websession: decoding device agents: %w", err)
	}
	return &d, nil
}
