// Package keyfile keeps a signing key in a PEM file, so that what was
// signed with it, and what others cached of its public half, stays valid
// across restarts. The local token issuers of dev mode and the agent's
// identity (agent --key-file) use it.
//
// The file is created with mode 0600 by writing a temporary file, syncing
// it and renaming it into place, so a crash never leaves a truncated key.
// A file that exists but holds no usable key is an error and is left
// alone: replacing it would silently invalidate every token and cache that
// depends on the old key.
package keyfile

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// Options configure [LoadOrCreate] for keys of type K, such as
// *rsa.PrivateKey or *ecdsa.PrivateKey.
type Options[K crypto.Signer] struct {
	// Path is the PEM file. Empty means a fresh key in memory, written
	// nowhere.
	Path string

	// Generate makes a new key when Path is empty or names no file.
	// Required.
	Generate func() (K, error)

	// Check, if set, vets a key read from the file beyond its type (size,
	// curve); an error refuses the file.
	Check func(K) error

	// Logger receives a record when a key is created and a warning when
	// the file is readable by others. Nil discards.
	Logger *slog.Logger
}

// LoadOrCreate returns the key in the file at opts.Path, or generates one
// and writes it there if no file exists. The file holds a PKCS #8 "PRIVATE
// KEY" block; an RSA key may also be a PKCS #1 "RSA PRIVATE KEY", as
// openssl genrsa writes it.
func LoadOrCreate[K crypto.Signer](opts Options[K]) (K, error) {
	var zero K
	if opts.Generate == nil {
		return zero, errors.New("keyfile: no key generator")
	}

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if opts.Path == "" {
		return opts.Generate()
	}

	// a missing file is the first start: make the key and keep it.
	data, err := os.ReadFile(opts.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return create(opts, log)
	}
	if err != nil {
		return zero, err
	}

	if fi, err := os.Stat(opts.Path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("signing key file readable by others", "path", opts.Path, "mode", fi.Mode().Perm())
	}

	key, err := parse(data, opts.Check)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", opts.Path, err)
	}
	return key, nil
}

func parse[K crypto.Signer](data []byte, check func(K) error) (K, error) {
	var zero K
	block, _ := pem.Decode(data)
	if block == nil {
		return zero, errors.New("no PEM block")
	}

	var parsed any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return zero, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return zero, err
	}

	key, ok := parsed.(K)
	if !ok {
		return zero, fmt.Errorf("key is %T, not %T", parsed, zero)
	}

	if check != nil {
		if err := check(key); err != nil {
			return zero, err
		}
	}
	return key, nil
}

// create generates a key and writes it to opts.Path.
func create[K crypto.Signer](opts Options[K], log *slog.Logger) (K, error) {
	var zero K
	key, err := opts.Generate()
	if err != nil {
		return zero, err
	}

	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return zero, err
	}

	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := writeFileAtomic(opts.Path, data); err != nil {
		return zero, err
	}
	log.Info("signing key created", "path", opts.Path)
	return key, nil
}

// writeFileAtomic writes data to path with mode 0600 through a temporary
// file in the same directory, synced before the rename, so path holds
// either nothing or all of data. Missing directories are made 0700.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}

	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()

	// CreateTemp makes the file 0600; say so in case that ever changes.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}

	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}

	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
