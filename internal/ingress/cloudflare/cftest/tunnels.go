package cftest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// Tunnel is a tunnel held by the fake.
type Tunnel struct {
	ID        string
	Name      string
	ConfigSrc string
	Secret    []byte
	CreatedAt time.Time
	DeletedAt time.Time // zero while live

	// Config is the remotely managed configuration as last PUT, verbatim;
	// nil when none was.
	Config json.RawMessage
	// ConfigVersion counts PUTs.
	ConfigVersion int

	// Connections is how many connectors are attached ([Server.Connect]).
	Connections   int
	everConnected bool
}

// Rule is one ingress rule of a stored configuration.
type Rule struct {
	Hostname string `json:"hostname,omitempty"`
	Service  string `json:"service"`
}

// Ingress decodes the stored configuration's ingress rules.
func (t *Tunnel) Ingress() []Rule {
	var cfg struct {
		Ingress []Rule `json:"ingress"`
	}
	json.Unmarshal(t.Config, &cfg)
	return cfg.Ingress
}

func (t *Tunnel) status() string {
	switch {
	case t.Connections > 0:
		return "healthy"
	case t.everConnected:
		return "down"
	}

	return "inactive"
}

// AddTunnel seeds a remotely managed tunnel created at createdAt.
func (s *Server) AddTunnel(name string, createdAt time.Time) Tunnel {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &Tunnel{ID: newUUID(), Name: name, ConfigSrc: "cloudflare",
		Secret: []byte(newHex(32)), CreatedAt: createdAt.UTC()}
	s.tunnels = append(s.tunnels, t)
	return *t
}

// SetTunnelIngress stores a configuration with rules for a seeded tunnel.
func (s *Server) SetTunnelIngress(id string, rules []Rule) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tunnelLocked(id); t != nil {
		t.Config, _ = json.Marshal(map[string]any{"ingress": rules})
		t.ConfigVersion++
	}
}

// Tunnels returns every tunnel, soft-deleted ones included, in creation
// order.
func (s *Server) Tunnels() []Tunnel {
	s.mu.Lock()
	defer s.mu.Unlock()

	out := make([]Tunnel, 0, len(s.tunnels))
	for _, t := range s.tunnels {
		out = append(out, *t)
	}
	return out
}

// Tunnel returns one tunnel.
func (s *Server) Tunnel(id string) (Tunnel, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tunnelLocked(id); t != nil {
		return *t, true
	}
	return Tunnel{}, false
}

// Connect attaches a connector to a tunnel, as a running cloudflared
// would.
func (s *Server) Connect(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tunnelLocked(id); t != nil && t.DeletedAt.IsZero() {
		t.Connections++
		t.everConnected = true
	}
}

func (s *Server) tunnelLocked(id string) *Tunnel {
	for _, t := range s.tunnels {
		if t.ID == id {
			return t
		}
	}
	return nil
}

// tunnelJSON is the API's tunnel object.
func (s *Server) tunnelJSON(t *Tunnel) map[string]any {
	var deleted any
	if !t.DeletedAt.IsZero() {
		deleted = t.DeletedAt
	}

	return map[string]any{
		"id": t.ID, "account_tag": s.opts.AccountID, "name": t.Name,
		"created_at": t.CreatedAt, "deleted_at": deleted, "config_src": t.ConfigSrc,
		"remote_config": t.ConfigSrc == "cloudflare", "status": t.status(),
		"tun_type": "cfd_tunnel", "connections": []any{}, "metadata": map[string]any{},
	}
}

// token is the connector token: base64 of {"a":account,"t":tunnel,"s":secret},
// the shape of Cloudflare's tokens (cf.md §10.A).
func (s *Server) token(t *Tunnel) string {
	b, _ := json.Marshal(map[string]string{"a": s.opts.AccountID, "t": t.ID,
		"s": base64.StdEncoding.EncodeToString(t.Secret)})
	return base64.StdEncoding.EncodeToString(b)
}

func (s *Server) createTunnel(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name         string `json:"name"`
		ConfigSrc    string `json:"config_src"`
		TunnelSecret string `json:"tunnel_secret"`
	}
	if err := decodeBody(r, &req); err != nil || req.Name == "" {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "name is required")
		return
	}

	secret, err := base64.StdEncoding.DecodeString(req.TunnelSecret)
	if req.TunnelSecret != "" && (err != nil || len(secret) < 32) {
		writeError(w, http.StatusBadRequest, CodeBadRequest,
			"tunnel_secret must be at least 32 bytes, base64 encoded")
		return
	}

	if req.ConfigSrc == "" {
		req.ConfigSrc = "local"
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	for _, t := range s.tunnels {
		if t.Name == req.Name && t.DeletedAt.IsZero() {
			writeError(w, http.StatusConflict, CodeTunnelExists,
				"You already have a named tunnel with this name")
			return
		}
	}

	t := &Tunnel{ID: newUUID(), Name: req.Name, ConfigSrc: req.ConfigSrc, Secret: secret,
		CreatedAt: s.now()}
	s.tunnels = append(s.tunnels, t)
	res := s.tunnelJSON(t)
	res["token"] = s.token(t)
	writeResult(w, res)
}

func (s *Server) listTunnels(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	var items []map[string]any
	for _, t := range s.tunnels {
		if tunnelMatches(t, q.Get("name"), q.Get("is_deleted"), q.Get("uuid"),
			q.Get("include_prefix"), q.Get("exclude_prefix")) {
			items = append(items, s.tunnelJSON(t))
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, paginate(s, r, items, 20))
}

func tunnelMatches(t *Tunnel, name, isDeleted, id, include, exclude string) bool {
	switch {
	case name != "" && t.Name != name,
		id != "" && t.ID != id,
		include != "" && !strings.HasPrefix(t.Name, include),
		exclude != "" && strings.HasPrefix(t.Name, exclude),
		isDeleted == "true" && t.DeletedAt.IsZero(),
		isDeleted == "false" && !t.DeletedAt.IsZero():
		return false
	}

	return true
}

// withTunnel runs f on the tunnel named in the path, or answers 404.
func (s *Server) withTunnel(w http.ResponseWriter, r *http.Request, f func(t *Tunnel)) {
	s.mu.Lock()
	defer s.mu.Unlock()

	t := s.tunnelLocked(r.PathValue("tunnel"))
	if t == nil {
		writeError(w, http.StatusNotFound, CodeTunnelNotFound, "Tunnel not found")
		return
	}
	f(t)
}

// getTunnel keeps answering for soft-deleted tunnels, with deleted_at set.
func (s *Server) getTunnel(w http.ResponseWriter, r *http.Request) {
	s.withTunnel(w, r, func(t *Tunnel) { writeResult(w, s.tunnelJSON(t)) })
}

func (s *Server) tunnelToken(w http.ResponseWriter, r *http.Request) {
	s.withTunnel(w, r, func(t *Tunnel) { writeResult(w, s.token(t)) })
}

// deleteTunnel soft-deletes, and refuses while connectors are attached,
// as the real API does (cf.md §2.7).
func (s *Server) deleteTunnel(w http.ResponseWriter, r *http.Request) {
	s.withTunnel(w, r, func(t *Tunnel) {
		if t.Connections > 0 {
			writeError(w, http.StatusBadRequest, CodeActiveConns,
				"Cannot delete tunnel because it has active connections")
			return
		}
		if t.DeletedAt.IsZero() {
			t.DeletedAt = s.now()
		}
		writeResult(w, s.tunnelJSON(t))
	})
}

func (s *Server) deleteConnections(w http.ResponseWriter, r *http.Request) {
	s.withTunnel(w, r, func(t *Tunnel) {
		t.Connections = 0
		writeResult(w, nil)
	})
}

func (s *Server) putConfig(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Config json.RawMessage `json:"config"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
		return
	}

	if err := validateConfig(req.Config); err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidConfig, err.Error())
		return
	}

	s.withTunnel(w, r, func(t *Tunnel) {
		if t.ConfigSrc != "cloudflare" {
			writeError(w, http.StatusBadRequest, CodeInvalidConfig,
				"tunnel is locally configured; set config_src to cloudflare")
			return
		}
		t.Config = req.Config
		t.ConfigVersion++
		writeResult(w, s.configJSON(t))
	})
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) {
	s.withTunnel(w, r, func(t *Tunnel) { writeResult(w, s.configJSON(t)) })
}

func (s *Server) configJSON(t *Tunnel) map[string]any {
	var cfg any
	if t.Config != nil {
		cfg = t.Config
	}
	return map[string]any{"tunnel_id": t.ID, "account_id": s.opts.AccountID,
		"config": cfg, "version": t.ConfigVersion, "source": t.ConfigSrc,
		"created_at": t.CreatedAt}
}

var serviceRE = regexp.MustCompile(`^(https?|tcp|ssh|rdp|unix)://.+$|^http_status:[1-5][0-9][0-9]$`)

// validateConfig checks ingress rules as Cloudflare does: every rule has a
// service, every rule but the last a hostname, and the last none (the
// catch-all).
func validateConfig(raw json.RawMessage) error {
	var cfg struct {
		Ingress []Rule `json:"ingress"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("config is not an object: %w", err)
	}

	n := len(cfg.Ingress)
	if n == 0 {
		return fmt.Errorf("ingress rules are required")
	}

	for i, rule := range cfg.Ingress {
		if !serviceRE.MatchString(rule.Service) {
			return fmt.Errorf("rule %d: invalid service %q", i, rule.Service)
		}
		if last := i == n-1; last != (rule.Hostname == "") {
			return fmt.Errorf("rule %d: only the last rule may, and must, omit the hostname", i)
		}
	}

	return nil
}
