package server

import (
	"archive/tar"
	"compress/gzip"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// maxUnpacked bounds the bytes one tarball may unpack to.
const maxUnpacked = 16 << 30

// All file operations below go through an os.Root on the bin dir, so that
// no name, and no symlink met on the way, can lead outside it.

// writeTemp copies at most limit bytes of src into a new file named
// prefix.<random> and returns its name.
func writeTemp(root *os.Root, prefix string, src io.Reader, limit int64) (string, error) {
	var b [8]byte
	rand.Read(b[:])
	name := prefix + "." + hex.EncodeToString(b[:])
	f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}

	// one byte past the limit tells an oversized source from an exact fit
	n, err := io.Copy(f, io.LimitReader(src, limit+1))
	if err == nil && n > limit {
		err = fmt.Errorf("larger than %d bytes", limit)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		root.Remove(name)
		return "", err
	}

	return name, nil
}

// replaceFile writes src to name through a temporary file and a rename, so
// that a running binary is replaced rather than rewritten (no ETXTBSY) and
// nobody sees half a file.
func replaceFile(root *os.Root, name string, src io.Reader, perm fs.FileMode) error {
	tmp, err := writeTemp(root, tempName(name), src, maxUnpacked)
	if err != nil {
		return err
	}

	if err := root.Chmod(tmp, perm); err != nil {
		root.Remove(tmp)
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		root.Remove(tmp)
		return err
	}
	return nil
}

// tempName is a hidden sibling of name.
func tempName(name string) string {
	return path.Join(path.Dir(name), "."+path.Base(name)+".tmp")
}

// placePlain moves the downloaded file to bin/<asset> with mode 0755 and
// points bin/<rename>, when set, at it with a relative symlink
// (easyenclave.md §2.3 step 3).
func placePlain(root *os.Root, tmp string, rel workload.Release) error {
	if err := root.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := root.Rename(tmp, rel.Asset); err != nil {
		return err
	}

	if rel.Rename == "" || path.Clean(rel.Rename) == rel.Asset {
		return nil
	}
	link := path.Clean(rel.Rename)
	if err := ensureParent(root, link); err != nil {
		return err
	}
	target := strings.Repeat("../", strings.Count(link, "/")) + rel.Asset
	return replaceSymlink(root, target, link)
}

// chmodIfExists makes the primary path executable when the asset provides
// it; a tarball whose primary path is missing simply fails at spawn.
func chmodIfExists(root *os.Root, primary string) error {
	err := root.Chmod(primary, 0o755)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// unpackTarball extracts the gzip-compressed tar file tmp into the root,
// overwriting what is there. Entries with absolute names, "..", or links
// pointing out of the tree are refused, and the whole unpack fails.
func unpackTarball(root *os.Root, tmp string) error {
	f, err := root.Open(tmp)
	if err != nil {
		return err
	}
	defer f.Close()

	gz, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("reading gzip: %w", err)
	}
	defer gz.Close()

	tr := tar.NewReader(&limitedReader{r: gz, left: maxUnpacked})
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		if err := unpackEntry(root, h, tr); err != nil {
			return fmt.Errorf("tar entry %q: %w", h.Name, err)
		}
	}
}

func unpackEntry(root *os.Root, h *tar.Header, body io.Reader) error {
	name, err := entryName(h.Name)
	if err != nil || name == "." {
		return err
	}

	switch h.Typeflag {
	case tar.TypeDir:
		return root.MkdirAll(name, 0o755)
	case tar.TypeReg:
		if err := ensureParent(root, name); err != nil {
			return err
		}
		return replaceFile(root, name, body, h.FileInfo().Mode().Perm())
	case tar.TypeSymlink:
		if err := checkSymlink(name, h.Linkname); err != nil {
			return err
		}
		if err := ensureParent(root, name); err != nil {
			return err
		}
		return replaceSymlink(root, h.Linkname, name)
	case tar.TypeLink:
		target, err := entryName(h.Linkname)
		if err != nil {
			return err
		}
		if err := ensureParent(root, name); err != nil {
			return err
		}
		removeIfExists(root, name)
		return root.Link(target, name)
	default:
		return nil // devices, FIFOs and the like have no place in a bin dir
	}
}

// entryName cleans an archive name and refuses absolute names and "..".
func entryName(name string) (string, error) {
	if name == "" || path.IsAbs(name) || strings.ContainsRune(name, 0) {
		return "", errors.New("absolute or empty name")
	}

	for _, elem := range strings.Split(name, "/") {
		if elem == ".." {
			return "", errors.New(`name contains ".."`)
		}
	}
	return path.Clean(name), nil
}

// checkSymlink refuses a link whose target, read relative to the link's
// directory, leaves the tree.
func checkSymlink(name, target string) error {
	if target == "" || path.IsAbs(target) {
		return fmt.Errorf("symlink to %q leaves the tree", target)
	}

	resolved := path.Join(path.Dir(name), target)
	if resolved == ".." || strings.HasPrefix(resolved, "../") {
		return fmt.Errorf("symlink to %q leaves the tree", target)
	}
	return nil
}

func replaceSymlink(root *os.Root, target, link string) error {
	removeIfExists(root, link)
	return root.Symlink(target, link)
}

// removeIfExists removes a file or symlink; a directory in the way makes
// the following create fail with a clear error instead.
func removeIfExists(root *os.Root, name string) {
	root.Remove(name)
}

func ensureParent(root *os.Root, name string) error {
	if dir := path.Dir(name); dir != "." {
		return root.MkdirAll(dir, 0o755)
	}
	return nil
}

// limitedReader fails, rather than ends quietly, once more than left bytes
// were read, so a decompression bomb aborts the unpack.
type limitedReader struct {
	r    io.Reader
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, fmt.Errorf("unpacked size exceeds %d bytes", int64(maxUnpacked))
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}

	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}
