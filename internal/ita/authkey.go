package ita

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"log/slog"

	"github.com/devopsdefender/devopsdefender/internal/keyfile"
)

// loadOrCreateKey returns the authority's P-256 signing key kept at path,
// created if missing, or a fresh in-memory key if path is empty. Tokens
// and verifiers' caches depend on the key, so a file that holds no usable
// key is an error, never silently replaced.
func loadOrCreateKey(path string, log *slog.Logger) (*ecdsa.PrivateKey, error) {
	return keyfile.LoadOrCreate(keyfile.Options[*ecdsa.PrivateKey]{
		Path: path,
		Generate: func() (*ecdsa.PrivateKey, error) {
			return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		},
		Check: func(key *ecdsa.PrivateKey) error {
			if key.Curve != elliptic.P256() {
				return errors.New("key is not an ECDSA P-256 key")
			}
			return nil
		},
		Logger: log,
	})
}
