package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestKeyFileCreatedAndReloaded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "agent-key.pem")
	first, err := loadKeys(path, nil)
	if err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("key file not created: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("key file mode %o, want 600", mode)
	}

	again, err := loadKeys(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first.public(), again.public()); diff != "" {
		t.Errorf("reloaded keys differ (-first +again):\n%s", diff)
	}
	if !first.signing.Equal(again.signing) || !first.noise.Equal(again.noise) {
		t.Error("reloaded private keys differ")
	}
}

func TestKeysInMemoryWithoutPath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	a, err := loadKeys("", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadKeys("", nil)
	if err != nil {
		t.Fatal(err)
	}

	if cmp.Equal(a.public(), b.public()) {
		t.Error("two in-memory key sets are equal")
	}
	if cmp.Equal(a.public().Signing, a.public().Noise) {
		t.Error("the noise key equals the signing key")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("in-memory keys wrote %d files", len(entries))
	}
}

func TestKeyFileCorrupted(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}

	tests := map[string]struct {
		data string
		want string // in the error
	}{
		"empty":     {"", "no PEM block"},
		"garbage":   {"not a key\n", "no PEM block"},
		"truncated": {"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n", "no PEM block"},
		"bad DER": {string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY",
			Bytes: []byte("junk")})), "asn1"},
		"wrong key type": {string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY",
			Bytes: der})), "not ed25519.PrivateKey"},
		"not a private key": {string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE",
			Bytes: []byte{1}})), "not a private key"},
	}

	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent-key.pem")
			if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}

			_, err := loadKeys(path, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) ||
				!strings.Contains(err.Error(), path) {
				t.Errorf("loadKeys = %v, want an error naming %s and %q", err, path, tt.want)
			}

			// The file is left for the operator: replacing it would give
			// the agent a new identity without anyone noticing.
			if got, _ := os.ReadFile(path); string(got) != tt.data {
				t.Error("the corrupted key file was changed")
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{base: time.Second, max: time.Minute}
	tests := []struct {
		attempt int
		ceiling time.Duration
	}{
		{1, time.Second},
		{2, 2 * time.Second},
		{4, 8 * time.Second},
		{6, 32 * time.Second},
		{7, time.Minute},
		{1000, time.Minute},
	}

	for _, tt := range tests {
		for range 50 {
			if d := b.wait(tt.attempt); d < tt.ceiling/2 || d > tt.ceiling {
				t.Errorf("wait(%d) = %v, want within [%v, %v]", tt.attempt, d,
					tt.ceiling/2, tt.ceiling)
			}
		}
	}
}
