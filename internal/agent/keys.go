package agent

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"log/slog"

	"github.com/devopsdefender/devopsdefender/internal/attestbind"
	"github.com/devopsdefender/devopsdefender/internal/keyfile"
)

// noiseKeyInfo labels the derivation of the Noise static key from the
// signing key's seed; changing it changes every agent's Noise key.
const noiseKeyInfo = "devopsdefender agent noise static key v1"

// keys are the agent's key pairs. The signing key signs the agent's
// requests to the control plane; the Noise static key identifies the
// terminal gateway. The agent's evidence commits to both public keys.
//
// The control plane lets a registration replace the record of its VM
// name, and keep its tenant, when it shows the same signing key, so an
// agent that should survive restarts keeps its keys in a file.
type keys struct {
	signing ed25519.PrivateKey
	noise   *ecdh.PrivateKey
}

// loadKeys returns the agent's keys. With path empty they are fresh and
// live in memory only, so a restarted agent registers with new keys.
// Otherwise the signing key is read from the PEM file at path, which is
// created (mode 0600) if missing; a file that holds no Ed25519 key is an
// error, not replaced. The Noise key is derived from the signing key, so
// that one secret in one file restores both.
func loadKeys(path string, log *slog.Logger) (*keys, error) {
	signing, err := keyfile.LoadOrCreate(keyfile.Options[ed25519.PrivateKey]{
		Path: path, Generate: newSigningKey, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("loading keys: %w", err)
	}
	return keysFrom(signing)
}

func newSigningKey() (ed25519.PrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating signing key: %w", err)
	}
	return k, nil
}

// keysFrom completes signing with its derived Noise key. HKDF under its
// own label keeps the two keys independent for every practical purpose.
func keysFrom(signing ed25519.PrivateKey) (*keys, error) {
	seed, err := hkdf.Key(sha256.New, signing.Seed(), nil, noiseKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("deriving noise key: %w", err)
	}

	noise, err := ecdh.X25519().NewPrivateKey(seed)
	if err != nil {
		return nil, fmt.Errorf("deriving noise key: %w", err)
	}
	return &keys{signing: signing, noise: noise}, nil
}

// public returns the public halves in the binding's form.
func (k *keys) public() attestbind.Keys {
	return attestbind.Keys{Signing: k.signing.Public().(ed25519.PublicKey),
		Noise: k.noise.PublicKey().Bytes()}
}

func (k *keys) signingB64() string {
	return base64.StdEncoding.EncodeToString(k.public().Signing)
}

func (k *keys) noiseB64() string {
	return base64.StdEncoding.EncodeToString(k.public().Noise)
}
