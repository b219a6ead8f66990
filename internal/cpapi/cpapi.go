// Package cpapi holds the wire types of the control plane's HTTP API that
// other components speak: agent registration and the agent listing.
package cpapi

import "github.com/devopsdefender/devopsdefender/internal/agentapi"

// Service is the value of the control plane's /health "service" field.
const Service = "cp"

// RegisterRequest is the body of POST /register, sent by an agent.
type RegisterRequest struct {
	// VMName is the agent's VM name; a new registration under the same
	// name replaces the old record.
	VMName string `json:"vm_name"`

	// Origin is the URL of the agent's HTTP server as its tunnel connector
	// reaches it (in production "http://localhost:8080" inside the VM).
	Origin string `json:"origin"`

	// Evidence is what the agent's runtime returned for "attest".
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
}

// Attestation is the control plane's record of an agent's evidence.
type Attestation struct {
	// Type is "tdx", "simulated" or "none" as the evidence claims it.
	Type string `json:"type"`

	// Verified is true only when the control plane checked the evidence.
	Verified bool `json:"verified"`

	// Status says how the evidence was judged, e.g. "unverified".
	Status string `json:"status"`

	MRTD       string `json:"mrtd,omitempty"`
	TCBStatus  string `json:"tcb_status,omitempty"`
	VerifiedAt string `json:"verified_at,omitempty"`
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
}
