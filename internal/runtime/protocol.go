// Package runtime speaks EasyEnclave's workload-runtime protocol
// (reference easyenclave.md §1): newline-delimited JSON over a unix
// socket, one response line per request line, every request carrying the
// runtime's token. It holds the wire types shared by the client in this
// package and by the local runtime in runtime/server.
package runtime

import (
	"fmt"
	"time"
)

// Method names of the protocol (easyenclave.md §1.1).
const (
	MethodHealth = "health"
	MethodList   = "list"
	MethodLogs   = "logs"
	MethodDeploy = "deploy"
	MethodStop   = "stop"
	MethodExec   = "exec"
	MethodAttach = "attach"
	MethodAttest = "attest"
)

// Deployment statuses (easyenclave.md §3.2).
const (
	StatusDeploying = "deploying"
	StatusRunning   = "running"
	StatusCompleted = "completed"
	StatusFailed    = "failed"
	StatusStopped   = "stopped"
)

// Protocol defaults (easyenclave.md §7.2).
const (
	DefaultLogTail     = 100
	DefaultExecTimeout = 30 * time.Second
)

// Error strings clients match on (easyenclave.md §1.3).
const (
	ErrUnauthenticated = "unauthenticated"
	ErrMissingMethod   = "missing method"
	ErrMissingID       = "missing id"
	ErrNotFound        = "deployment not found"
)

// Terminal reports whether a deployment in status s has finished for good.
func Terminal(s string) bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusStopped
}

// Deployment is one entry of the runtime's table, as "list" reports it.
type Deployment struct {
	ID           string `json:"id"`
	PID          *int   `json:"pid"`
	AppName      string `json:"app_name"`
	Source       string `json:"source"`
	Status       string `json:"status"`
	ErrorMessage string `json:"error_message,omitempty"`

	// StartedAt is RFC 3339 UTC, taken when the deploy was accepted.
	StartedAt string `json:"started_at"`

	// ExitCode, FinishedAt and Restarts extend EasyEnclave's shape; its
	// clients ignore fields they do not know.
	ExitCode   *int   `json:"exit_code,omitempty"`
	FinishedAt string `json:"finished_at,omitempty"`
	Restarts   int    `json:"restarts,omitempty"`
}

// Health is the reply to "health".
type Health struct {
	AttestationType string `json:"attestation_type"`
	Workloads       int    `json:"workloads"`
	UptimeSecs      int64  `json:"uptime_secs"`
}

// ExecResult is the reply to a finished "exec". A non-zero exit is still a
// result, not an error; death by a signal gives ExitCode -1.
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

// Attestation is the reply to "attest" (easyenclave.md §4.2).
type Attestation struct {
	AttestationType string `json:"attestation_type"`
	QuoteFormat     string `json:"quote_format"`
	QuoteB64        string `json:"quote_b64"`
	ReportDataB64   string `json:"report_data_b64"`
	ReportDataLen   int    `json:"report_data_len"`
}

// Error is an {"ok":false} reply. Message is the runtime's free-text error.
type Error struct {
	Method  string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("runtime %s: %s", e.Method, e.Message)
}
