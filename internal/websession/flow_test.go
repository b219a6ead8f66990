package websession

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
)

func TestLoginAsAdminThroughLocalProvider(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	b := f.browser()

	resp := b.login(DevAdminLogin, "/private?x=1")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/private?x=1" {
		t.Fatalf("callback: %d to %q, want 303 to /private?x=1",
			resp.StatusCode, resp.Header.Get("Location"))
	}
	set := setCookies(resp)
	want := "dd_session=; Path=/; Max-Age=43200; HttpOnly; SameSite=Lax"
	if got := redactValue(set["dd_session"]); got != want {
		t.Errorf("session cookie = %q, want %q (host-only: no Domain)", got, want)
	}
	if got := set["dd_oauth"]; !strings.Contains(got, "Max-Age=0") {
		t.Errorf("nonce cookie = %q, want it cleared", got)
	}

	sess, code := b.session()
	if code != http.StatusOK {
		t.Fatalf("GET /private: %d, want 200", code)
	}
	if sess.Login != DevAdminLogin || sess.UserID != DevAdminID || sess.Role != RoleAdmin ||
		sess.Client != ClientBrowser {
		t.Errorf("session = %+v, want dev-admin's admin browser session", sess)
	}
	if !sess.Expires.Equal(f.clock.Now().Add(DefaultSessionTTL)) {
		t.Errorf("expires %v, want now + %v", sess.Expires, DefaultSessionTTL)
	}

	events := f.recorded()
	if len(events) != 1 || events[0].Action != ActionLogin || events[0].Outcome != OutcomeOK ||
		events[0].Actor() != "user:dev-admin(2001)" || events[0].Session != sess.ID {
		t.Errorf("events = %+v, want one login ok by dev-admin", events)
	}
}

func TestClassificationAtLogin(t *testing.T) {
	acme := ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "acme", ID: 77}
	users := append(DevUsers(testOwner),
		LocalUser{Login: "acme-dev", ID: 3001,
			Orgs: []LocalMembership{{Org: "acme", OrgID: 77, Role: "member"}}},
		LocalUser{Login: "fake-acme", ID: 3002,
			Orgs: []LocalMembership{{Org: "acme", OrgID: 78, Role: "admin"}}},
		LocalUser{Login: "owner-member", ID: 3003,
			Orgs: []LocalMembership{{Org: testOwner.Name, OrgID: testOwner.ID, Role: "member"}}},
	)

	tenantUser := ghoidc.Principal{Kind: ghoidc.KindUser, Name: DevTenantLogin, ID: DevTenantID}
	tests := []struct {
		name       string
		login      string
		tenants    map[string]ghoidc.Principal
		orgAdmins  bool
		wantStatus int
		wantRole   Role
		wantAgents []string
	}{
		{name: "org admin", login: DevAdminLogin, wantStatus: 303, wantRole: RoleAdmin},
		{name: "private org member", login: "owner-member", wantStatus: 303, wantRole: RoleAdmin},
		{name: "member when only org admins count", login: "owner-member", orgAdmins: true,
			wantStatus: 403},
		{name: "tenant without tenancy", login: DevTenantLogin, wantStatus: 403},
		{name: "tenant by user id", login: DevTenantLogin,
			tenants:    map[string]ghoidc.Principal{"agent-1": tenantUser},
			wantStatus: 303, wantRole: RoleTenant, wantAgents: []string{"agent-1"}},
		{name: "tenant by org membership", login: "acme-dev",
			tenants:    map[string]ghoidc.Principal{"agent-2": acme, "agent-1": tenantUser},
			wantStatus: 303, wantRole: RoleTenant, wantAgents: []string{"agent-2"}},
		{name: "org of the same name with another id", login: "fake-acme",
			tenants: map[string]ghoidc.Principal{"agent-2": acme}, wantStatus: 403},
		{name: "stranger", login: DevStrangerLogin,
			tenants: map[string]ghoidc.Principal{"agent-1": tenantUser}, wantStatus: 403},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t, users, func(o *Options) { o.OrgAdminsOnly = tt.orgAdmins })
			for a, p := range tt.tenants {
				f.setTenant(a, p)
			}

			b := f.browser()
			resp := b.login(tt.login, "/private")
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("callback status %d, want %d", resp.StatusCode, tt.wantStatus)
			}

			sess, code := b.session()
			if tt.wantStatus != http.StatusSeeOther {
				if code != http.StatusUnauthorized || b.cookie("dd_session") != nil {
					t.Errorf("refused user: /private %d, want 401 and no cookie", code)
				}
				ev := f.recorded()
				if len(ev) != 1 || ev[0].Outcome != OutcomeDenied || ev[0].Login != tt.login {
					t.Errorf("events = %+v, want one denied login", ev)
				}
				return
			}

			if code != http.StatusOK || sess.Role != tt.wantRole {
				t.Fatalf("/private: %d %+v, want role %q", code, sess, tt.wantRole)
			}
			if diff := cmp.Diff(tt.wantAgents, sess.Agents, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("agents (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCallbackRefusals(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	tests := []struct {
		name   string
		mangle func(b *browser, callback string) string
		want   int
	}{
		{name: "tampered state", want: http.StatusBadRequest,
			mangle: func(_ *browser, cb string) string { return setParam(cb, "state", flip) }},
		{name: "missing state", want: http.StatusBadRequest,
			mangle: func(_ *browser, cb string) string { return setParam(cb, "state", drop) }},
		{name: "another browser (no nonce cookie)", want: http.StatusBadRequest,
			mangle: func(b *browser, cb string) string {
				b.c.Jar = newJar(t)
				return cb
			}},
		{name: "state expired", want: http.StatusBadRequest,
			mangle: func(_ *browser, cb string) string {
				f.clock.Add(DefaultDeviceCodeTTL + time.Second)
				return cb
			}},
		{name: "bad code", want: http.StatusBadRequest,
			mangle: func(_ *browser, cb string) string { return setParam(cb, "code", flip) }},
		{name: "denied at GitHub", want: http.StatusForbidden,
			mangle: func(_ *browser, cb string) string {
				return setParam(cb, "error", func(string) string { return "access_denied" })
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := f.browser()
			callback := tt.mangle(b, b.pick(b.startLogin("/"), DevAdminLogin))
			resp := b.do("GET", callback, nil, "Accept", "text/html")
			if resp.StatusCode != tt.want {
				t.Errorf("callback status %d, want %d", resp.StatusCode, tt.want)
			}

			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
				t.Errorf("content type %q, want an HTML page for the browser", ct)
			}
			if _, ok := setCookies(resp)["dd_session"]; ok {
				t.Error("a session cookie was set")
			}
			if _, code := b.session(); code != http.StatusUnauthorized {
				t.Errorf("/private after refused callback: %d, want 401", code)
			}
		})
	}
}

func TestReturnTo(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	b := f.browser()
	tests := []struct {
		returnTo string
		ok       bool
	}{
		{"", true},
		{"/agent/web-1?tab=logs", true},
		{f.appURL + "/agent/x", true},
		{strings.Replace(f.appURL, "app.", "APP.", 1) + "/", true},
		{"https://evil.example/", false},
		{"//evil.example/", false},
		{"/\\evil.example/", false},
		{"http://evil.localhost:" + f.appURL[strings.LastIndex(f.appURL, ":")+1:] + "/", false},
		{"http://app.localhost:1/", false},
		{"https://app.localhost" + f.appURL[strings.LastIndex(f.appURL, ":"):] + "/", false},
		{"http://user@" + strings.TrimPrefix(f.appURL, "http://") + "/", false},
		{"javascript:alert(1)", false},
		{"private", false},
		{"/x\r\nSet-Cookie: a=b", false},
	}

	for _, tt := range tests {
		resp := b.do("GET", f.appURL+StartPath+"?"+url.Values{"return_to": {tt.returnTo}}.Encode(),
			nil)
		if got := resp.StatusCode == http.StatusFound; got != tt.ok {
			t.Errorf("return_to %q: status %d, want accepted=%v",
				tt.returnTo, resp.StatusCode, tt.ok)
		}
	}
}

func TestReturnHostsPatterns(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner), func(o *Options) {
		o.ReturnHosts = []string{"*.fleet.localhost", "docs.localhost:9000"}
	})
	tests := []struct {
		returnTo string
		ok       bool
	}{
		{"http://web.fleet.localhost/", true},
		{"http://a.b.fleet.localhost/x", true},
		{"http://fleet.localhost/", false},
		{"http://evilfleet.localhost/", false},
		{"http://web.fleet.localhost:8080/", false},
		{"http://docs.localhost:9000/", true},
		{"http://docs.localhost/", false},
		{"https://web.fleet.localhost/", false},
	}

	for _, tt := range tests {
		_, err := f.svc.cfg.checkReturnTo(tt.returnTo)
		if (err == nil) != tt.ok {
			t.Errorf("return_to %q: err %v, want accepted=%v", tt.returnTo, err, tt.ok)
		}
	}
}

func TestLogoutRevokesSession(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	b := f.browser()
	b.login(DevAdminLogin, "/")
	old := b.cookie("dd_session")
	if old == nil {
		t.Fatal("no session cookie after login")
	}

	resp := b.do("POST", f.appURL+LogoutPath, url.Values{}, "Origin", f.appURL,
		"Accept", "text/html")
	if resp.StatusCode != http.StatusSeeOther ||
		!strings.HasPrefix(resp.Header.Get("Location"), LoginPath) {
		t.Fatalf("logout: %d to %q, want 303 to the login page",
			resp.StatusCode, resp.Header.Get("Location"))
	}
	if b.cookie("dd_session") != nil {
		t.Error("logout left the cookie in the browser")
	}

	// Someone who kept a copy of the cookie gets nowhere.
	replay := f.browser()
	_, code := replay.session("Cookie", old.Name+"="+old.Value)
	if code != http.StatusUnauthorized {
		t.Errorf("old cookie after logout: %d, want 401", code)
	}

	ev := f.recorded()
	if last := ev[len(ev)-1]; last.Action != ActionLogout || last.Outcome != OutcomeOK {
		t.Errorf("last event %+v, want logout ok", last)
	}
}

func TestExpiredSessionRefused(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	b := f.browser()
	b.login(DevAdminLogin, "/")

	f.clock.Add(DefaultSessionTTL - time.Second)
	if _, code := b.session(); code != http.StatusOK {
		t.Fatalf("just before expiry: %d, want 200", code)
	}

	f.clock.Add(time.Second)
	if _, code := b.session(); code != http.StatusUnauthorized {
		t.Errorf("at expiry: %d, want 401", code)
	}
}

func TestRequireSessionAnswers(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	b := f.browser()

	resp := b.do("GET", f.appURL+"/private?a=1", nil, "Accept", "text/html,*/*")
	want := LoginPath + "?return_to=%2Fprivate%3Fa%3D1"
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != want {
		t.Errorf("page without session: %d to %q, want 303 to %q",
			resp.StatusCode, resp.Header.Get("Location"), want)
	}

	for _, accept := range []string{"application/json", "*/*", ""} {
		resp := b.do("GET", f.appURL+"/private", nil, "Accept", accept)
		if resp.StatusCode != http.StatusUnauthorized ||
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("Accept %q without session: %d %q, want a JSON 401", accept,
				resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}

	login := b.do("GET", f.appURL+want, nil, "Accept", "text/html")
	if login.StatusCode != http.StatusOK {
		t.Errorf("login page: %d, want 200", login.StatusCode)
	}

	b.login(DevAdminLogin, "/")
	c := b.cookie("dd_session")
	tampered := f.browser()
	resp = tampered.do("GET", f.appURL+"/private", nil, "Cookie", "dd_session="+flip(c.Value),
		"Accept", "application/json")
	if resp.StatusCode != http.StatusUnauthorized ||
		!strings.Contains(setCookies(resp)["dd_session"], "Max-Age=0") {
		t.Errorf("tampered cookie: %d, want 401 and the cookie cleared", resp.StatusCode)
	}

	// A bearer token that is not ours (a CI OIDC token) does not hide
	// the cookie, nor does it authenticate.
	if _, code := b.session("Authorization", "Bearer eyJhbGciOi.x.y"); code != http.StatusOK {
		t.Errorf("cookie with a foreign bearer: %d, want 200", code)
	}
}

func TestCrossOriginPostRefused(t *testing.T) {
	f := newFleet(t, DevUsers(testOwner))
	b := f.browser()
	b.login(DevAdminLogin, "/")
	evil := strings.Replace(f.appURL, "app.", "evil.", 1)
	tests := []struct {
		name string
		hdr  []string
		want int
	}{
		{"foreign origin", []string{"Origin", evil}, http.StatusForbidden},
		{"cross-site fetch", []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"same-site sibling", []string{"Sec-Fetch-Site", "same-site", "Origin", evil},
			http.StatusForbidden},
		{"same origin", []string{"Sec-Fetch-Site", "same-origin", "Origin", f.appURL},
			http.StatusOK},
		{"no browser headers", nil, http.StatusOK},
	}

	for _, tt := range tests {
		resp := b.do("POST", f.appURL+"/private", url.Values{}, tt.hdr...)
		if resp.StatusCode != tt.want {
			t.Errorf("%s: POST /private %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}

	resp := b.do("POST", f.appURL+LogoutPath, url.Values{}, "Origin", evil)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin logout: %d, want 403", resp.StatusCode)
	}
	if _, code := b.session(); code != http.StatusOK {
		t.Errorf("session after refused cross-origin logout: %d, want 200", code)
	}
}

// setCookies returns the response's Set-Cookie headers by cookie name.
func setCookies(resp *http.Response) map[string]string {
	m := map[string]string{}
	for _, h := range resp.Header.Values("Set-Cookie") {
		name, _, _ := strings.Cut(h, "=")
		m[name] = h
	}
	return m
}

// redactValue drops a Set-Cookie header's value, which is random.
func redactValue(h string) string {
	nv, rest, _ := strings.Cut(h, ";")
	name, _, _ := strings.Cut(nv, "=")
	return name + "=;" + rest
}

func flip(s string) string {
	if s == "" {
		return "x"
	}

	b := []byte(s)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func drop(string) string { return "" }

func setParam(raw, key string, f func(string) string) string {
	u, _ := url.Parse(raw)
	q := u.Query()
	if v := f(q.Get(key)); v == "" {
		q.Del(key)
	} else {
		q.Set(key, v)
	}
	u.RawQuery = q.Encode()
	return u.String()
}
