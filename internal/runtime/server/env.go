package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// defaultPath is EasyEnclave's PATH baseline as PID 1 (easyenclave.md §2.5).
const defaultPath = "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"

// runtimeSecrets are the runtime's own configuration and credentials. They
// never reach a workload, exec or attach through the inherited environment;
// EasyEnclave hands them to every workload (easyenclave.md §2.5).
var runtimeSecrets = []string{"EE_TOKEN", "EE_TOKEN_FIXED", "EE_GITHUB_TOKEN", "EE_BOOT_WORKLOADS"}

// workloadBaseEnv is the environment every workload starts from: the
// runtime's own minus its secrets, with binDir first on PATH and the socket
// and data dir exported (easyenclave.md §7.1, §7.3).
func workloadBaseEnv(env []string, binDir, socket, dataDir string) []string {
	kept := make([]string, 0, len(env)+3)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !isSecret(k) {
			kept = append(kept, kv)
		}
	}

	path, ok := envValue(kept, "PATH")
	if !ok || path == "" {
		path = defaultPath
	}

	return mergeEnv(kept, []string{
		"PATH=" + binDir + string(filepath.ListSeparator) + path,
		"EE_SOCKET_PATH=" + socket,
		"EE_DATA_DIR=" + dataDir,
	})
}

func isSecret(key string) bool {
	for _, s := range runtimeSecrets {
		if key == s {
			return true
		}
	}
	return false
}

// mergeEnv layers "KEY=VALUE" entries over base: each entry is split at its
// first "=", entries without one are dropped, and the last value of a key
// wins while the key keeps its first position (easyenclave.md §2.1).
func mergeEnv(base []string, layers ...[]string) []string {
	index := map[string]int{}
	out := make([]string, 0, len(base))
	add := func(kv string) {
		k, _, ok := strings.Cut(kv, "=")
		if !ok {
			return
		}
		if i, seen := index[k]; seen {
			out[i] = kv
			return
		}
		index[k] = len(out)
		out = append(out, kv)
	}

	for _, kv := range base {
		add(kv)
	}
	for _, layer := range layers {
		for _, kv := range layer {
			add(kv)
		}
	}

	return out
}

// envValue returns the last value of key in env.
func envValue(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// rewritePrefix replaces the literal /var/lib/easyenclave at the start of a
// path component with dataDir (easyenclave.md §7.5 option b). A match must
// end the string or be followed by a byte that cannot continue a directory
// name, so /var/lib/easyenclave2 is left alone.
func rewritePrefix(s, dataDir string) string {
	if !strings.Contains(s, EEDataDir) {
		return s
	}

	var b strings.Builder
	for {
		i := strings.Index(s, EEDataDir)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}

		end := i + len(EEDataDir)
		b.WriteString(s[:i])
		if end == len(s) || !isNameByte(s[end]) {
			b.WriteString(dataDir)
		} else {
			b.WriteString(EEDataDir)
		}
		s = s[end:]
	}
}

func isNameByte(c byte) bool {
	return c == '.' || c == '_' || c == '-' ||
		('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

// rewriteAll applies the prefix rewrite to every string when it is on.
func (s *Server) rewriteAll(in []string) []string {
	if !s.rewrite || len(in) == 0 {
		return in
	}

	out := make([]string, len(in))
	for i, v := range in {
		out[i] = rewritePrefix(v, s.opts.DataDir)
	}
	return out
}

// rewriteSpec rewrites cmd and env of a copy of spec.
func (s *Server) rewriteSpec(spec workload.Spec) workload.Spec {
	spec.Cmd = s.rewriteAll(spec.Cmd)
	spec.Env = s.rewriteAll(spec.Env)
	return spec
}

// linkHostTools symlinks each named host program into binDir, so that specs
// written for EasyEnclave's busybox find one on a laptop. A bare name is
// looked up on the PATH of env. An existing regular file, such as a fetched
// asset, is left in place.
func linkHostTools(binDir string, tools, env []string) error {
	hostPath, _ := envValue(env, "PATH")
	for _, tool := range tools {
		target, err := lookPath(tool, []string{"PATH=" + hostPath})
		if err != nil {
			return fmt.Errorf("server: host tool %s: %w", tool, err)
		}
		if target, err = filepath.Abs(target); err != nil {
			return fmt.Errorf("server: host tool %s: %w", tool, err)
		}
		if err := linkTool(filepath.Join(binDir, filepath.Base(tool)), target); err != nil {
			return fmt.Errorf("server: host tool %s: %w", tool, err)
		}
	}

	return nil
}

func linkTool(link, target string) error {
	fi, err := os.Lstat(link)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	case fi.Mode()&os.ModeSymlink == 0:
		return nil
	default:
		if err := os.Remove(link); err != nil {
			return err
		}
	}

	if _, err := os.Stat(target); err != nil {
		return err
	}
	return os.Symlink(target, link)
}
