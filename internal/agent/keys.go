package agent

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"github.com/devopsdefender/devopsdefender/internal/attestbind"
)

// keys are the agent's key pairs. The signing key signs the agent's
// requests to the control plane; the Noise static key identifies the
// terminal gateway. The agent's evidence commits to both public keys.
// They live in memory: a restarted agent registers again with new keys.
type keys struct {
	signing ed25519.PrivateKey
	noise   *ecdh.PrivateKey
}

func newKeys() (*keys, error) {
	_, signing, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating signing key: %w", err)
	}
	noise, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating noise key: %w", err)
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
