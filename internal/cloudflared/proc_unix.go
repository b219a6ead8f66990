//go:build unix

package cloudflared

import (
	"os/exec"
	"syscall"
)

// prepare puts the process in its own process group and makes stopping
// it send SIGTERM to the whole group, so that cloudflared shuts down
// gracefully and nothing it started outlives it.
func prepare(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
}
