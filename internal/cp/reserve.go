package cp

import (
	"context"
	"slices"
)

// Registrations and agents' ingress changes check who holds a hostname in
// the registry, publish it at the ingress provider, then record it. With
// Cloudflare the provider calls take a second or more, so they run
// outside regMu. Under regMu a change first waits until none of its keys
// is reserved, checks the registry, and reserves its keys; it records the
// result under regMu again and then ends the reservation. Changes with
// other keys go on meanwhile; a change with a common key waits, then
// checks what the first one left.
//
// The keys are VM names: the changing agent's own, and every VM whose
// agent could hold a hostname the change publishes ([possibleHolders]).
// A tunnel serves only hostnames made from its VM's name, so a change
// that publishes h waits for every change to a tunnel that could serve h,
// whatever the registry says that tunnel holds (a record left behind by
// a failed provider call included).

// reservation is one change's hold on its keys while its provider calls
// run. done is closed when it ends.
type reservation struct {
	keys []string
	done chan struct{}
}

// reservationKeys returns the keys of a change by the agent of vmName
// that publishes hostnames.
func reservationKeys(vmName string, hostnames []string) []string {
	keys := []string{vmName}
	for _, h := range hostnames {
		keys = append(keys, possibleHolders(h)...)
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// reserveChecked waits until none of keys is reserved, runs check under
// regMu and, if it passes, reserves keys until [Server.unreserve]. It
// gives up with ctx.
func (s *Server) reserveChecked(ctx context.Context, keys []string,
	check func() error) (*reservation, error) {
	if err := s.lockUnreserved(ctx, keys); err != nil {
		return nil, err
	}
	defer s.regMu.Unlock()

	if err := check(); err != nil {
		return nil, err
	}

	r := &reservation{keys: keys, done: make(chan struct{})}
	for _, k := range keys {
		s.reserved[k] = r
	}
	return r, nil
}

// lockUnreserved takes regMu once none of keys is reserved, and returns
// with it held; with ctx's error, without it.
func (s *Server) lockUnreserved(ctx context.Context, keys []string) error {
	for {
		s.regMu.Lock()
		r := s.reservedAny(keys)
		if r == nil {
			return nil
		}
		s.regMu.Unlock()

		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// reservedAny returns a reservation of any of keys, or nil. Call it with
// regMu held.
func (s *Server) reservedAny(keys []string) *reservation {
	for _, k := range keys {
		if r, ok := s.reserved[k]; ok {
			return r
		}
	}
	return nil
}

// unreserve ends r and wakes the changes that wait for it.
func (s *Server) unreserve(r *reservation) {
	s.regMu.Lock()
	defer s.regMu.Unlock()

	for _, k := range r.keys {
		if s.reserved[k] == r {
			delete(s.reserved, k)
		}
	}
	close(r.done)
}
