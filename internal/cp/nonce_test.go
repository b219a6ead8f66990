package cp

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// nonceFrom asks for a nonce as a caller at addr: anonymously, or on the
// agent route of agentID with its token.
func (e *testEnv) nonceFrom(addr, agentID, token string) *httptest.ResponseRecorder {
	path := "/register/nonce"
	if agentID != "" {
		path = "/agents/" + agentID + "/nonce"
	}

	r := httptest.NewRequest("POST", path, nil)
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}

	r.RemoteAddr = addr
	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, r)
	return rec
}

func TestNonceFloodIsLimitedPerAddress(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.NonceBurst, o.NonceEvery = 5, 2*time.Second })
	const flooder = "203.0.113.7:4000"
	for i := range 5 {
		if rec := e.nonceFrom(flooder, "", ""); rec.Code != http.StatusOK {
			t.Fatalf("nonce %d within the burst: %d %s", i, rec.Code, rec.Body)
		}
	}

	rec := e.nonceFrom(flooder, "", "")
	var body httpapi.Body
	json.Unmarshal(rec.Body.Bytes(), &body)
	if rec.Code != http.StatusTooManyRequests || body.Code != codeTooManyRequests ||
		body.Message == "" || rec.Header().Get("Retry-After") != "2" {
		t.Fatalf("nonce past the burst: %d %+v Retry-After %q; want 429 %s, Retry-After 2",
			rec.Code, body, rec.Header().Get("Retry-After"), codeTooManyRequests)
	}

	// Another port of the same host, or another address of its /64, is
	// the same client.
	for _, same := range []string{"203.0.113.7:4001", "[::ffff:203.0.113.7]:1"} {
		if rec := e.nonceFrom(same, "", ""); rec.Code != http.StatusTooManyRequests {
			t.Errorf("nonce from %s: %d, want 429", same, rec.Code)
		}
	}

	// Others are not starved.
	if rec := e.nonceFrom("198.51.100.9:5000", "", ""); rec.Code != http.StatusOK {
		t.Errorf("nonce from another address during the flood: %d %s", rec.Code, rec.Body)
	}
	reg := e.register(t, "web")
	if rec := e.nonceFrom(flooder, reg.AgentID, reg.AgentToken); rec.Code != http.StatusOK {
		t.Errorf("agent nonce from the flooding address: %d %s", rec.Code, rec.Body)
	}

	// Waiting as told earns one nonce back.
	e.clock.Advance(2 * time.Second)
	if rec := e.nonceFrom(flooder, "", ""); rec.Code != http.StatusOK {
		t.Errorf("nonce after Retry-After: %d %s", rec.Code, rec.Body)
	}
	if rec := e.nonceFrom(flooder, "", ""); rec.Code != http.StatusTooManyRequests {
		t.Errorf("second nonce after Retry-After: %d, want 429", rec.Code)
	}
}

func TestNoncePoolStaysBounded(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.NonceBurst = maxOutstandingNonces })
	a := newTestAgent(t)
	body, h := a.registration(t, e, "web")
	var reg cpapi.RegisterResponse
	if rec := e.do("POST", "/register", body, h); rec.Code != http.StatusOK ||
		json.Unmarshal(rec.Body.Bytes(), &reg) != nil {
		t.Fatalf("register: %d %s", rec.Code, rec.Body)
	}

	addr := func(i int) string { return fmt.Sprintf("10.0.%d.%d:1", i/256, i%256) }

	// Many addresses together fill the anonymous part of the pool only.
	for i := range maxAnonymousNonces {
		if rec := e.nonceFrom(addr(i), "", ""); rec.Code != http.StatusOK {
			t.Fatalf("anonymous nonce %d: %d %s", i, rec.Code, rec.Body)
		}
	}

	if rec := e.nonceFrom(addr(0), "", ""); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("anonymous nonce past its share: %d, want 503", rec.Code)
	}

	// A registered agent re-attests with the rest, up to the global cap.
	rec := e.nonceFrom(addr(0), reg.AgentID, reg.AgentToken)
	var n cpapi.NonceResponse
	json.Unmarshal(rec.Body.Bytes(), &n)
	if rec.Code != http.StatusOK {
		t.Fatalf("agent nonce with the anonymous share full: %d %s", rec.Code, rec.Body)
	}

	body, h = a.sign(cpapi.AttestRequest{Nonce: n.Nonce,
		Evidence: a.evidence(t, attestbind.PurposeReattest, n.Nonce)})
	h["Authorization"] = "Bearer " + reg.AgentToken
	if rec := e.do("POST", "/agents/"+reg.AgentID+"/attest", body, h); rec.Code != http.StatusOK {
		t.Fatalf("re-attestation with the agent's nonce: %d %s", rec.Code, rec.Body)
	}

	for i := maxAnonymousNonces; i < maxOutstandingNonces; i++ {
		if rec := e.nonceFrom(addr(0), reg.AgentID, reg.AgentToken); rec.Code != http.StatusOK {
			t.Fatalf("agent nonce %d: %d %s", i, rec.Code, rec.Body)
		}
	}

	if rec := e.nonceFrom(addr(0), reg.AgentID, reg.AgentToken); rec.Code !=
		http.StatusServiceUnavailable {
		t.Errorf("agent nonce past the global cap: %d, want 503", rec.Code)
	}

	// Expired nonces make room again.
	e.clock.Advance(3 * time.Minute)
	if rec := e.nonceFrom(addr(0), "", ""); rec.Code != http.StatusOK {
		t.Errorf("anonymous nonce after expiry: %d %s", rec.Code, rec.Body)
	}
}

func TestClientOf(t *testing.T) {
	tests := []struct {
		remote, cfIP, want string
	}{
		{"192.0.2.1:1234", "", "192.0.2.1"},
		{"[::ffff:192.0.2.1]:1234", "", "192.0.2.1"},
		{"[2001:db8:1:2:3:4:5:6]:443", "", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2::9]:443", "", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:80", "", "fe80::/64"},
		{"not an address", "", "not an address"},
		// Through the tunnel: the connector on loopback names the client.
		{"127.0.0.1:5000", "198.51.100.7", "198.51.100.7"},
		{"[::1]:5000", "2001:db8:9:9::1", "2001:db8:9:9::/64"},
		{"127.0.0.1:5000", "", "127.0.0.1"},
		{"127.0.0.1:5000", "garbage", "127.0.0.1"},
		// A client that reaches the control plane directly cannot.
		{"192.0.2.1:1234", "198.51.100.7", "192.0.2.1"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("POST", "/register/nonce", nil)
		r.RemoteAddr = tt.remote
		if tt.cfIP != "" {
			r.Header.Set("CF-Connecting-IP", tt.cfIP)
		}
		if got := clientOf(r); got != tt.want {
			t.Errorf("clientOf(%q, CF-Connecting-IP %q) = %q, want %q", tt.remote, tt.cfIP,
				got, tt.want)
		}
	}
}

func TestAllowanceRemembersBoundedClients(t *testing.T) {
	a := newAllowance(1, time.Second)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range maxNonceClients {
		if _, ok := a.take(fmt.Sprint(i), now); !ok {
			t.Fatalf("client %d refused its first nonce", i)
		}
	}

	// Past the bound, newcomers share one allowance.
	if _, ok := a.take("new-1", now); !ok {
		t.Fatal("first newcomer refused")
	}
	if wait, ok := a.take("new-2", now); ok || wait != time.Second {
		t.Errorf("second newcomer: wait %v ok %v, want to wait 1s", wait, ok)
	}

	// Clients whose buckets are full again are forgotten to make room.
	now = now.Add(time.Second)
	if _, ok := a.take("new-2", now); !ok {
		t.Error("newcomer refused once others were full again")
	}
	if len(a.full) > 2 {
		t.Errorf("%d clients remembered, want the full ones forgotten", len(a.full))
	}
}
