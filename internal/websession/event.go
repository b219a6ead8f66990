package websession

// Actions of an [Event], named as the audit log names them.
const (
	ActionLogin        = "login"
	ActionLogout       = "logout"
	ActionDevicePaired = "device_paired"
)

// Outcomes of an [Event].
const (
	OutcomeOK     = "ok"
	OutcomeDenied = "denied"
	OutcomeError  = "error"
)

// Event is a sign-in, sign-out or device pairing, handed to
// Options.OnEvent for the audit log. It never carries a secret.
type Event struct {
	Action  string
	Outcome string
	// Login and UserID name the GitHub user; both are empty when the
	// user is not known (e.g. a sign-in that failed before GET /user).
	Login  string
	UserID int64
	// Role is the session's role; empty when no session was made.
	Role Role
	// Session is the id of the session made or ended, if any.
	Session string
	// Details adds context: "reason" for refusals, "client",
	// "return_to", "approved_by", "agents".
	Details map[string]any
}

// Actor names who acted: "user:alice(42)", or "anonymous".
func (e Event) Actor() string {
	if e.UserID == 0 {
		return "anonymous"
	}
	return actor(e.Login, e.UserID)
}
