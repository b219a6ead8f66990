package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// GenesisHash is the PrevHash of the first entry of every chain.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// Limits on the fields of an entry, so that one caller cannot fill the
// database or the dashboard with a single event.
const (
	// MaxDetails bounds the canonical JSON of an entry's details.
	MaxDetails = 16 << 10
	// MaxField bounds the actor name, the target and an origin's agent id.
	MaxField = 256
	// maxAction bounds an action name.
	maxAction = 64
)

// hashDomain starts every hashed encoding, so that an entry hash can never
// be mistaken for the hash of anything else the fleet signs or hashes.
const hashDomain = "devopsdefender/audit/v1\x00"

// timeLayout is the one encoding of an entry's time: UTC with nine
// fractional digits, so the text is fixed-width and sorts as it reads.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

// ActorKind says what kind of caller an [Actor] is.
type ActorKind string

// The kinds of actor.
const (
	// ActorUser is a person logged in with GitHub; Name is the login and
	// ID the numeric GitHub user id.
	ActorUser ActorKind = "user"
	// ActorCI is a GitHub Actions job whose OIDC token verified; see [CI].
	ActorCI ActorKind = "ci"
	// ActorAgent is an attested agent; Name is its id in the registry.
	ActorAgent ActorKind = "agent"
	// ActorDevice is a paired native client; Name is its key fingerprint.
	ActorDevice ActorKind = "device"
	// ActorSystem is the fleet acting on its own, e.g. the collector or
	// the fencing of an older control plane; Name is the component.
	ActorSystem ActorKind = "system"
	// ActorAnonymous is a caller that proved no identity, recorded with
	// a refused request; Name is its remote address.
	ActorAnonymous ActorKind = "anonymous"
)

func (k ActorKind) valid() bool {
	switch k {
	case ActorUser, ActorCI, ActorAgent, ActorDevice, ActorSystem, ActorAnonymous:
		return true
	}
	return false
}

// Actor is who caused an event.
type Actor struct {
	Kind ActorKind `json:"kind"`
	// Name is the actor's name in its kind: a login, an agent id, ….
	Name string `json:"name"`
	// ID is the numeric GitHub id of a user, or empty. Logins can be
	// renamed and taken over; the id cannot (auth.md §2.3).
	ID string `json:"id,omitempty"`
}

// User returns the actor of a person logged in as GitHub user login with
// numeric id id, shown as "user:alice(42)".
func User(login string, id int64) Actor {
	return Actor{Kind: ActorUser, Name: login, ID: strconv.FormatInt(id, 10)}
}

// CI returns the actor of a GitHub Actions job: principal is the fleet or
// tenant principal its token matched (e.g. "org:acme(1)"), repository and
// sha the token's claims. It is shown as "ci:org:acme(1)/acme/app@sha";
// empty parts are left out.
func CI(principal, repository, sha string) Actor {
	name := principal
	if repository != "" {
		name += "/" + repository
	}
	if sha != "" {
		name += "@" + sha
	}
	return Actor{Kind: ActorCI, Name: name}
}

// Agent returns the actor of the agent with registry id id.
func Agent(id string) Actor { return Actor{Kind: ActorAgent, Name: id} }

// Device returns the actor of the paired device with key fingerprint fp.
func Device(fp string) Actor { return Actor{Kind: ActorDevice, Name: fp} }

// System returns the actor of a component of the fleet itself.
func System(component string) Actor { return Actor{Kind: ActorSystem, Name: component} }

// Anonymous returns the actor of an unauthenticated caller at remoteAddr.
func Anonymous(remoteAddr string) Actor {
	if remoteAddr == "" {
		remoteAddr = "unknown"
	}
	return Actor{Kind: ActorAnonymous, Name: remoteAddr}
}

// String returns a as "kind:name" or "kind:name(id)". [Filter.Actor]
// matches this form.
func (a Actor) String() string {
	if a.ID == "" {
		return string(a.Kind) + ":" + a.Name
	}
	return string(a.Kind) + ":" + a.Name + "(" + a.ID + ")"
}

func (a Actor) validate() error {
	if !a.Kind.valid() {
		return fmt.Errorf("unknown actor kind %q", a.Kind)
	}

	if err := checkText("actor name", a.Name, MaxField, true); err != nil {
		return err
	}
	if a.ID != "" && (len(a.ID) > 20 || strings.Trim(a.ID, "0123456789") != "") {
		return fmt.Errorf("actor id %q is not a decimal number", a.ID)
	}
	return nil
}

// Action names what happened. New actions need no schema change: any
// lowercase snake_case name is accepted.
type Action string

// The actions the fleet records.
const (
	ActionRegistration        Action = "registration"
	ActionReattestationFailed Action = "reattestation_failed"
	ActionDeploy              Action = "deploy"
	ActionExec                Action = "exec"
	ActionTenantSet           Action = "tenant_set"
	ActionTenantCleared       Action = "tenant_cleared"
	ActionLogin               Action = "login"
	ActionLogout              Action = "logout"
	ActionDevicePaired        Action = "device_paired"
	ActionDeviceRevoked       Action = "device_revoked"
	ActionStonith             Action = "stonith"
)

func (a Action) validate() error {
	ok := len(a) > 0 && len(a) <= maxAction && a[0] >= 'a' && a[0] <= 'z'
	for _, r := range a {
		ok = ok && (r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_')
	}

	if !ok {
		return fmt.Errorf("action %q is not a lowercase snake_case name of at most %d bytes",
			string(a), maxAction)
	}
	return nil
}

// Outcome says how an event ended.
type Outcome string

// The outcomes.
const (
	OutcomeOK     Outcome = "ok"     // the change was made
	OutcomeDenied Outcome = "denied" // the caller was refused; nothing changed
	OutcomeError  Outcome = "error"  // the change was attempted and failed
)

func (o Outcome) validate() error {
	switch o {
	case OutcomeOK, OutcomeDenied, OutcomeError:
		return nil
	}
	return fmt.Errorf("outcome %q is not ok, denied or error", string(o))
}

// Event is what a caller records; [Log.Append] and [Forwarder.Append]
// turn it into an [Entry].
type Event struct {
	// Time is when the event happened. Zero means now.
	Time   time.Time
	Actor  Actor
	Action Action
	// Target is the agent the event concerns, by registry id; empty for
	// events about no agent, such as a login.
	Target  string
	Outcome Outcome
	// Details is anything that encodes as a JSON object: a map, a struct,
	// or a json.RawMessage. Nil records {}. For a deploy, the spec hash
	// and the verified OIDC claims (repository, ref, sha, workflow,
	// run_id); never a secret, because the log is shown to admins.
	Details any
}

// Entry is one link of a chain.
type Entry struct {
	// Seq numbers the entries of a chain from 1 without gaps.
	Seq     int64     `json:"seq"`
	Time    time.Time `json:"time"`
	Actor   Actor     `json:"actor"`
	Action  Action    `json:"action"`
	Target  string    `json:"target,omitempty"`
	Outcome Outcome   `json:"outcome"`
	// Details is a JSON object in canonical form (see the package doc).
	Details json.RawMessage `json:"details"`
	// Origin is set on the control plane's copy of an agent's entry.
	Origin *Origin `json:"origin,omitempty"`
	// PrevHash is the Hash of entry Seq-1, or GenesisHash for entry 1.
	PrevHash string `json:"prev_hash"`
	// Hash is [Entry.ComputeHash] of this entry.
	Hash string `json:"hash"`
}

// Origin identifies the agent-side entry that a control-plane entry
// copies: the agent as the control plane authenticated it, and the entry's
// place in the agent's own chain. With it, the agent's hash can be
// recomputed from the copy.
type Origin struct {
	Agent    string `json:"agent"`
	Seq      int64  `json:"seq"`
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

// newEntry validates ev and turns it into an entry without its place in a
// chain (Seq, PrevHash and Hash are set by the appender).
func newEntry(ev Event, now func() time.Time) (Entry, error) {
	e := Entry{Time: ev.Time, Actor: ev.Actor, Action: ev.Action, Target: ev.Target,
		Outcome: ev.Outcome}
	if e.Time.IsZero() {
		e.Time = now()
	}
	e.Time = e.Time.UTC()

	details, err := canonicalDetails(ev.Details)
	if err != nil {
		return Entry{}, err
	}
	e.Details = details

	if err := e.validateFields(); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// validateFields checks what a caller supplies: everything but the chain
// fields and the origin.
func (e *Entry) validateFields() error {
	var errs []error
	if y := e.Time.Year(); y < 1970 || y > 9999 {
		errs = append(errs, fmt.Errorf("time %s is out of range", e.Time))
	}

	errs = append(errs, e.Actor.validate(), e.Action.validate(), e.Outcome.validate(),
		checkText("target", e.Target, MaxField, false))
	return errors.Join(errs...)
}

// checkText refuses text that would be confusing or dangerous to show:
// invalid UTF-8, control characters (a newline could forge a log line),
// or more than max bytes.
func checkText(what, s string, max int, required bool) error {
	switch {
	case required && s == "":
		return fmt.Errorf("%s is required", what)
	case len(s) > max:
		return fmt.Errorf("%s is longer than %d bytes", what, max)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s is not valid UTF-8", what)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("%s contains a control character", what)
	}
	return nil
}

// canonicalDetails encodes v as the canonical form of a JSON object: keys
// sorted, no insignificant space, numbers kept as written, strings escaped
// as encoding/json escapes them (including <, > and &). The form is a
// fixed point of decoding and re-encoding with encoding/json, so an entry
// keeps its hash through any JSON transport that uses it.
func canonicalDetails(v any) (json.RawMessage, error) {
	var raw []byte
	switch d := v.(type) {
	case nil:
		return json.RawMessage("{}"), nil
	case json.RawMessage:
		raw = d
	case []byte:
		raw = d
	default:
		var err error
		if raw, err = json.Marshal(v); err != nil {
			return nil, fmt.Errorf("encoding details: %w", err)
		}
	}

	obj, err := decodeObject(raw)
	if err != nil {
		return nil, err
	}

	out, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encoding details: %w", err)
	}
	if len(out) > MaxDetails {
		return nil, fmt.Errorf("details are longer than %d bytes", MaxDetails)
	}
	return out, nil
}

// decodeObject decodes raw as exactly one JSON object, keeping numbers as
// their text so that large ids survive.
func decodeObject(raw []byte) (map[string]any, error) {
	if len(raw) > 4*MaxDetails {
		return nil, fmt.Errorf("details are longer than %d bytes", MaxDetails)
	}

	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("details must be a JSON object: %w", err)
	}

	if obj == nil {
		return nil, errors.New("details must be a JSON object, not null")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("details must be a single JSON object")
	}
	return obj, nil
}

// ComputeHash returns the hash of e as the package doc defines it, from
// every field but Hash itself.
func (e *Entry) ComputeHash() string {
	h := sha256.New()
	io.WriteString(h, hashDomain)

	var o Origin
	if e.Origin != nil {
		o = *e.Origin
	}

	for _, f := range []string{
		strconv.FormatInt(e.Seq, 10), e.Time.UTC().Format(timeLayout),
		string(e.Actor.Kind), e.Actor.Name, e.Actor.ID,
		string(e.Action), e.Target, string(e.Outcome), string(e.Details),
		o.Agent, strconv.FormatInt(o.Seq, 10), o.PrevHash, o.Hash,
		e.PrevHash,
	} {
		writeField(h, f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func writeField(h hash.Hash, s string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(s)))
	h.Write(n[:])
	io.WriteString(h, s)
}

// validHash reports whether s looks like an entry hash: 64 lowercase hex
// digits.
func validHash(s string) bool {
	if len(s) != sha256.Size*2 {
		return false
	}

	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
