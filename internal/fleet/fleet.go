// Package fleet is the control plane's registry of agents and its durable
// store. Every agent that registered is one row in an embedded SQLite
// database, so a restarted control plane keeps its fleet without asking a
// predecessor or rediscovering tunnels (the reference kept everything in
// memory; cp.md §10.21).
//
// The store holds only the SHA-256 of each agent's token, never the token
// itself, and compares it in constant time.
package fleet

import (
	"crypto/sha256"
	"errors"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// Errors callers branch on.
var (
	// ErrNotFound means no agent has the given id.
	ErrNotFound = errors.New("fleet: agent not found")
	// ErrExists means an agent with the given id is already registered.
	ErrExists = errors.New("fleet: agent id already registered")
	// ErrBadToken means the agent is unknown or its token does not match.
	// The two cases are one error so that callers cannot probe for ids.
	ErrBadToken = errors.New("fleet: agent token does not match")
)

// Status is an agent's liveness as the control plane judges it.
type Status string

// The statuses an agent moves through. A new registration starts as
// StatusRegistering; the collector moves it to StatusHealthy on a good
// scrape and to StatusStale, then StatusDead, when scrapes keep failing.
// Dead agents keep their record, so a returning agent becomes healthy again.
const (
	StatusRegistering Status = "registering"
	StatusHealthy     Status = "healthy"
	StatusStale       Status = "stale"
	StatusDead        Status = "dead"
)

// Valid reports whether s is one of the defined statuses.
func (s Status) Valid() bool {
	switch s {
	case StatusRegistering, StatusHealthy, StatusStale, StatusDead:
		return true
	}
	return false
}

// Attestation is what the control plane knows about an agent's evidence
// and how it judged it.
type Attestation struct {
	// Type is the evidence type the agent claims: "tdx", "simulated" or
	// "none".
	Type string
	// QuoteFormat, QuoteB64 and ReportDataB64 are the evidence as posted.
	QuoteFormat   string
	QuoteB64      string
	ReportDataB64 string
	// Verified is true only when the control plane checked the evidence.
	Verified bool
	// Status says how the evidence was judged, e.g. "unverified".
	Status string
	// MRTD and TCBStatus come from verified evidence; empty otherwise.
	MRTD      string
	TCBStatus string
	// VerifiedAt is when the evidence was checked; zero if never.
	VerifiedAt time.Time
	// Measurements are the verified TD measurements; nil if unverified.
	Measurements *tdx.Measurements
	// TCBDate is the TCB date of the platform, when the appraisal had one.
	TCBDate time.Time
}

// Agent is one registered agent.
type Agent struct {
	// ID is the control plane's name for the agent, e.g.
	// "dd-dev-agent-1a2b3c4d". The agent's own idea of its id does not count.
	ID string
	// VMName is the agent's VM name, a lowercase DNS label. At most one
	// agent has a given VMName: a new registration replaces the old one.
	VMName string
	// Hostname is the agent's public host name and URL its public URL, as
	// the ingress published them.
	Hostname string
	URL      string
	// Origin is the agent's HTTP server as the ingress reaches it.
	Origin string
	Status Status
	// RegisteredAt is when the agent registered; LastSeen is when its
	// /health last answered well (zero if never).
	RegisteredAt time.Time
	LastSeen     time.Time
	Attestation  Attestation
	// Units are the workloads the agent reported at its last good scrape.
	Units []agentapi.Unit
	// TokenHash is the SHA-256 of the agent's token (see [HashToken]).
	TokenHash []byte
	// LastError describes the last failed scrape; empty after a good one.
	LastError string
	// SigningKey (Ed25519) and NoiseKey (X25519) are the agent's public
	// keys its evidence commits to (see package attestbind).
	SigningKey []byte
	NoiseKey   []byte
	// Tenant is the principal a fleet admin assigned the agent to; nil
	// when the fleet owner alone controls it. The tenant's CI may deploy
	// to the agent and the tenant's people may see it.
	Tenant *ghoidc.Principal
	// TunnelID is the agent's tunnel at the ingress provider; empty for
	// an agent registered before tunnels (schema v3).
	TunnelID string
	// Claims are the hostnames the agent's workloads expose, in the
	// order the agent sent them.
	Claims []ingress.Claim
}

// LastHeard returns when the agent was last known to be alive: its last
// good scrape, or its registration when it was never scraped.
func (a *Agent) LastHeard() time.Time {
	if a.LastSeen.IsZero() {
		return a.RegisteredAt
	}
	return a.LastSeen
}

// HashToken returns the digest of an agent token that the store keeps.
func HashToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// Counts summarises the fleet for health reports.
type Counts struct {
	Agents  int
	Healthy int
}
