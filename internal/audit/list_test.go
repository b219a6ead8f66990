package audit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// fillLog appends ten entries:
//
//	1 login alice(42)           6 deploy ci → agent-0002
//	2 login alicia(7)           7 exec alice → agent-0001
//	3 deploy ci → agent-0001    8 deploy ci → agent-0001 (denied)
//	4 tenant_set alice → 0001   9 reattestation_failed system → 0002
//	5 login alice(42)          10 logout alice(42)
func fillLog(t *testing.T, l *Log) {
	t.Helper()
	a1, a2 := agentName(1), agentName(2)
	alice := User("alice", 42)
	denied := deployEvent(a1, "bad")
	denied.Outcome = OutcomeDenied

	for _, ev := range []Event{
		{Actor: alice, Action: ActionLogin, Outcome: OutcomeOK},
		{Actor: User("alicia", 7), Action: ActionLogin, Outcome: OutcomeOK},
		deployEvent(a1, "abc"),
		{Actor: alice, Action: ActionTenantSet, Target: a1, Outcome: OutcomeOK,
			Details: map[string]string{"tenant": "user:bob(9)"}},
		{Actor: alice, Action: ActionLogin, Outcome: OutcomeOK},
		deployEvent(a2, "def"),
		{Actor: alice, Action: ActionExec, Target: a1, Outcome: OutcomeOK},
		denied,
		{Actor: System("collector"), Action: ActionReattestationFailed, Target: a2,
			Outcome: OutcomeError},
		{Actor: alice, Action: ActionLogout, Outcome: OutcomeOK},
	} {
		mustAppend(t, l, ev)
	}
}

func TestListFilters(t *testing.T) {
	l, _, _ := newTestLog(t)
	fillLog(t, l)

	tests := []struct {
		name   string
		filter Filter
		want   []int64
		next   int64
	}{
		{"everything, newest first", Filter{}, []int64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 0},
		{"by agent", Filter{Agent: agentName(1)}, []int64{8, 7, 4, 3}, 0},
		{"by exact actor", Filter{Actor: "user:alice(42)"}, []int64{10, 7, 5, 4, 1}, 0},
		{"actor without id", Filter{Actor: "user:alice"}, []int64{10, 7, 5, 4, 1}, 0},
		{"actor prefix ends at a boundary", Filter{Actor: "user:ali"}, []int64{}, 0},
		{"actor kind", Filter{Actor: "ci"}, []int64{8, 6, 3}, 0},
		{"CI principal", Filter{Actor: "ci:org:acme(1)"}, []int64{8, 6, 3}, 0},
		{"CI commit", Filter{Actor: "ci:org:acme(1)/acme/app@abc"}, []int64{3}, 0},
		{"by action", Filter{Action: ActionDeploy}, []int64{8, 6, 3}, 0},
		{"agent and action", Filter{Agent: agentName(2), Action: ActionDeploy}, []int64{6}, 0},
		{"before", Filter{Before: 4}, []int64{3, 2, 1}, 0},
		{"after", Filter{After: 8}, []int64{10, 9}, 0},
		{"limit leaves a next page", Filter{Limit: 3}, []int64{10, 9, 8}, 8},
		{"limit exactly the rest", Filter{Before: 4, Limit: 3}, []int64{3, 2, 1}, 0},
		{"filtered page", Filter{Actor: "user:alice", Limit: 2}, []int64{10, 7}, 7},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			page, err := l.List(context.Background(), tc.filter)
			if err != nil {
				t.Fatalf("List: %v", err)
			}

			if diff := cmp.Diff(tc.want, seqs(page.Entries)); diff != "" {
				t.Errorf("seqs (-want +got):\n%s", diff)
			}
			if page.NextBefore != tc.next {
				t.Errorf("NextBefore = %d, want %d", page.NextBefore, tc.next)
			}
		})
	}
}

func TestListPagesThroughEverything(t *testing.T) {
	l, _, _ := newTestLog(t)
	fillLog(t, l)
	var got []int64
	f := Filter{Agent: agentName(1), Limit: 1}

	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		page, err := l.List(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, seqs(page.Entries)...)
		if page.NextBefore == 0 {
			break
		}
		f.Before = page.NextBefore
	}

	if diff := cmp.Diff([]int64{8, 7, 4, 3}, got); diff != "" {
		t.Errorf("paged seqs (-want +got):\n%s", diff)
	}
}

func TestListRefusesBadFilters(t *testing.T) {
	l, _, _ := newTestLog(t)
	for name, f := range map[string]Filter{
		"negative before": {Before: -1},
		"limit too big":   {Limit: MaxLimit + 1},
		"bad action":      {Action: "DROP TABLE"},
		"control char":    {Actor: "user:\x00"},
	} {
		if _, err := l.List(context.Background(), f); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: List error = %v, want ErrInvalid", name, err)
		}
	}
}

func TestServeList(t *testing.T) {
	l, _, _ := newTestLog(t)
	fillLog(t, l)
	h := l.Handler()

	tests := []struct {
		name   string
		method string
		query  string
		status int
		want   []int64
		next   int64
	}{
		{"page", "GET", "?limit=2", 200, []int64{10, 9}, 9},
		{"next page", "GET", "?limit=2&before=9", 200, []int64{8, 7}, 7},
		{"filters", "GET", "?agent=" + agentName(1) + "&actor=ci&action=deploy", 200,
			[]int64{8, 3}, 0},
		{"after", "GET", "?after=9", 200, []int64{10}, 0},
		{"no match", "GET", "?actor=user:nobody", 200, []int64{}, 0},
		{"zero limit", "GET", "?limit=0", 400, nil, 0},
		{"limit too big", "GET", "?limit=1001", 400, nil, 0},
		{"before not a number", "GET", "?before=x", 400, nil, 0},
		{"unknown parameter", "GET", "?agnet=x", 400, nil, 0},
		{"repeated parameter", "GET", "?action=deploy&action=exec", 400, nil, 0},
		{"bad action", "GET", "?action=Deploy", 400, nil, 0},
		{"wrong method", "POST", "", 405, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, "/api/audit"+tc.query, nil))
			if rec.Code != tc.status {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tc.status, rec.Body)
			}

			if tc.status != http.StatusOK {
				var body httpapi.Body
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Code == "" {
					t.Errorf("error body %q is not a JSON {code, message}", rec.Body)
				}
				return
			}

			if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", cc)
			}

			var page Page
			if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
				t.Fatalf("body is not a page: %v\n%s", err, rec.Body)
			}
			if diff := cmp.Diff(tc.want, seqs(page.Entries)); diff != "" {
				t.Errorf("seqs (-want +got):\n%s", diff)
			}
			if page.NextBefore != tc.next {
				t.Errorf("next_before = %d, want %d", page.NextBefore, tc.next)
			}
		})
	}
}

// TestServeListShowsDeployClaims checks what issue #4 asks of GET
// /api/audit: the deploy with its repository and sha, hashes intact.
func TestServeListShowsDeployClaims(t *testing.T) {
	l, _, _ := newTestLog(t)
	mustAppend(t, l, deployEvent(agentName(1), "0123abcd"))

	rec := httptest.NewRecorder()
	l.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/api/audit?action=deploy", nil))
	var page Page
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil || len(page.Entries) != 1 {
		t.Fatalf("page = %s, %v; want one entry", rec.Body, err)
	}

	e := page.Entries[0]
	var d map[string]any
	if err := json.Unmarshal(e.Details, &d); err != nil {
		t.Fatal(err)
	}
	if d["repository"] != "acme/app" || d["sha"] != "0123abcd" {
		t.Errorf("details = %s, want repository and sha", e.Details)
	}

	if e.ComputeHash() != e.Hash {
		t.Errorf("entry served over HTTP does not hash to its hash")
	}
}
