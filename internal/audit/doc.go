// Package audit is DevOps Defender's tamper-evident record of who changed
// what: registrations, failed re-attestations, deploys, execs, tenant
// changes, logins, logouts, device pairings and fencing. The original
// system only wrote such events to stderr (issue #4 §6); here every one is
// an [Entry] in an append-only, hash-chained log.
//
// # The chain
//
// Entries are numbered 1, 2, 3, … without gaps. Each carries the hash of
// its predecessor (PrevHash; [GenesisHash] for entry 1) and its own Hash,
// the lowercase hex SHA-256 of this encoding, which [Entry.ComputeHash]
// implements and an external verifier can reproduce:
//
//	"devopsdefender/audit/v1\x00"
//	then, for each field in this order, its length as an 8-byte big-endian
//	integer followed by its UTF-8 bytes:
//	  seq           decimal
//	  time          UTC, "2006-01-02T15:04:05.000000000Z"
//	  actor kind, actor name, actor id
//	  action, target, outcome
//	  details       the canonical JSON object (sorted keys, no spaces,
//	                numbers as written, Go's escaping of <, > and &)
//	  origin agent, origin seq (decimal, "0" without origin),
//	  origin prev hash, origin hash
//	  prev hash
//
// Length prefixes make the encoding unambiguous: no two different entries
// encode to the same bytes, whatever characters their fields hold.
//
// Editing any stored field of an entry changes its hash; recomputing that
// hash breaks the next entry's link; deleting an entry leaves a gap in the
// numbering; deleting the newest entries disagrees with the head that
// every append records. [Log.Verify] finds the first such break. Someone
// who can write the database and rewrites every later entry and the head
// is not detected by the chain alone: the head must also be kept outside
// the database (see [Log.Head]).
//
// # Where entries live
//
// The control plane keeps its log in its SQLite database ([Migrate],
// [Open]). An agent records its own events in a [Forwarder], a JSON-lines
// file with its own chain, and ships them to the control plane, which
// copies them into its log with [Log.Import]; the agent keeps each entry
// until the control plane acknowledged it.
package audit
