package audit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// Page sizes of [Log.List].
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Filter selects entries for [Log.List]. Zero fields select everything.
type Filter struct {
	// Agent selects entries about the agent with this registry id: its
	// target, or the agent an entry was copied from.
	Agent string
	// Actor selects entries whose [Actor.String] is Actor, or starts with
	// it followed by ':', '(', '/' or '@': "user:alice" matches
	// "user:alice(42)" but not "user:alicia(7)", "ci:org:acme(1)" matches
	// every CI job of that principal, and "ci" every CI job.
	Actor string
	// Action selects entries with this action.
	Action Action
	// Before and After select entries with Seq < Before and Seq > After;
	// zero means no bound.
	Before int64
	After  int64
	// Limit is the page size: zero means DefaultLimit; at most MaxLimit.
	Limit int
}

func (f *Filter) validate() error {
	errs := []error{
		checkText("agent", f.Agent, MaxField, false),
		checkText("actor", f.Actor, 2*MaxField, false),
	}

	if f.Action != "" {
		errs = append(errs, f.Action.validate())
	}
	if f.Before < 0 || f.After < 0 {
		errs = append(errs, errors.New("before and after must not be negative"))
	}
	if f.Limit < 0 || f.Limit > MaxLimit {
		errs = append(errs, fmt.Errorf("limit must be between 1 and %d", MaxLimit))
	}
	return errors.Join(errs...)
}

// Page is one page of entries, newest first.
type Page struct {
	Entries []Entry `json:"entries"`
	// NextBefore is the Before of the next, older page; zero when there
	// are no older matching entries.
	NextBefore int64 `json:"next_before,omitempty"`
}

// List returns the newest entries that match f, newest first. A filter
// that breaks its rules fails with [ErrInvalid].
func (l *Log) List(ctx context.Context, f Filter) (Page, error) {
	if err := f.validate(); err != nil {
		return Page{}, fmt.Errorf("audit: listing: %w: %w", ErrInvalid, err)
	}
	if f.Limit == 0 {
		f.Limit = DefaultLimit
	}

	query, args := listQuery(f)
	rows, err := l.db.QueryContext(ctx, query, args...)
	if err != nil {
		return Page{}, fmt.Errorf("audit: listing: %w", err)
	}
	defer rows.Close()

	page := Page{Entries: []Entry{}}
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return Page{}, fmt.Errorf("audit: listing: entry %d: %w", e.Seq, err)
		}
		page.Entries = append(page.Entries, e)
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("audit: listing: %w", err)
	}

	// One row more than the page was asked for, to know whether an older
	// page exists without a second query.
	if len(page.Entries) > f.Limit {
		page.Entries = page.Entries[:f.Limit]
		page.NextBefore = page.Entries[f.Limit-1].Seq
	}
	return page, nil
}

func listQuery(f Filter) (string, []any) {
	var where []string
	var args []any

	if f.Agent != "" {
		where = append(where, "(target = ? OR origin_agent = ?)")
		args = append(args, f.Agent, f.Agent)
	}
	if f.Actor != "" {
		// substr counts characters, as utf8.RuneCountInString does; it
		// avoids LIKE, whose wildcards the actor text could contain.
		n := utf8.RuneCountInString(f.Actor)
		where = append(where, `(actor = ? OR (substr(actor, 1, ?) = ?
			AND substr(actor, ?, 1) IN (':', '(', '/', '@')))`)
		args = append(args, f.Actor, n, f.Actor, n+1)
	}

	if f.Action != "" {
		where = append(where, "action = ?")
		args = append(args, f.Action)
	}
	if f.Before > 0 {
		where = append(where, "seq < ?")
		args = append(args, f.Before)
	}
	if f.After > 0 {
		where = append(where, "seq > ?")
		args = append(args, f.After)
	}

	q := "SELECT " + entryColumns + " FROM audit_log"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY seq DESC LIMIT ?"
	return q, append(args, f.Limit+1)
}

// ServeList answers GET /api/audit with a [Page] of entries as JSON. The
// query parameters agent, actor, action, before, after and limit are the
// fields of [Filter]; others are refused, so that a misspelt filter does
// not silently list everything. It authorizes nobody: mount it behind the
// fleet-admin rule.
func (l *Log) ServeList(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return &httpapi.Error{Status: http.StatusMethodNotAllowed,
			Code: "METHOD_NOT_ALLOWED", Message: "use GET"}
	}

	f, err := parseFilter(r.URL.Query())
	if err != nil {
		return err
	}
	page, err := l.List(r.Context(), f)
	if err != nil {
		return err
	}

	// The log names people and workloads: keep it out of shared caches.
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, page)
}

// Handler returns [Log.ServeList] as an http.Handler whose errors are
// answered by httpapi.Handle and logged to the log's logger.
func (l *Log) Handler() http.Handler { return httpapi.Handle(l.log, l.ServeList) }

// parseFilter reads a [Filter] from query parameters.
func parseFilter(q url.Values) (Filter, error) {
	var f Filter
	for key, vals := range q {
		if len(vals) != 1 {
			return Filter{}, httpapi.BadRequest("query parameter %q given %d times", key, len(vals))
		}
		if err := setFilterParam(&f, key, vals[0]); err != nil {
			return Filter{}, err
		}
	}

	if err := f.validate(); err != nil {
		return Filter{}, httpapi.BadRequest("%s", err.Error())
	}
	return f, nil
}

func setFilterParam(f *Filter, key, v string) error {
	var err error
	switch key {
	case "agent":
		f.Agent = v
	case "actor":
		f.Actor = v
	case "action":
		f.Action = Action(v)
	case "before":
		f.Before, err = positive(key, v, 1<<62)
	case "after":
		f.After, err = positive(key, v, 1<<62)
	case "limit":
		var n int64
		n, err = positive(key, v, MaxLimit)
		f.Limit = int(n)
	default:
		return httpapi.BadRequest("unknown query parameter %q (want agent, actor, action, "+
			"before, after or limit)", key)
	}
	return err
}

// positive parses a decimal in [1, max].
func positive(key, v string, max int64) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 || n > max {
		return 0, httpapi.BadRequest("%s must be an integer from 1 to %d", key, max)
	}
	return n, nil
}
