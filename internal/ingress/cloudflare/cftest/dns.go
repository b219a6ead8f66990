package cftest

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Record is a DNS record held by the fake.
type Record struct {
	ID         string    `json:"id"`
	Type       string    `json:"type"`
	Name       string    `json:"name"`
	Content    string    `json:"content"`
	Proxied    bool      `json:"proxied"`
	TTL        int       `json:"ttl"`
	CreatedOn  time.Time `json:"created_on"`
	ModifiedOn time.Time `json:"modified_on"`
}

// AddRecord seeds a proxied CNAME created at createdOn.
func (s *Server) AddRecord(name, content string, createdOn time.Time) Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := &Record{ID: newHex(16), Type: "CNAME", Name: name, Content: content,
		Proxied: true, TTL: 1, CreatedOn: createdOn.UTC(), ModifiedOn: createdOn.UTC()}
	s.records = append(s.records, rec)
	return *rec
}

// AddRecordOfType seeds a record of any type, e.g. an A record that a
// CNAME may not share a name with.
func (s *Server) AddRecordOfType(typ, name, content string) Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := &Record{ID: newHex(16), Type: typ, Name: name, Content: content, TTL: 1,
		CreatedOn: s.now(), ModifiedOn: s.now()}
	s.records = append(s.records, rec)
	return *rec
}

// Records returns every record in creation order.
func (s *Server) Records() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()

	out := make([]Record, 0, len(s.records))
	for _, r := range s.records {
		out = append(out, *r)
	}
	return out
}

// RecordByName returns the first record named name.
func (s *Server) RecordByName(name string) (Record, bool) {
	for _, r := range s.Records() {
		if r.Name == name {
			return r, true
		}
	}
	return Record{}, false
}

func (s *Server) listRecords(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	var items []Record
	for _, rec := range s.records {
		if recordMatches(rec, q) {
			items = append(items, *rec)
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, paginate(s, r, items, 100))
}

// recordMatches applies the type filter and the name and content filters
// in both their plain ("name=") and operator ("name.exact=",
// "content.endswith=", …) forms.
func recordMatches(rec *Record, q url.Values) bool {
	if t := q.Get("type"); t != "" && !strings.EqualFold(t, rec.Type) {
		return false
	}
	return fieldMatches(strings.ToLower(rec.Name), "name", q) &&
		fieldMatches(strings.ToLower(rec.Content), "content", q)
}

func fieldMatches(v, field string, q url.Values) bool {
	equal := func(a, b string) bool { return a == b }
	ops := map[string]func(string, string) bool{
		"": equal, ".exact": equal, ".contains": strings.Contains,
		".startswith": strings.HasPrefix, ".endswith": strings.HasSuffix,
	}
	for suffix, op := range ops {
		if want := q.Get(field + suffix); want != "" && !op(v, strings.ToLower(want)) {
			return false
		}
	}

	return true
}

type recordRequest struct {
	Type    string `json:"type"`
	Name    string `json:"name"`
	Content string `json:"content"`
	Proxied bool   `json:"proxied"`
	TTL     int    `json:"ttl"`
}

func (s *Server) createRecord(w http.ResponseWriter, r *http.Request) {
	var req recordRequest
	if err := decodeBody(r, &req); err != nil || req.Type == "" || req.Name == "" ||
		req.Content == "" {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "type, name and content are required")
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	if code, msg := s.conflictLocked(req, ""); code != 0 {
		writeError(w, http.StatusBadRequest, code, msg)
		return
	}

	rec := &Record{ID: newHex(16), CreatedOn: s.now()}
	s.records = append(s.records, rec)
	s.applyRecord(rec, req)
	writeResult(w, *rec)
}

func (s *Server) updateRecord(w http.ResponseWriter, r *http.Request) {
	var req recordRequest
	if err := decodeBody(r, &req); err != nil || req.Type == "" || req.Name == "" ||
		req.Content == "" {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "type, name and content are required")
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	i := s.recordIndexLocked(r.PathValue("record"))
	if i < 0 {
		writeError(w, http.StatusNotFound, CodeRecordNotFound, "Record does not exist.")
		return
	}
	if code, msg := s.conflictLocked(req, s.records[i].ID); code != 0 {
		writeError(w, http.StatusBadRequest, code, msg)
		return
	}

	s.applyRecord(s.records[i], req)
	writeResult(w, *s.records[i])
}

func (s *Server) applyRecord(rec *Record, req recordRequest) {
	rec.Type, rec.Name, rec.Content = strings.ToUpper(req.Type), req.Name, req.Content
	rec.Proxied, rec.TTL, rec.ModifiedOn = req.Proxied, max(req.TTL, 1), s.now()
}

// conflictLocked applies Cloudflare's same-name rules: a CNAME shares its
// name with no A, AAAA or CNAME record, and no record is duplicated.
func (s *Server) conflictLocked(req recordRequest, self string) (int, string) {
	typ := strings.ToUpper(req.Type)
	addressy := []string{"A", "AAAA", "CNAME"}
	for _, rec := range s.records {
		if rec.ID == self || !strings.EqualFold(rec.Name, req.Name) {
			continue
		}

		switch {
		case rec.Type == typ && rec.Content == req.Content:
			return CodeRecordDuplicate, "The record already exists."
		case typ == "CNAME" && slices.Contains(addressy, rec.Type):
			return CodeHostTaken, "An A, AAAA, or CNAME record with that host already exists."
		case rec.Type == "CNAME" && slices.Contains(addressy, typ):
			return CodeCNAMEExists, "A CNAME record with that host already exists."
		}
	}

	return 0, ""
}

func (s *Server) deleteRecord(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()

	i := s.recordIndexLocked(r.PathValue("record"))
	if i < 0 {
		writeError(w, http.StatusNotFound, CodeRecordNotFound, "Record does not exist.")
		return
	}

	id := s.records[i].ID
	s.records = slices.Delete(s.records, i, i+1)
	writeResult(w, map[string]string{"id": id})
}

func (s *Server) recordIndexLocked(id string) int {
	return slices.IndexFunc(s.records, func(r *Record) bool { return r.ID == id })
}
