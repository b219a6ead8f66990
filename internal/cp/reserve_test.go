package cp

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// holdProvider makes e's provider hold up each call until release is
// closed, and reports each call's start on the returned channel.
func holdProvider(e *testEnv, release <-chan struct{}) <-chan string {
	started := make(chan string, 16)
	e.ingress.mu.Lock()
	e.ingress.calling = func(op, name string) {
		started <- op
		<-release
	}
	e.ingress.mu.Unlock()
	return started
}

// post runs a request in its own goroutine and delivers the answer.
func (e *testEnv) post(path, body string, h map[string]string) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- e.do("POST", path, body, h) }()
	return done
}

// Registrations of different names reach the provider together: neither
// waits for the other's tunnel to be created.
func TestRegistrationsOfOtherNamesOverlap(t *testing.T) {
	e := newTestEnv(t, nil)
	webBody, webH := newTestAgent(t).registration(t, e, "web")
	dbBody, dbH := newTestAgent(t).registration(t, e, "db")

	release := make(chan struct{})
	started := holdProvider(e, release)
	web := e.post("/register", webBody, webH)
	db := e.post("/register", dbBody, dbH)

	for range 2 {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			close(release)
			t.Fatal("the second registration did not reach the provider while the first was there")
		}
	}
	close(release)

	registered(t, <-web)
	registered(t, <-db)
}

// A registration whose hostname an agent's claim is publishing waits for
// that claim, then sees it held.
func TestRegistrationWaitsForAClaimOfItsHostname(t *testing.T) {
	e := newTestEnv(t, nil)
	web := e.register(t, "web")
	body, h := newTestAgent(t).registration(t, e, "web-shop")
	claim, _ := json.Marshal(cpapi.IngressRequest{Claims: []ingress.Claim{{App: "x",
		Label: "shop", Port: 9000}}})

	release := make(chan struct{})
	started := holdProvider(e, release)
	claimed := e.post("/agents/"+web.AgentID+"/ingress", string(claim), bearer(web.AgentToken))
	select {
	case op := <-started:
		if op != "replace" {
			t.Fatalf("first provider call %q, want the claim's replace", op)
		}
	case rec := <-claimed:
		t.Fatalf("claim answered %d before reaching the provider: %s", rec.Code, rec.Body)
	}
	registration := e.post("/register", body, h)

	select {
	case op := <-started:
		t.Errorf("provider call %q while the claim of the same hostname was in flight", op)
	case rec := <-registration:
		t.Errorf("registration answered %d while the claim was in flight: %s", rec.Code,
			rec.Body)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)

	if rec := <-claimed; rec.Code != http.StatusOK {
		t.Fatalf("claim: %d %s", rec.Code, rec.Body)
	}
	wantConflict(t, "registration of a claimed hostname", <-registration)
	if got := e.ingress.owner("web-shop.localhost"); got != e.agent(t, web.AgentID).TunnelID {
		t.Errorf("web-shop.localhost routes to %q, want web's tunnel", got)
	}
}

// Reservations end: after changes that waited on each other, nothing is
// left reserved.
func TestReservationsEnd(t *testing.T) {
	e := newTestEnv(t, nil)
	web := e.register(t, "web")

	var wg sync.WaitGroup
	for _, label := range []string{"a", "b", "c"} {
		c := ingress.Claim{App: label, Label: label, Port: 9000}
		wg.Go(func() { e.claim(t, web, c) })
	}
	wg.Wait()

	e.srv.regMu.Lock()
	defer e.srv.regMu.Unlock()
	if n := len(e.srv.reserved); n != 0 {
		t.Errorf("%d hostnames still reserved: %v", n, e.srv.reserved)
	}
}

// A record that web's tunnel still has for web-shop.localhost, unknown to
// the registry (a provider call that failed half-way leaves one), must
// not be deleted from under agent "web-shop" when web registers again
// and its old tunnel goes: web-shop waits for the deletion to finish.
func TestRegistrationWaitsForTheTunnelItTakesANameFrom(t *testing.T) {
	e := newTestEnv(t, nil)
	webAgent := newTestAgent(t)
	web := registered(t, e.registerAs(t, webAgent, "web"))
	tunnel := e.agent(t, web.AgentID).TunnelID

	leftover := ingress.AgentIngress(web.Hostname, []ingress.Claim{{App: "x", Label: "shop",
		Port: 9000}})
	if err := e.ingress.Provider.ReplaceIngress(context.Background(), tunnel,
		leftover); err != nil {
		t.Fatal(err)
	}

	listed, release := make(chan struct{}), make(chan struct{})
	e.ingress.mu.Lock()
	e.ingress.calling = func(op, name string) {
		if op == "delete" && name == tunnel {
			close(listed)
			<-release
		}
	}
	e.ingress.mu.Unlock()

	// web restarts with its keys: its registration replaces the record
	// and deletes the old tunnel, which is held after listing its records.
	body, h := webAgent.registration(t, e, "web")
	again := e.post("/register", body, h)
	<-listed

	shopBody, shopH := newTestAgent(t).registration(t, e, "web-shop")
	shop := e.post("/register", shopBody, shopH)
	select {
	case rec := <-shop:
		t.Errorf("web-shop answered %d while web's old tunnel was being deleted", rec.Code)
		close(release)
		registered(t, <-again)
		return
	case <-time.After(200 * time.Millisecond):
	}
	close(release)

	registered(t, <-again)
	shopReg := registered(t, <-shop)
	want := e.agent(t, shopReg.AgentID).TunnelID
	if got := e.ingress.owner("web-shop.localhost"); got != want {
		t.Errorf("web-shop.localhost routes to %q, want web-shop's tunnel %q", got, want)
	}
}
