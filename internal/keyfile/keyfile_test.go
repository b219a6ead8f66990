package keyfile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func ecOptions(t testing.TB, path string) Options[*ecdsa.PrivateKey] {
	return Options[*ecdsa.PrivateKey]{
		Path: path,
		Generate: func() (*ecdsa.PrivateKey, error) {
			return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		},
		Check: func(k *ecdsa.PrivateKey) error {
			if k.Curve != elliptic.P256() {
				return errors.New("not P-256")
			}
			return nil
		},
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
}

func TestLoadOrCreate(t *testing.T) {
	// The directory does not exist yet: it is created along with the key.
	path := filepath.Join(t.TempDir(), "state", "key.pem")
	first, err := LoadOrCreate(ecOptions(t, path))
	if err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", fi.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".key.pem.*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}

	second, err := LoadOrCreate(ecOptions(t, path))
	if err != nil {
		t.Fatal(err)
	}
	if !first.Equal(second) {
		t.Error("the same key file gave another key")
	}

	// a key kept only in memory is a fresh one.
	mem, err := LoadOrCreate(ecOptions(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	if mem.Equal(first) {
		t.Error("an in-memory key reused the persisted one")
	}
}

// A file that exists but holds no usable key is refused and left alone.
func TestLoadOrCreateRefuses(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}

	tests := map[string][]byte{
		"garbage":    []byte("not a key"),
		"empty":      {},
		"public key": pemOf(t, "PUBLIC KEY", must(x509.MarshalPKIXPublicKey(&p384.PublicKey))),
		"bad DER":    pemOf(t, "PRIVATE KEY", []byte{0x30, 0x01}),
		"wrong type": pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)),
		"check":      pemOf(t, "PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(p384))),
	}

	for name, data := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key.pem")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}

			if _, err := LoadOrCreate(ecOptions(t, path)); err == nil {
				t.Error("LoadOrCreate accepted the file")
			}
			if got, _ := os.ReadFile(path); string(got) != string(data) {
				t.Error("the file was replaced")
			}
		})
	}
}

// An RSA key may come as PKCS #1, the form openssl genrsa writes.
func TestLoadPKCS1(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)),
		0o600); err != nil {
		t.Fatal(err)
	}

	got, err := LoadOrCreate(Options[*rsa.PrivateKey]{
		Path:     path,
		Generate: func() (*rsa.PrivateKey, error) { t.Fatal("generated a key"); return nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(key) {
		t.Error("loaded another key")
	}
}

func TestLoadOrCreateNoGenerator(t *testing.T) {
	if _, err := LoadOrCreate(Options[*rsa.PrivateKey]{}); err == nil {
		t.Error("LoadOrCreate without Generate succeeded")
	}
}

func pemOf(t *testing.T, typ string, der []byte) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
