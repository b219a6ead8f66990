package cp

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// Registration nonces are handed out to anyone, so both the memory they
// take and who may take them are bounded: every client has an allowance
// (a token bucket), anonymous callers together may hold only part of the
// pool, and registered agents re-attesting spend allowances of their own
// on the rest, so that a flood of anonymous requests can neither grow
// the pool nor starve the fleet.
const (
	// maxOutstandingNonces bounds the nonces held at once.
	maxOutstandingNonces = 4096
	// maxAnonymousNonces is the part of the pool anonymous callers may
	// hold; the rest is left for registered agents.
	maxAnonymousNonces = maxOutstandingNonces * 3 / 4
	// maxNonceClients bounds the allowances remembered per kind of
	// client; past it, new clients share one allowance.
	maxNonceClients = 16384

	defaultNonceBurst = 20
	defaultNonceEvery = 3 * time.Second
)

// codeTooManyRequests is the error code of a 429 reply.
const codeTooManyRequests = "TOO_MANY_REQUESTS"

// nonces hands out single-use nonces and remembers them until they are
// used or expire. They live in memory: a restarted control plane refuses
// old nonces, and agents simply ask again.
type nonces struct {
	ttl time.Duration
	now func() time.Time

	// anonymous is spent per remote address, agents per agent id.
	anonymous, agents *allowance

	mu      sync.Mutex
	pending map[string]pendingNonce // base64 nonce -> expiry
	// held counts the pending nonces of anonymous callers.
	held int
}

type pendingNonce struct {
	expires   time.Time
	anonymous bool
}

func newNonces(o *Options) *nonces {
	return &nonces{
		ttl:       o.NonceTTL,
		now:       o.Now,
		anonymous: newAllowance(o.NonceBurst, o.NonceEvery),
		agents:    newAllowance(o.NonceBurst, o.NonceEvery),
		pending:   map[string]pendingNonce{},
	}
}

var errNoncesExhausted = errors.New("too many outstanding nonces")

// issue returns a fresh nonce and its expiry, for an anonymous caller or
// a registered agent.
func (n *nonces) issue(anonymous bool) (string, time.Time, error) {
	var b [attestbind.NonceSize]byte
	rand.Read(b[:])
	v := base64.StdEncoding.EncodeToString(b[:])
	now := n.now()
	exp := now.Add(n.ttl)

	n.mu.Lock()
	defer n.mu.Unlock()

	if !n.roomLocked(anonymous) {
		n.expireLocked(now)
	}
	if !n.roomLocked(anonymous) {
		return "", time.Time{}, errNoncesExhausted
	}

	n.pending[v] = pendingNonce{expires: exp, anonymous: anonymous}
	if anonymous {
		n.held++
	}
	return v, exp, nil
}

func (n *nonces) roomLocked(anonymous bool) bool {
	if anonymous && n.held >= maxAnonymousNonces {
		return false
	}
	return len(n.pending) < maxOutstandingNonces
}

// consume removes v and reports whether it was issued and is unexpired. A
// nonce is consumed even when the request that carries it fails later, so
// a captured request cannot be replayed.
func (n *nonces) consume(v string) ([]byte, bool) {
	n.mu.Lock()
	p, ok := n.pending[v]
	n.dropLocked(v)
	n.mu.Unlock()
	if !ok || n.now().After(p.expires) {
		return nil, false
	}

	raw, err := base64.StdEncoding.DecodeString(v)
	return raw, err == nil
}

func (n *nonces) expireLocked(now time.Time) {
	for v, p := range n.pending {
		if now.After(p.expires) {
			n.dropLocked(v)
		}
	}
}

func (n *nonces) dropLocked(v string) {
	p, ok := n.pending[v]
	if !ok {
		return
	}
	delete(n.pending, v)
	if p.anonymous {
		n.held--
	}
}

// allowance is a token bucket per client that holds burst nonces and
// earns one back every interval. A bucket is kept as the time at which it
// will be full again (the generic cell rate algorithm), so a full bucket
// is the same as none and can be forgotten.
type allowance struct {
	burst int
	every time.Duration

	mu   sync.Mutex
	full map[string]time.Time
}

func newAllowance(burst int, every time.Duration) *allowance {
	return &allowance{burst: burst, every: every, full: map[string]time.Time{}}
}

// overflowClient is the allowance shared by the clients that came once
// maxNonceClients others were already remembered.
const overflowClient = "overflow"

// take spends one of client's nonces at now, or reports how long the
// client must wait for one.
func (a *allowance) take(client string, now time.Time) (wait time.Duration, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()

	full, seen := a.full[client]
	if !seen && len(a.full) >= maxNonceClients {
		a.forgetFullLocked(now)
		if len(a.full) >= maxNonceClients {
			client = overflowClient
			full = a.full[client]
		}
	}
	if full.Before(now) {
		full = now
	}

	next := full.Add(a.every)
	// An empty bucket is burst intervals away from full.
	if over := next.Sub(now) - time.Duration(a.burst)*a.every; over > 0 {
		return over, false
	}

	a.full[client] = next
	return 0, true
}

func (a *allowance) forgetFullLocked(now time.Time) {
	for c, full := range a.full {
		if !full.After(now) {
			delete(a.full, c)
		}
	}
}

// clientOf names the anonymous caller whose allowance a request spends:
// its address, an IPv6 address cut to its /64, which one host usually
// holds whole.
//
// Behind its tunnel every caller reaches the control plane from the
// connector (cloudflared) on loopback, and Cloudflare's edge names the
// client in CF-Connecting-IP. The header is believed only from a
// loopback peer, which is the local connector: a client that reaches the
// control plane directly cannot pick whose allowance it spends.
func clientOf(r *http.Request) string {
	addr, ok := parseHost(r.RemoteAddr)
	if !ok {
		return r.RemoteAddr
	}
	if addr.IsLoopback() {
		if fwd, ok := parseHost(r.Header.Get(cfConnectingIP)); ok {
			addr = fwd
		}
	}
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}

	return addr.String()
}

// cfConnectingIP is the header in which Cloudflare names the client.
const cfConnectingIP = "CF-Connecting-IP"

// parseHost parses "host:port" or a bare address, unmapping IPv4 in IPv6.
func parseHost(s string) (netip.Addr, bool) {
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}

	return addr.Unmap(), true
}

// issueNonce serves POST /register/nonce to anyone, within the allowance
// of the caller's address.
func (s *Server) issueNonce(w http.ResponseWriter, r *http.Request) error {
	return s.grantNonce(w, s.nonces.anonymous, clientOf(r), true)
}

// issueAgentNonce serves POST /agents/{id}/nonce: a registered agent
// about to re-attest spends its own allowance, on a part of the pool that
// anonymous callers cannot fill.
func (s *Server) issueAgentNonce(w http.ResponseWriter, r *http.Request) error {
	return s.grantNonce(w, s.nonces.agents, agentOf(r.Context()).ID, false)
}

func (s *Server) grantNonce(w http.ResponseWriter, a *allowance, client string,
	anonymous bool) error {
	if wait, ok := a.take(client, s.opts.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter(wait)))
		return &httpapi.Error{Status: http.StatusTooManyRequests, Code: codeTooManyRequests,
			Message: "too many nonce requests; retry after the time in Retry-After"}
	}

	v, exp, err := s.nonces.issue(anonymous)
	if err != nil {
		return &httpapi.Error{Status: http.StatusServiceUnavailable, Code: httpapi.CodeUnavailable,
			Message: "too many registrations in progress; retry shortly", Err: err}
	}
	return httpapi.WriteJSON(w, http.StatusOK, cpapi.NonceResponse{Nonce: v,
		ExpiresAt: exp.UTC().Format(time.RFC3339)})
}

// retryAfter is wait in whole seconds, rounded up so that a client that
// waits as told finds a nonce.
func retryAfter(wait time.Duration) int {
	return int((wait + time.Second - 1) / time.Second)
}
