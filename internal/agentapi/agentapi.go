// Package agentapi holds the wire types of the agent's HTTP API: what
// GET /health and GET /api/units return, and what POST /deploy, POST /exec
// and GET /logs/{app} take and give. The agent serves them; the control
// plane's collector and the command-line verbs read them.
package agentapi

import "github.com/devopsdefender/devopsdefender/internal/cloudflared"

// Service is the value of Health.Service for an agent.
const Service = "agent"

// Health is the body of an agent's GET /health. It carries evidence and
// state, never a credential: nothing in it lets a reader act as the agent.
type Health struct {
	OK         bool   `json:"ok"`
	Service    string `json:"service"`
	AgentID    string `json:"agent_id"`
	VMName     string `json:"vm_name"`
	Hostname   string `json:"hostname"`
	Build      string `json:"build"`
	AgentMode  string `json:"agent_mode"`
	UptimeSecs int64  `json:"uptime_secs"`

	// Registered reports whether the agent holds a control-plane
	// registration.
	Registered bool `json:"registered"`

	// Tenant is the principal the fleet admin assigned the agent to, e.g.
	// "org:acme(42)"; empty when only the fleet owner controls it.
	Tenant string `json:"tenant,omitempty"`

	// IntegrityState is "clean" when nothing but the fleet's own boot
	// workloads ran, and "controlled" once a tenant was assigned or a
	// workload was deployed or a command run; IntegrityReasons says which.
	IntegrityState   string   `json:"integrity_state"`
	IntegrityReasons []string `json:"integrity_reasons"`

	// AttestationType is the runtime's evidence type: "tdx",
	// "simulated" or "none".
	AttestationType string    `json:"attestation_type"`
	Evidence        *Evidence `json:"evidence,omitempty"`

	// SigningKey and NoiseKey are the agent's public keys (standard
	// base64) that its evidence commits to; see package attestbind.
	SigningKey string `json:"signing_key,omitempty"`
	NoiseKey   string `json:"noise_key,omitempty"`

	// EvidenceNonce is the nonce the published evidence commits to, and
	// EvidencePurpose its purpose ("register" or "reattest"), so anyone
	// can recompute the binding.
	EvidenceNonce   string `json:"evidence_nonce,omitempty"`
	EvidencePurpose string `json:"evidence_purpose,omitempty"`

	// Deployments lists the app names known to the runtime.
	Deployments     []string `json:"deployments"`
	DeploymentCount int      `json:"deployment_count"`
	Units           []Unit   `json:"units"`
	UnitCount       int      `json:"unit_count"`

	// Exposed are the hostnames the agent's workloads claimed (expose),
	// and whether the control plane published them.
	Exposed []Exposed `json:"exposed"`

	// Tunnel is the state of the connector (cloudflared) that carries
	// the agent's tunnel; absent when the agent runs none.
	Tunnel *cloudflared.Status `json:"tunnel,omitempty"`
}

// Exposed is one workload's claim of a hostname label for a local port.
type Exposed struct {
	App   string `json:"app"`
	Label string `json:"hostname_label"`
	Port  int    `json:"port"`

	// Hostname and URL are where the port is published; empty until the
	// agent registered.
	Hostname string `json:"hostname,omitempty"`
	URL      string `json:"url,omitempty"`

	// Published is true once the control plane applied the claim.
	Published bool `json:"published"`

	// Error says why the control plane has not applied the claim, e.g.
	// it was unreachable (the agent retries) or refused it.
	Error string `json:"error,omitempty"`
}

// Evidence is attestation evidence as the runtime produced it: the raw
// quote (or labelled non-TDX blob) and the report data it commits to.
type Evidence struct {
	AttestationType string `json:"attestation_type"`
	QuoteFormat     string `json:"quote_format"`
	QuoteB64        string `json:"quote_b64"`
	ReportDataB64   string `json:"report_data_b64"`

	// ITAToken is an Intel Trust Authority token over the quote, when the
	// agent obtained one.
	ITAToken string `json:"ita_token,omitempty"`
}

// Unit is one workload managed on the agent.
type Unit struct {
	ID           string `json:"id"`
	AppName      string `json:"app_name"`
	Kind         string `json:"kind"`
	Status       string `json:"status"`
	Source       string `json:"source,omitempty"`
	StartedAt    string `json:"started_at,omitempty"`
	FinishedAt   string `json:"finished_at,omitempty"`
	ErrorMessage string `json:"error_message,omitempty"`
	ExitCode     *int   `json:"exit_code,omitempty"`
	PID          *int   `json:"pid,omitempty"`
}

// DeployResponse is the body of a successful POST /deploy.
type DeployResponse struct {
	ID      string `json:"id"`
	AppName string `json:"app_name"`
	Status  string `json:"status"`
	// SpecSHA256 is the hex SHA-256 of the posted spec, as recorded in
	// the audit trail.
	SpecSHA256 string `json:"spec_sha256"`

	// Exposed is the spec's expose and how it was published; absent when
	// the spec exposes nothing.
	Exposed *Exposed `json:"exposed,omitempty"`
}

// ExecRequest is the body of POST /exec.
type ExecRequest struct {
	Cmd         []string `json:"cmd"`
	TimeoutSecs int      `json:"timeout_secs,omitempty"`
}

// ExecResponse is the body of a finished POST /exec.
type ExecResponse struct {
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

// LogsResponse is the body of GET /logs/{app}.
type LogsResponse struct {
	AppName string   `json:"app_name"`
	ID      string   `json:"id"`
	Status  string   `json:"status"`
	Lines   []string `json:"lines"`
}
