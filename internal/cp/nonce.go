package cp

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// maxOutstandingNonces bounds the memory an unauthenticated caller can
// make the control plane hold by asking for nonces.
const maxOutstandingNonces = 4096

// nonces hands out single-use nonces and remembers them until they are
// used or expire. They live in memory: a restarted control plane refuses
// old nonces, and agents simply ask again.
type nonces struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	pending map[string]time.Time // base64 nonce -> expiry
}

func newNonces(ttl time.Duration, now func() time.Time) *nonces {
	return &nonces{ttl: ttl, now: now, pending: map[string]time.Time{}}
}

var errNoncesExhausted = errors.New("too many outstanding nonces")

// issue returns a fresh nonce and its expiry.
func (n *nonces) issue() (string, time.Time, error) {
	var b [attestbind.NonceSize]byte
	rand.Read(b[:])
	v := base64.StdEncoding.EncodeToString(b[:])
	now := n.now()
	exp := now.Add(n.ttl)

	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.pending) >= maxOutstandingNonces {
		n.expireLocked(now)
	}
	if len(n.pending) >= maxOutstandingNonces {
		return "", time.Time{}, errNoncesExhausted
	}
	n.pending[v] = exp
	return v, exp, nil
}

// consume removes v and reports whether it was issued and is unexpired. A
// nonce is consumed even when the request that carries it fails later, so
// a captured request cannot be replayed.
func (n *nonces) consume(v string) ([]byte, bool) {
	n.mu.Lock()
	exp, ok := n.pending[v]
	delete(n.pending, v)
	n.mu.Unlock()
	if !ok || n.now().After(exp) {
		return nil, false
	}
	raw, err := base64.StdEncoding.DecodeString(v)
	return raw, err == nil
}

func (n *nonces) expireLocked(now time.Time) {
	for v, exp := range n.pending {
		if now.After(exp) {
			delete(n.pending, v)
		}
	}
}

// issueNonce serves POST /register/nonce.
func (s *Server) issueNonce(w http.ResponseWriter, r *http.Request) error {
	v, exp, err := s.nonces.issue()
	if err != nil {
		return &httpapi.Error{Status: http.StatusServiceUnavailable, Code: httpapi.CodeUnavailable,
			Message: "too many registrations in progress; retry shortly", Err: err}
	}
	return httpapi.WriteJSON(w, http.StatusOK, cpapi.NonceResponse{Nonce: v,
		ExpiresAt: exp.UTC().Format(time.RFC3339)})
}
