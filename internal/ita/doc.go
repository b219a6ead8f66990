// Package ita appraises TDX evidence: through Intel Trust Authority (ITA),
// through a local stand-in of it, or directly from the quote. Every path
// yields the same [Appraisal], so the control plane runs one code path in
// dev and in production (reference auth.md §3; ARCHITECTURE.md §2, §4).
//
// The pieces:
//
//   - [Client] speaks ITA's appraisal REST API: GET /appraisal/v1/nonce
//     for a signed verifier nonce and POST /appraisal/v1/attest to trade a
//     quote for a JWT attestation token. [ReportData] is the report data
//     binding ITA checks: SHA-512(nonce.val || nonce.iat || runtime_data).
//   - [Verifier] checks such a token: signature against the issuer's JWKS
//     (cached by package jwks, refreshed single-flight and at a bounded
//     rate), an algorithm allowlist, the issuer, exp, nbf and iat with a
//     small leeway, and maps Intel's claims, flat (v1 tokens) or nested
//     under "tdx" (v2), into an [Appraisal].
//   - [Direct] verifies quotes itself with package tdx, for fleets with no
//     Trust Authority at all.
//   - [Authority] is a local Trust Authority for dev: the same REST shapes
//     and a JWKS at /certs, quotes verified with package tdx against the
//     simulated and Intel roots, tokens signed with a local ES256 key under
//     its own issuer and marked "simulated" when the quote is.
//
// The control plane holds an [Appraiser] ([Verifier] or [Direct]) and
// calls Appraise with the agent's [Evidence] and the report data it expects
// (its nonce and the agent's keys). Appraise fails unless the evidence is
// authentic and commits to exactly that report data; the measurements are
// then judged by package policy.
//
// Deviations from the reference, on purpose: tokens are bound to the
// caller's report data (§7.2); unknown key ids cannot trigger more than one
// JWKS fetch per interval and keys expire (§7.9); iat is required and nbf is
// checked; nested v2 claims are read (§7.10); the local authority signs
// with an asymmetric key and verifies real quotes instead of sharing an
// HS256 secret that attests nothing (§3.3, §7.3); error messages never
// echo ITA's response bodies or the API key (§7.14).
package ita
