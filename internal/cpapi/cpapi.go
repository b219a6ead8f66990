// Package cpapi holds the wire types of the control plane's HTTP API that
// other components speak: agent registration, the agent's ingress claims,
// health and the agent listing.
package cpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/audit"
	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// Service is the value of the control plane's /health "service" field.
const Service = "cp"

// NonceResponse is the body of POST /register/nonce, and of POST
// /agents/{id}/nonce for a registered agent about to re-attest: a fresh,
// single-use nonce that the agent's evidence must commit to (see package
// attestbind).
type NonceResponse struct {
	Nonce     string `json:"nonce"` // standard base64 of 32 bytes
	ExpiresAt string `json:"expires_at"`
}

// RegisterRequest is the body of POST /register, sent by an agent. The
// body is signed with the agent's signing key (attestbind.SignatureHeader).
type RegisterRequest struct {
	// VMName is the agent's VM name; a new registration under the same
	// name replaces the old record.
	VMName string `json:"vm_name"`

	// Origin is the URL of the agent's HTTP server as its tunnel connector
	// reaches it (in production "http://localhost:8080" inside the VM).
	Origin string `json:"origin"`

	// Nonce is the value POST /register/nonce handed out.
	Nonce string `json:"nonce"`

	// SigningKey (Ed25519) and NoiseKey (X25519) are the agent's public
	// keys, standard base64. The evidence commits to both.
	SigningKey string `json:"signing_key"`
	NoiseKey   string `json:"noise_key"`

	// Evidence is what the agent's runtime returned for "attest".
	Evidence agentapi.Evidence `json:"evidence"`
}

// AttestRequest is the body of POST /agents/{id}/attest: fresh evidence
// of a registered agent, committing to a new nonce and the agent's
// registered keys. It is signed like a registration and authenticated
// with the agent's token.
type AttestRequest struct {
	Nonce    string            `json:"nonce"`
	Evidence agentapi.Evidence `json:"evidence"`
}

// RegisterResponse is the body of a successful POST /register.
type RegisterResponse struct {
	AgentID  string `json:"agent_id"`
	Hostname string `json:"hostname"`
	URL      string `json:"url"`

	// AgentToken authenticates later calls of this agent to the control
	// plane. It is shown once; the control plane keeps only its hash.
	AgentToken string `json:"agent_token"`

	// TunnelToken is what the agent's connector (cloudflared) runs the
	// agent's tunnel with. It is a secret: the control plane shows it
	// only here and never logs it; the agent passes it to the connector
	// in its environment.
	TunnelToken string `json:"tunnel_token,omitempty"`
}

// IngressRequest is the body of POST /agents/{id}/ingress: every
// hostname claim of the agent's workloads. It replaces the previous
// claims as a whole.
type IngressRequest struct {
	Claims []ingress.Claim `json:"claims"`
}

// IngressResponse answers an accepted IngressRequest.
type IngressResponse struct {
	AgentID string `json:"agent_id"`

	// Hostnames are every hostname the agent's tunnel serves: the
	// primary, the workloads' and the agent API's.
	Hostnames []string `json:"hostnames"`

	// Exposed are the claims with their hostnames and public URLs.
	Exposed []agentapi.Exposed `json:"exposed"`
}

// CPIngress is the control plane's own tunnel as /health reports it.
type CPIngress struct {
	// TunnelID is the control plane's tunnel. A self-probe of the public
	// hostname compares it with its own to tell which control plane the
	// hostname reaches.
	TunnelID string `json:"tunnel_id"`

	// Serving is true when the last self-check found the tunnel present
	// and the public hostname answered by this control plane.
	Serving bool `json:"serving"`

	// Fenced is true once a newer control plane took the hostname over:
	// this one refuses writes and is shutting down. FencedReason says
	// what showed it.
	Fenced       bool   `json:"fenced"`
	FencedReason string `json:"fenced_reason,omitempty"`

	// Connector is the state of the connector (cloudflared) that carries
	// the tunnel.
	Connector *cloudflared.Status `json:"connector,omitempty"`
}

// Health is the body of the control plane's GET /health.
type Health struct {
	OK           bool   `json:"ok"`
	Service      string `json:"service"`
	Env          string `json:"env"`
	Hostname     string `json:"hostname"`
	Build        string `json:"build"`
	UptimeSecs   int64  `json:"uptime_secs"`
	AgentCount   int    `json:"agent_count"`
	HealthyCount int    `json:"healthy_count"`

	// Ingress is the control plane's own tunnel; absent when it
	// publishes none.
	Ingress *CPIngress `json:"ingress,omitempty"`
}

// Attestation is the control plane's record of an agent's evidence.
type Attestation struct {
	// Type is "tdx", "simulated" or "none" as the evidence claims it.
	Type string `json:"type"`

	// Verified is true only when the control plane checked the evidence.
	Verified bool `json:"verified"`

	// Status says how the evidence was judged, e.g. "unverified".
	Status string `json:"status"`

	MRTD       string   `json:"mrtd,omitempty"`
	RTMR       []string `json:"rtmr,omitempty"`
	TCBStatus  string   `json:"tcb_status,omitempty"`
	TCBDate    string   `json:"tcb_date,omitempty"`
	Debug      bool     `json:"debug,omitempty"`
	VerifiedAt string   `json:"verified_at,omitempty"`
}

// Agent is one element of GET /api/agents.
type Agent struct {
	AgentID      string          `json:"agent_id"`
	VMName       string          `json:"vm_name"`
	Hostname     string          `json:"hostname"`
	URL          string          `json:"url"`
	Status       string          `json:"status"`
	RegisteredAt string          `json:"registered_at"`
	LastSeen     string          `json:"last_seen,omitempty"`
	Attestation  Attestation     `json:"attestation"`
	Units        []agentapi.Unit `json:"units"`
	UnitCount    int             `json:"unit_count"`
	Tenant       *Principal      `json:"tenant"`

	// TunnelID is the agent's tunnel at the ingress provider.
	TunnelID string `json:"tunnel_id,omitempty"`

	// Exposed are the hostnames the agent's workloads published.
	Exposed []agentapi.Exposed `json:"exposed"`
}

// Principal is a GitHub principal: a user, an org or a repository, by name
// and numeric id.
type Principal struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	ID   ID     `json:"id"`
}

// ID is a numeric GitHub id, sent as a JSON number.
type ID int64

// String returns the id in decimal.
func (i ID) String() string { return strconv.FormatInt(int64(i), 10) }

// TenantRequest is the body of POST /api/agents/{id}/tenant. Tenant null
// clears the agent's tenant; the field must be present either way.
type TenantRequest struct {
	Tenant *Principal `json:"tenant"`
	// Set records that "tenant" was present in the body.
	Set bool `json:"-"`
}

// UnmarshalJSON notes whether "tenant" was given, so that clearing is
// always explicit.
func (t *TenantRequest) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	v, ok := raw["tenant"]
	for k := range raw {
		if k != "tenant" {
			return fmt.Errorf("unknown field %q", k)
		}
	}

	t.Set = ok
	if !ok || string(v) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.DisallowUnknownFields()
	return dec.Decode(&t.Tenant)
}

// TenantResponse is the body of a successful tenant change.
type TenantResponse struct {
	AgentID  string     `json:"agent_id"`
	Tenant   *Principal `json:"tenant"`
	Previous *Principal `json:"previous"`
}

// AgentConfig is the body of GET /agents/{id}/config, which an agent reads
// with its credential.
type AgentConfig struct {
	AgentID string     `json:"agent_id"`
	Tenant  *Principal `json:"tenant"`
}

// AuditBatch is the body of POST /agents/{id}/audit: entries of the
// agent's own audit chain, oldest first.
type AuditBatch struct {
	Entries []audit.Entry `json:"entries"`
}

// AuditAck answers an AuditBatch.
type AuditAck struct {
	Added int `json:"added"`
}
