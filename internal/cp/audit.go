package cp

import (
	"context"
	"net/http"

	"github.com/devopsdefender/devopsdefender/internal/audit"
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

// listAudit serves GET /api/audit to the fleet admin.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	return s.store.Audit().ServeList(w, r)
}
