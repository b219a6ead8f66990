package websession

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// native is a device-flow client: no cookies, no browser headers.
type native struct {
	f *fleet
	c *http.Client
}

func (f *fleet) native() *native { return &native{f: f, c: localhostClient(nil)} }

// post sends a JSON body and decodes a 200 answer into out; it returns
// the status and the error code of a non-200 answer.
func (n *native) post(path string, in, out any, hdr ...string) (int, string) {
	t := n.f.t
	t.Helper()
	body, _ := json.Marshal(in)
	req, _ := http.NewRequest("POST", n.f.appURL+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}

	resp, err := n.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e httpapi.Body
		json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e.Code
	}

	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, ""
}

func (n *native) start() DeviceAuthorization {
	n.f.t.Helper()
	var da DeviceAuthorization
	if code, ec := n.post(DeviceStartPath, map[string]string{}, &da); code != http.StatusOK {
		n.f.t.Fatalf("device start: %d %s", code, ec)
	}
	return da
}

func (n *native) poll(da DeviceAuthorization) (DeviceToken, int, string) {
	var tok DeviceToken
	code, ec := n.post(DevicePollPath, DevicePoll{DeviceCode: da.DeviceCode}, &tok)
	return tok, code, ec
}

// decide submits the approval form as the browser would.
func (b *browser) decide(userCode, decision string) int {
	return b.do("POST", b.f.appURL+DevicePath,
		url.Values{"user_code": {userCode}, "decision": {decision}},
		"Origin", b.f.appURL, "Accept", "text/html").StatusCode
}

func TestDeviceFlowApproveAndPoll(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	n := f.native()
	da := n.start()
	if da.VerificationURI != f.appURL+DevicePath || da.Interval != 5 || da.ExpiresIn != 600 ||
		len(da.UserCode) != 9 || da.DeviceCode == "" {
		t.Fatalf("device authorization %+v", da)
	}

	if _, code, ec := n.poll(da); code != http.StatusPreconditionRequired ||
		ec != CodeAuthorizationPending {
		t.Errorf("poll before approval: %d %s, want 428 %s", code, ec, CodeAuthorizationPending)
	}
	if _, code, ec := n.poll(da); code != http.StatusTooManyRequests || ec != CodeSlowDown {
		t.Errorf("poll too soon: %d %s, want 429 %s", code, ec, CodeSlowDown)
	}

	// The verification page sends a browser without a session to sign in.
	b := f.browser()
	page := b.do("GET", da.VerificationURIComplete, nil, "Accept", "text/html")
	if page.StatusCode != http.StatusSeeOther {
		t.Fatalf("approval page without session: %d, want 303 to login", page.StatusCode)
	}

	b.login(DevAdminLogin, "/auth/device")
	page = b.do("GET", da.VerificationURIComplete, nil, "Accept", "text/html")
	if page.StatusCode != http.StatusOK {
		t.Fatalf("approval page: %d", page.StatusCode)
	}

	if code := b.decide("wxyz-wxyz", "approve"); code != http.StatusBadRequest {
		t.Errorf("approving an unknown code: %d, want 400", code)
	}
	if code := b.decide(da.UserCode, "approve"); code != http.StatusOK {
		t.Fatalf("approving: %d, want 200", code)
	}

	f.clock.Add(DefaultPollInterval)
	tok, code, ec := n.poll(da)
	if code != http.StatusOK || tok.TokenType != "Bearer" || tok.Login != DevAdminLogin ||
		tok.Role != RoleAdmin || !IsSessionToken(tok.AccessToken) {
		t.Fatalf("poll after approval: %d %s %+v", code, ec, tok)
	}

	f.clock.Add(DefaultPollInterval)
	if _, code, ec := n.poll(da); code != http.StatusBadRequest || ec != CodeExpiredToken {
		t.Errorf("second poll: %d %s, want 400 %s", code, ec, CodeExpiredToken)
	}

	bearer := f.browser()
	sess, code := bearer.session("Authorization", "Bearer "+tok.AccessToken)
	if code != http.StatusOK || sess.Client != ClientDevice || sess.Login != DevAdminLogin {
		t.Fatalf("bearer: %d %+v, want dev-admin's device session", code, sess)
	}

	// The device lives no longer than the browser session that approved it.
	approver, _ := b.session()
	if !sess.Expires.Equal(approver.Expires) ||
		tok.ExpiresIn != int(approver.Expires.Sub(sess.Created)/time.Second) {
		t.Errorf("device session expires %v in %ds, want with its approver at %v",
			sess.Expires, tok.ExpiresIn, approver.Expires)
	}

	// A device cannot approve further devices.
	other := n.start()
	resp := bearer.do("POST", f.appURL+DevicePath,
		url.Values{"user_code": {other.UserCode}, "decision": {"approve"}},
		"Authorization", "Bearer "+tok.AccessToken)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("device approving a device: %d, want 403", resp.StatusCode)
	}

	ev := f.recorded()
	if last := ev[len(ev)-1]; last.Action != ActionDevicePaired || last.Outcome != OutcomeOK ||
		last.Session != sess.ID {
		t.Errorf("last event %+v, want device_paired ok", last)
	}

	// Signing out with the bearer ends the device's session only.
	if code, _ := n.post(LogoutPath, map[string]string{}, nil,
		"Authorization", "Bearer "+tok.AccessToken); code != http.StatusOK {
		t.Errorf("logout with bearer: %d", code)
	}
	if _, code := bearer.session("Authorization", "Bearer "+tok.AccessToken); code != 401 {
		t.Errorf("bearer after logout: %d, want 401", code)
	}
	if _, code := b.session(); code != http.StatusOK {
		t.Errorf("browser session after the device signed out: %d, want 200", code)
	}
}

func TestDeviceTokenRevoked(t *testing.T) {
	tests := []struct {
		name   string
		revoke func(f *fleet, b *browser, tok pairedDevice)
	}{
		{"by id", func(f *fleet, _ *browser, tok pairedDevice) {
			if err := f.svc.Revoke(context.Background(), tok.id); err != nil {
				t.Fatal(err)
			}
		}},
		{"by user", func(f *fleet, _ *browser, _ pairedDevice) {
			n, err := f.svc.RevokeUser(context.Background(), DevAdminID)
			if err != nil || n != 2 {
				t.Fatalf("RevokeUser = %d, %v; want the browser and the device session", n, err)
			}
		}},
		{"expired", func(f *fleet, _ *browser, _ pairedDevice) {
			f.clock.Add(DefaultDeviceTokenTTL)
		}},
		{"approver signed out", func(f *fleet, b *browser, _ pairedDevice) {
			b.do("POST", f.appURL+LogoutPath, url.Values{}, "Origin", f.appURL)
		}},
		{"approver signed in again", func(f *fleet, b *browser, _ pairedDevice) {
			b.login(DevAdminLogin, "/")
		}},
		{"approver revoked", func(f *fleet, b *browser, _ pairedDevice) {
			approver, _ := b.session()
			if err := f.svc.Revoke(context.Background(), approver.ID); err != nil {
				t.Fatal(err)
			}
		}},
		{"approver expired", func(f *fleet, _ *browser, _ pairedDevice) {
			f.clock.Add(DefaultSessionTTL)
		}},
		{"approver revoked behind the cascade", func(f *fleet, b *browser, _ pairedDevice) {
			// As if the device's row had been written after its parent
			// was revoked: only the parent is marked.
			approver, _ := b.session()
			if _, err := f.svc.cfg.DB.ExecContext(context.Background(),
				`UPDATE websession_sessions SET revoked_at = 1 WHERE id = ?`,
				approver.ID); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t, DevUsers(testOwner))
			b, tok := pairDevice(t, f)
			tt.revoke(f, b, tok)
			if _, code := f.browser().session("Authorization", "Bearer "+tok.token); code != 401 {
				t.Errorf("revoked bearer: %d, want 401", code)
			}
		})
	}
}

// pairedDevice is a paired device's token and session id.
type pairedDevice struct{ token, id string }

func pairDevice(t *testing.T, f *fleet) (*browser, pairedDevice) {
	t.Helper()
	n := f.native()
	da := n.start()
	b := f.browser()
	b.login(DevAdminLogin, "/")
	if code := b.decide(da.UserCode, "approve"); code != http.StatusOK {
		t.Fatalf("approving: %d", code)
	}

	tok, code, ec := n.poll(da)
	if code != http.StatusOK {
		t.Fatalf("poll: %d %s", code, ec)
	}
	sess, code := f.browser().session("Authorization", "Bearer "+tok.AccessToken)
	if code != http.StatusOK {
		t.Fatalf("fresh bearer: %d", code)
	}
	return b, pairedDevice{token: tok.AccessToken, id: sess.ID}
}

func TestDeviceDeniedAndExpired(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	n := f.native()
	b := f.browser()
	b.login(DevAdminLogin, "/")

	denied := n.start()
	if code := b.decide(denied.UserCode, "deny"); code != http.StatusOK {
		t.Fatalf("denying: %d", code)
	}
	if _, code, ec := n.poll(denied); code != http.StatusForbidden || ec != CodeAccessDenied {
		t.Errorf("poll after deny: %d %s, want 403 %s", code, ec, CodeAccessDenied)
	}

	late := n.start()
	f.clock.Add(DefaultDeviceCodeTTL)
	if code := b.decide(late.UserCode, "approve"); code != http.StatusBadRequest {
		t.Errorf("approving an expired code: %d, want 400", code)
	}
	if _, code, ec := n.poll(late); code != http.StatusBadRequest || ec != CodeExpiredToken {
		t.Errorf("poll of an expired code: %d %s, want 400 %s", code, ec, CodeExpiredToken)
	}

	unknown := DeviceAuthorization{DeviceCode: "nope"}
	if _, code, _ := n.poll(unknown); code != http.StatusBadRequest {
		t.Errorf("poll of an unknown code: %d, want 400", code)
	}
}

func TestDeviceApproverSignedOutBeforePoll(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	n := f.native()
	da := n.start()
	b := f.browser()
	b.login(DevAdminLogin, "/")
	if code := b.decide(da.UserCode, "approve"); code != http.StatusOK {
		t.Fatalf("approving: %d", code)
	}

	b.do("POST", f.appURL+LogoutPath, url.Values{}, "Origin", f.appURL)
	if _, code, ec := n.poll(da); code != http.StatusForbidden || ec != CodeAccessDenied {
		t.Errorf("poll after the approver signed out: %d %s, want 403 %s",
			code, ec, CodeAccessDenied)
	}
}

func TestDeviceStartBounded(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner), func(o *Options) { o.MaxPendingDevices = 2 })
	n := f.native()
	n.start()
	n.start()
	if code, ec := n.post(DeviceStartPath, map[string]string{}, nil); code !=
		http.StatusTooManyRequests || ec != CodeTooManyRequests {
		t.Errorf("third pending code: %d %s, want 429", code, ec)
	}

	f.clock.Add(DefaultDeviceCodeTTL + time.Second)
	n.start() // expired codes make room
}
