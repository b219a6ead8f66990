// Package server is a local stand-in for the EasyEnclave workload runtime
// (reference easyenclave.md §1–3 and §7): it serves EasyEnclave's unix-socket
// protocol and runs workloads as real processes, so DevOps Defender's agent,
// control plane and shell work unchanged on a laptop or CI runner without
// TDX.
//
// # Protocol
//
// One JSON object per line, one reply line per request, several requests per
// connection answered in order (§1.1). Request lines are capped at
// [MaxRequestLine] bytes. Unless the server is unsealed, every parsed line
// must carry the runtime's token, 32 random bytes as 64 lowercase hex
// characters (§1.2); a missing or wrong token gets "unauthenticated" and the
// connection stays open. "attach" switches the connection to a raw PTY
// stream after its acknowledgement (§1.5).
//
// # Workloads
//
// A deploy is answered at once with status "deploying" and runs in the
// background: older deployments of the same app_name are stopped and
// removed, a github_release asset is fetched, and cmd is spawned (§2.4).
// Unlike EasyEnclave, the runtime:
//
//   - validates app_name, asset and rename before anything happens, so a
//     request can never name a path outside the data directory;
//   - runs each workload in its own process group and signals the whole
//     group (SIGTERM, up to 2 s, SIGKILL), returning as soon as it is gone;
//   - watches exits: exit status 0 becomes "completed", anything else
//     "failed" with "exited with code N" or "killed by signal S", and the
//     entry gains exit_code and finished_at;
//   - bounds each app's log to Options.LogMaxLines lines (default
//     [DefaultLogMaxLines]) of at most [MaxLogLine] bytes, keeping the newest;
//     longer lines are split and invalid UTF-8 is replaced, never stalling the
//     pipe;
//   - keeps its own secrets (EE_TOKEN, EE_TOKEN_FIXED, EE_GITHUB_TOKEN,
//     EE_BOOT_WORKLOADS) out of workload environments; only boot workloads
//     with inherit_token get EE_TOKEN;
//   - caches release assets by repo, tag and asset in a sidecar file, so a new
//     tag is fetched instead of silently reusing the old binary.
//
// # The /var/lib/easyenclave prefix
//
// DevOps Defender's workload specs hard-code paths below /var/lib/easyenclave,
// EasyEnclave's data directory. When the data directory is elsewhere, the
// runtime rewrites that literal prefix in every cmd, env and exec/attach argv
// string to the data directory (easyenclave.md §7.5, option b). The rewrite is
// on by default unless the data directory is /var/lib/easyenclave, and
// Options.RewriteDataPrefix turns it on or off explicitly. Only whole path
// components match: /var/lib/easyenclavex is left alone.
//
// # Attestation
//
// "attest" is delegated to an [Attester]. Without one the runtime never claims
// TDX: it reports attestation type "none" and answers with a documented blob
// that no verifier accepts (see [LocalQuote]).
package server
