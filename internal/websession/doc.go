// Package websession logs people in to the control plane with their GitHub
// account and keeps their sessions (reference auth.md §1, with the
// weaknesses of §7 fixed).
//
// A [Service] is the OAuth broker. GET /auth/github/start sends the browser
// to GitHub with a signed, encrypted state bound to a nonce cookie (which
// doubles as the PKCE verifier), and only to return_to targets on the
// fleet's own hosts. GET /auth/github/callback checks state and nonce,
// exchanges the code with golang.org/x/oauth2, reads GET /user and
// classifies the person with their own token:
//
//   - fleet admin: the person holds the fleet owner principal. For a user
//     owner, the person is that user (same numeric id). For an org owner,
//     the person is an active member of the org (GET
//     /user/memberships/orgs/{org}; private membership counts, and the
//     org's numeric id must match); with Options.OrgAdminsOnly only org
//     owners (role "admin") qualify. For a repo owner, the person has admin
//     permission on that repository (GET /repos/{owner}/{repo}, whose
//     numeric id must match).
//   - tenant: otherwise, when Options.TenantAgents names at least one
//     agent the person holds as tenant.
//   - nobody: refused with 403. Having a GitHub account is never enough
//     (the reference admitted everyone, §7.1).
//
// Sessions are rows of a SQLite table (id, user, role, created, expires,
// revoked). The cookie or bearer token carries a random secret, signed and
// encrypted with gorilla/securecookie; the table keeps only its SHA-256, so
// a copy of the database lets no one in. Sessions expire, can be revoked
// one by one or per user, and end with POST /logout. Cookies are host-only,
// HttpOnly, SameSite=Lax, and Secure with the "__Host-" prefix; plain HTTP
// is allowed only for localhost names in the dev environment.
// State-changing requests authenticated by cookie must pass Go's
// [http.CrossOriginProtection] (Fetch metadata, then Origin against Host).
//
// Native clients use a device flow: POST /auth/device/start gives a device
// code and a short user code; a signed-in person approves the user code on
// GET /auth/device; POST /auth/device/poll then answers a bearer token for a
// new session row of its own (client "device"), revocable like any other.
// The device session names the approving browser session as its parent
// and ends with it: it expires no later, and signing out, signing in again
// from that browser or revoking the parent revokes it, so a stolen cookie
// cannot mint a device that outlives the victim's sign-out.
//
// A [LocalProvider] is the dev-mode stand-in for github.com: the OAuth
// endpoints and the few API routes the broker calls, with a page to pick a
// predefined user. It and the broker's Local flag are refused in
// production and staging.
//
// Deviations from the reference, on purpose: no session for people who are
// neither fleet admin nor tenant; private org membership counts and repo
// owners need admin permission; sessions are server-side and revocable;
// one secret on the control plane only (agents never hold it); cookies
// are host-only; return_to is limited to the fleet's hosts; separate
// codecs for state, cookie and bearer so one cannot pass as another; PKCE.
//
// Roles are decided at sign-in and kept for the session's life
// (Options.SessionTTL, 12 hours by default); whoever clears a tenancy
// should call [Service.RevokeUser].
//
// TODO(#4): re-check a fleet admin's standing during long sessions, so
// leaving the owner org takes effect before the session expires.
package websession
