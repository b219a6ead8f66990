// Package ghoidc authenticates GitHub Actions jobs by their OIDC tokens,
// the credential CI uses to deploy to agents and call the control plane
// (reference auth.md §2, agent.md §4.2).
//
// A [Verifier] checks a token on top of go-oidc: an RS256 signature (no
// other algorithm) against the issuer's JWKS, the issuer, the fleet's
// audience, exp, nbf and iat with a leeway, and the presence of the claims
// principals are matched on. The JWKS is found by discovery at the first
// verification and cached by package jwks; refreshes are single-flight
// and rate-limited, so tokens with made-up key ids cannot make us hammer
// GitHub (the reference refetched on every unknown kid, auth.md §7.9).
//
// A [Principal] (user, org or repo) then decides whether the verified
// claims may act: by name, case-insensitively, and by numeric id, so a
// re-registered login cannot take over.
//
// An [Issuer] is the dev-mode stand-in for GitHub's token service. It
// serves a discovery document, a JWKS and a mint endpoint for the dev CLI,
// and signs tokens carrying GitHub's full claim set, so the verifier runs
// unchanged against it. [FetchActionsToken] obtains a real token inside a
// workflow job.
//
// Deviations from the reference, on purpose: one audience per fleet
// instead of a shared "dd-agent"; only RS256; nbf and iat are checked and
// iat is required; a numeric id that does not parse is an error, not 0;
// logins compare case-insensitively while ids must be equal.
//
// TODO(#4): restrict which refs, workflows, environments and events may
// act for a principal (auth.md §7.8); Claims carries the fields for it.
package ghoidc
