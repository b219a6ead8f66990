package cftest

import (
	"net/http"
	"slices"
)

// App is a legacy Access application held by the fake (cf.md §4).
type App struct {
	ID                string        `json:"id"`
	Name              string        `json:"name"`
	Type              string        `json:"type"`
	Domain            string        `json:"domain"`
	Destinations      []Destination `json:"destinations,omitempty"`
	SelfHostedDomains []string      `json:"self_hosted_domains,omitempty"`
	Policies          []Policy      `json:"policies,omitempty"`
}

// Destination is one of an app's destinations; Type is "public" or
// "private".
type Destination struct {
	Type string `json:"type"`
	URI  string `json:"uri,omitempty"`
}

// Policy is an app policy; Include holds the raw rule objects.
type Policy struct {
	Decision string           `json:"decision"`
	Include  []map[string]any `json:"include,omitempty"`
}

// AddApp seeds an app and returns it with its id.
func (s *Server) AddApp(a App) App {
	s.mu.Lock()
	defer s.mu.Unlock()

	a.ID = newUUID()
	if a.Type == "" {
		a.Type = "self_hosted"
	}
	s.apps = append(s.apps, &a)
	return a
}

// Apps returns every app.
func (s *Server) Apps() []App {
	s.mu.Lock()
	defer s.mu.Unlock()

	out := make([]App, 0, len(s.apps))
	for _, a := range s.apps {
		out = append(out, *a)
	}
	return out
}

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	items := make([]App, 0, len(s.apps))
	for _, a := range s.apps {
		items = append(items, *a)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, paginate(s, r, items, 25))
}

func (s *Server) deleteApp(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()

	id := r.PathValue("app")
	i := slices.IndexFunc(s.apps, func(a *App) bool { return a.ID == id })
	if i < 0 {
		writeError(w, http.StatusNotFound, CodeAppNotFound, "Application not found")
		return
	}

	s.apps = slices.Delete(s.apps, i, i+1)
	writeResult(w, map[string]string{"id": id})
}
