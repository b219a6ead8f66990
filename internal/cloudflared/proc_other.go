//go:build !unix

package cloudflared

import "os/exec"

// prepare keeps exec's default: the process is killed when stopped.
func prepare(cmd *exec.Cmd) {}
