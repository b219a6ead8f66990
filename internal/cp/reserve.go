package cp

import (
	"context"
	"slices"
)

// Registrations and agents' ingress changes check who holds a hostname in
// the registry, publish it at the ingress provider, then record it. With
// Cloudflare the provider calls take a second or more, so they run
// outside regMu: under regMu a change first waits until none of the
// hostnames it publishes or withdraws is reserved, checks them, and
// reserves them; it ends the reservation under regMu again once the
// registry records the result. Changes of other hostnames go on
// meanwhile; a change of the same hostnames waits and then checks what
// the first one left.

// reservation is one change's hold on hostnames while its provider calls
// run. done is closed when it ends.
type reservation struct {
	hostnames []string
	done      chan struct{}
}

// lockFor takes regMu once none of the hostnames that names returns is
// reserved, and returns with regMu held and those hostnames. names runs
// under regMu, so it may read the registry as it stands; its error, or
// ctx's, is returned without regMu held.
func (s *Server) lockFor(ctx context.Context, names func() ([]string, error)) ([]string,
	error) {
	for {
		s.regMu.Lock()
		hostnames, err := names()
		if err != nil {
			s.regMu.Unlock()
			return nil, err
		}
		r := s.reservedAny(hostnames)
		if r == nil {
			return hostnames, nil
		}
		s.regMu.Unlock()

		select {
		case <-r.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// reservedAny returns a reservation of any of hostnames, or nil. Call it
// with regMu held.
func (s *Server) reservedAny(hostnames []string) *reservation {
	for _, h := range hostnames {
		if r, ok := s.reserved[h]; ok {
			return r
		}
	}
	return nil
}

// reserve holds hostnames, which must be free ([Server.lockFor]), until
// [Server.unreserve]. Call it with regMu held.
func (s *Server) reserve(hostnames []string) *reservation {
	r := &reservation{hostnames: hostnames, done: make(chan struct{})}
	for _, h := range hostnames {
		s.reserved[h] = r
	}
	return r
}

// unreserve ends r and wakes the changes that wait for it.
func (s *Server) unreserve(r *reservation) {
	s.regMu.Lock()
	defer s.regMu.Unlock()

	for _, h := range r.hostnames {
		if s.reserved[h] == r {
			delete(s.reserved, h)
		}
	}
	close(r.done)
}

// hostnameSet returns the sorted, distinct hostnames of lists.
func hostnameSet(lists ...[]string) []string {
	var all []string
	for _, l := range lists {
		all = append(all, l...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}
