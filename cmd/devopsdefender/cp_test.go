package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/cloudflared"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/ingress/cloudflare/cftest"
)

// lockedBuffer is a log sink safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func setCloudflareEnv(t *testing.T, token, account, zone, base string) {
	t.Helper()
	for k, v := range map[string]string{"CLOUDFLARE_API_TOKEN": token,
		"CLOUDFLARE_ACCOUNT_ID": account, "CLOUDFLARE_ZONE_ID": zone, "DD_CF_API_BASE": base,
		"DD_CF_API_TOKEN": "", "DD_CF_ACCOUNT_ID": "", "DD_CF_ZONE_ID": "", "DD_INGRESS": ""} {
		t.Setenv(k, v)
	}
}

func TestCPIngressConfiguration(t *testing.T) {
	setCloudflareEnv(t, "", "", "", "")
	t.Setenv("DD_ADMIN_TOKEN", strings.Repeat("a", 40))
	base := []string{"cp", "--env", "pr-1", "--hostname", "pr-1.example.com",
		"--domain", "example.com",
		"--db", filepath.Join(t.TempDir(), "r.db"), "--attestation", "none"}
	tests := []struct {
		name  string
		extra []string
		want  int
		say   string
	}{
		{"no credentials", nil, 1, "CLOUDFLARE_API_TOKEN"},
		{"unknown provider", []string{"--ingress", "direct"}, 2, "cloudflare"},
	}

	for _, tt := range tests {
		var out, errOut bytes.Buffer
		args := append(append([]string{}, base...), tt.extra...)
		if got := run(context.Background(), args, "", &out, &errOut); got != tt.want ||
			!strings.Contains(errOut.String(), tt.say) {
			t.Errorf("%s: exit %d, want %d mentioning %q; stderr:\n%s", tt.name, got, tt.want,
				tt.say, errOut.String())
		}
	}
}

// TestCPPublishesItselfOnCloudflare runs cp mode against the fake
// Cloudflare API with a stand-in cloudflared: the control plane creates
// its tunnel and record, runs cloudflared with the token in its
// environment only, and reports the connector on /health; neither token
// is logged.
func TestCPPublishesItselfOnCloudflare(t *testing.T) {
	api := cftest.New(t, cftest.Options{Token: "cf-api-secret-0123456789"})
	setCloudflareEnv(t, "cf-api-secret-0123456789", api.AccountID(), api.ZoneID(), api.URL())
	dir := t.TempDir()
	seen := filepath.Join(dir, "cloudflared.seen")
	bin := filepath.Join(dir, "cloudflared")
	script := "#!/bin/sh\necho \"args: $*\" > " + seen + "\necho \"token: $TUNNEL_TOKEN\" >> " +
		seen + "\nexec sleep 600\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}

	port := freeTCPPort(t)
	t.Setenv("DD_ADMIN_TOKEN", strings.Repeat("a", 40))

	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"cp", "--env", "pr-1", "--listen", "127.0.0.1:" + port,
			"--db", filepath.Join(dir, "cp", "registry.db"), "--hostname", "pr-1.example.com",
			"--domain", "example.com", "--attestation", "none", "--cloudflared", bin},
			"", &stdout, &stderr)
	}()

	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("cp exited %d; stderr:\n%s", code, stderr.String())
		}
	}()

	var h cpapi.Health
	deadline := time.Now().Add(20 * time.Second)
	for h.Ingress == nil || h.Ingress.Connector == nil ||
		h.Ingress.Connector.State != cloudflared.StateRunning {
		if time.Now().After(deadline) {
			t.Fatalf("the connector did not run; health %+v; stderr:\n%s", h, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
		h = cpapi.Health{}
		if resp, err := http.Get("http://127.0.0.1:" + port + "/health"); err == nil {
			json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
		}
	}

	tun, ok := api.Tunnel(h.Ingress.TunnelID)
	if !ok || !strings.HasPrefix(tun.Name, "dd-pr-1-cp-") ||
		!strings.Contains(string(tun.Config), "pr-1.example.com") {
		t.Errorf("tunnel %+v, want the control plane's with its hostname", tun)
	}

	if rec, ok := api.RecordByName("pr-1.example.com"); !ok ||
		rec.Content != tun.ID+".cfargotunnel.com" {
		t.Errorf("record %+v, want a CNAME to the tunnel", rec)
	}

	var got []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if got, _ = os.ReadFile(seen); bytes.Contains(got, []byte("token: ")) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	if len(lines) != 2 || lines[0] != "args: tunnel --no-autoupdate run" ||
		len(lines[1]) <= len("token: ") {
		t.Fatalf("cloudflared saw %q, want the token in its environment only", got)
	}

	token := strings.TrimPrefix(lines[1], "token: ")
	for _, secret := range []string{token, "cf-api-secret-0123456789"} {
		if strings.Contains(stderr.String()+stdout.String(), secret) {
			t.Errorf("a secret was logged: %q", secret)
		}
	}
}

func freeTCPPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
