// Package attestbind defines how an agent's attestation evidence is bound
// to one registration: the 64-byte TDX report_data commits to a fresh,
// single-use nonce from the control plane and to the agent's public keys,
// and the request that carries the evidence is signed with the agent's
// signing key.
//
// The layout of report_data (64 bytes, the size of SHA-512):
//
//	report_data = SHA-512( "devopsdefender/attest/v1" || 0x00
//	                       || purpose || 0x00
//	                       || nonce (32 bytes)
//	                       || signing key (32 bytes, Ed25519)
//	                       || noise key (32 bytes, X25519) )
//
// purpose is "register" or "reattest", so evidence for one purpose cannot
// be used for the other. A verifier recomputes the value from the nonce it
// issued and the keys in the request and compares it with the quote's
// report_data; the quote's signature proves a TD produced it, the nonce
// proves it is fresh, and the request signature proves the sender holds
// the signing key the TD vouched for. A client of the Noise gateway checks
// the same binding for the noise key before its handshake.
package attestbind

import (
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
)

// Sizes of the bound values.
const (
	NonceSize = 32
	KeySize   = 32
)

// Purposes of a binding.
const (
	PurposeRegister = "register"
	PurposeReattest = "reattest"
)

const domain = "devopsdefender/attest/v1"

// SignatureHeader carries the base64 Ed25519 signature of a request body.
const SignatureHeader = "X-DD-Signature"

// Keys are an agent's public keys.
type Keys struct {
	Signing ed25519.PublicKey
	Noise   []byte
}

// ReportData returns the report_data that binds purpose, nonce and keys.
func ReportData(purpose string, nonce []byte, k Keys) ([64]byte, error) {
	if purpose != PurposeRegister && purpose != PurposeReattest {
		return [64]byte{}, fmt.Errorf("attestbind: unknown purpose %q", purpose)
	}
	if len(nonce) != NonceSize {
		return [64]byte{}, fmt.Errorf("attestbind: nonce is %d bytes, want %d", len(nonce), NonceSize)
	}
	if len(k.Signing) != ed25519.PublicKeySize || len(k.Noise) != KeySize {
		return [64]byte{}, errors.New("attestbind: keys must be 32-byte Ed25519 and X25519 keys")
	}

	h := sha512.New()
	h.Write([]byte(domain))
	h.Write([]byte{0})
	h.Write([]byte(purpose))
	h.Write([]byte{0})
	h.Write(nonce)
	h.Write(k.Signing)
	h.Write(k.Noise)

	var out [64]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}

// Sign returns the SignatureHeader value for body.
func Sign(priv ed25519.PrivateKey, body []byte) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(priv, body))
}

// VerifySignature checks a SignatureHeader value over body.
func VerifySignature(pub ed25519.PublicKey, body []byte, sig string) error {
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return errors.New("attestbind: malformed request signature")
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, body, raw) {
		return errors.New("attestbind: request signature does not verify")
	}

	return nil
}

// DecodeKeys decodes standard-base64 public keys as sent on the wire.
func DecodeKeys(signing, noise string) (Keys, error) {
	s, err := base64.StdEncoding.DecodeString(signing)
	if err != nil || len(s) != ed25519.PublicKeySize {
		return Keys{}, errors.New("attestbind: signing_key must be a base64 Ed25519 public key")
	}
	n, err := base64.StdEncoding.DecodeString(noise)
	if err != nil || len(n) != KeySize {
		return Keys{}, errors.New("attestbind: noise_key must be a base64 X25519 public key")
	}

	return Keys{Signing: ed25519.PublicKey(s), Noise: n}, nil
}
