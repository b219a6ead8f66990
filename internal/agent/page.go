package agent

import (
	"io"
	"net/http"

	"github.com/devopsdefender/devopsdefender/internal/dashboard"
)

// handlePage renders the VM's page: the same facts as /api/units, for a
// person. Log links lead to /logs/{app}, which needs a CI token.
// TODO(#4): accept a browser session on the agent so people can read logs.
func (a *Agent) handlePage(w http.ResponseWriter, r *http.Request) error {
	h := a.health(r.Context())
	page := dashboard.VMPage{
		VMName: h.VMName, Hostname: h.Hostname, AgentID: h.AgentID, Registered: h.Registered,
		AttestationType: h.AttestationType, Build: h.Build,
		Uptime: a.opts.Now().Sub(a.started), RefreshSecs: 5, Units: h.Units,
	}

	return dashboard.Write(w, http.StatusOK, func(w io.Writer) error {
		return dashboard.RenderVM(w, page)
	})
}
