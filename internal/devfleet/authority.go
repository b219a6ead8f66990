package devfleet

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/policy"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// startTrustAuthority serves the local stand-in for Intel Trust
// Authority: it appraises the simulated TD's quotes and mints tokens the
// control plane verifies against its JWKS, so registration in the dev
// fleet takes the same path as in a production fleet that uses Intel's.
func (f *Fleet) startTrustAuthority(ctx context.Context) error {
	ln, url, err := listen("127.0.0.1:0")
	if err != nil {
		return err
	}

	auth, err := ita.NewAuthority(ita.AuthorityOptions{
		URL: url, APIKey: f.secrets.TrustAuthorityKey,
		KeyPath:        filepath.Join(f.opts.StateDir, "trust-authority-key.pem"),
		SimulatedRoots: f.simRoots(), Logger: f.log,
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("devfleet: %w", err)
	}

	f.goService("trust-authority", func() error { return serveHTTP(ctx, ln, auth.Handler()) })

	f.taURL, f.taJWKSURL = url, auth.JWKSURL()
	f.taVerifier, err = ita.NewVerifier(ctx, ita.VerifierOptions{JWKSURL: auth.JWKSURL(),
		Issuer: auth.URL(), Logger: f.log})
	if err != nil {
		return fmt.Errorf("devfleet: %w", err)
	}
	return nil
}

// trustAuthorityClient returns an agent's client of the local authority.
func (f *Fleet) trustAuthorityClient() (*ita.Client, error) {
	return ita.NewClient(ita.ClientOptions{BaseURL: f.taURL,
		APIKey: f.secrets.TrustAuthorityKey, Logger: f.log})
}

func (f *Fleet) simRoots() *x509.CertPool {
	roots := x509.NewCertPool()
	roots.AddCert(f.sim.Root())
	return roots
}

// policy pins the fleet to the simulated TD's own measurements: its MRTD
// (the binary's hash), an up-to-date TCB and no debug TD, enforced.
func (f *Fleet) policy(ctx context.Context) (*policy.Policy, error) {
	quote, err := f.sim.Quote(ctx, [64]byte{})
	if err != nil {
		return nil, err
	}

	m, err := tdx.Parse(quote)
	if err != nil {
		return nil, err
	}

	p := &policy.Policy{MRTD: []string{hex.EncodeToString(m.MRTD)},
		TCBStatuses: []string{"UpToDate"}, Mode: policy.Enforce}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}
