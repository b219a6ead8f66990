package cp

import (
	"context"
	"errors"
	"net/http"

	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/fleet"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
	"github.com/devopsdefender/devopsdefender/internal/websession"
)

// record appends an event to the fleet's audit log. A failure to record
// is logged loudly but does not undo the change it describes: the change
// has already happened, and the operator must learn of the gap.
func (s *Server) record(ctx context.Context, ev audit.Event) {
	if ev.Time.IsZero() {
		ev.Time = s.opts.Now()
	}
	if _, err := s.store.Audit().Append(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit append failed", "action", ev.Action, "target", ev.Target,
			"err", err)
	}
}

// maxAuditBody bounds one batch of forwarded agent audit entries.
const maxAuditBody = 4 << 20

// importAudit serves POST /agents/{id}/audit: an agent forwards the audit
// entries it recorded (deploys, execs), which join the fleet's log under
// the agent's id. A repeated batch adds nothing.
func (s *Server) importAudit(w http.ResponseWriter, r *http.Request) error {
	var req cpapi.AuditBatch
	if err := httpapi.DecodeBody(w, r, maxAuditBody, &req); err != nil {
		return err
	}
	a := agentOf(r.Context())
	added, err := s.store.Audit().Import(r.Context(), a.ID, req.Entries)
	switch {
	case errors.Is(err, audit.ErrInvalid):
		return httpapi.BadRequest("invalid audit entries: %s", err.Error())
	case errors.Is(err, audit.ErrOriginGap), errors.Is(err, audit.ErrOriginConflict):
		return &httpapi.Error{Status: http.StatusConflict, Code: httpapi.CodeConflict,
			Message: "audit entries do not follow on from those received", Err: err}
	case err != nil:
		return err
	}

	return httpapi.WriteJSON(w, http.StatusOK, cpapi.AuditAck{Added: added})
}

// listAudit serves GET /api/audit to the fleet admin.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	return s.store.Audit().ServeList(w, r)
}

// SessionEvents returns a websession OnEvent hook that records sign-ins,
// sign-outs and device pairings in the fleet's audit log.
func SessionEvents(store *fleet.Store) func(context.Context, websession.Event) {
	return func(ctx context.Context, e websession.Event) {
		actor := audit.User(e.Login, e.UserID)
		if e.Login == "" {
			actor = audit.Anonymous("")
		}
		store.Audit().Append(ctx, audit.Event{Actor: actor, Action: audit.Action(e.Action),
			Outcome: audit.Outcome(e.Outcome), Details: e.Details})
	}
}
