package cp

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
)

// TestTenantForm assigns and clears a tenant with the agent page's form,
// as a fleet admin's browser posts it.
func TestTenantForm(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.Owner = testOwner })
	id := e.register(t, "web").AgentID
	form := func() map[string]string {
		h := admin()
		h["Content-Type"] = "application/x-www-form-urlencoded"
		h["Accept"] = "text/html"
		return h
	}

	post := func(body string) (int, string, string) {
		rec := e.do("POST", "/agent/"+id+"/tenant", body, form())
		return rec.Code, rec.Header().Get("Location"), rec.Body.String()
	}
	tenant := func() *ghoidc.Principal {
		return e.agent(t, id).Tenant
	}

	code, loc, _ := post("action=set&kind=org&name=acme&id=42")
	want := ghoidc.Principal{Kind: ghoidc.KindOrg, Name: "acme", ID: 42}
	if code != http.StatusSeeOther || loc != "/agent/"+id || tenant() == nil || *tenant() != want {
		t.Fatalf("set = %d to %q, tenant %v; want 303 to the page and %v", code, loc,
			tenant(), want)
	}

	page := e.do("GET", "/agent/"+id, "", map[string]string{
		"Authorization": "Bearer " + testAdminToken, "Accept": "text/html"}).Body.String()
	if !strings.Contains(page, want.String()) || !strings.Contains(page, "Clear tenant") {
		t.Errorf("the agent page does not show the tenant and its form:\n%s", page)
	}

	// Refusals change nothing: a bad principal comes back on the page.
	head, _ := e.store.Audit().Head(context.Background())
	for _, tc := range []struct {
		body     string
		want     int
		contains string
	}{
		{"action=set&kind=org&name=acme&id=nope", http.StatusBadRequest, "id"},
		{"action=set&kind=team&name=acme&id=42", http.StatusBadRequest, "kind"},
		{"action=set&kind=org&name=acme&id=4242", http.StatusBadRequest, "fleet owner"},
		{"action=drop", http.StatusBadRequest, "action"},
		{"%zz", http.StatusBadRequest, ""},
	} {
		code, _, body := post(tc.body)
		if code != tc.want || !strings.Contains(body, tc.contains) {
			t.Errorf("%q = %d %q, want %d containing %q", tc.body, code, body, tc.want,
				tc.contains)
		}
	}

	if after, _ := e.store.Audit().Head(context.Background()); after != head ||
		*tenant() != want {
		t.Errorf("refused forms changed the tenant (%v) or the audit log", tenant())
	}

	code, _, _ = post("action=clear")
	if code != http.StatusSeeOther || tenant() != nil {
		t.Fatalf("clear = %d, tenant %v; want 303 and none", code, tenant())
	}

	var entries audit.Page
	rec := e.do("GET", "/api/audit?action="+string(audit.ActionTenantCleared), "", admin())
	if err := json.Unmarshal(rec.Body.Bytes(), &entries); err != nil {
		t.Fatal(err)
	}
	if len(entries.Entries) != 1 || entries.Entries[0].Target != id {
		t.Errorf("audit of the clearing = %+v", entries.Entries)
	}
}
