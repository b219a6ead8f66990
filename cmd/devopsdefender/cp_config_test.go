package main

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
)

func TestNewPolicy(t *testing.T) {
	mrtd := strings.Repeat("ab", 48)
	tests := []struct {
		name    string
		env     fleetenv.Env
		vars    map[string]string
		wantErr bool
		wantNil bool
	}{
		{"preview without policy", "pr-1", nil, false, true},
		{"production without policy", fleetenv.Production, nil, true, false},
		{"staging in observe mode", fleetenv.Staging,
			map[string]string{"DD_POLICY_MRTD": mrtd, "DD_POLICY_MODE": "observe"}, true, false},
		{"production pinned", fleetenv.Production, map[string]string{"DD_POLICY_MRTD": mrtd},
			false, false},
		{"preview with a bad policy", "pr-1", map[string]string{"DD_POLICY_MRTD": "zz"},
			true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.vars {
				t.Setenv(k, v)
			}
			p, err := newPolicy(tt.env, slog.New(slog.DiscardHandler))
			if (err != nil) != tt.wantErr || (err == nil && (p == nil) != tt.wantNil) {
				t.Errorf("newPolicy = %v, %v; want error %v, nil policy %v", p, err,
					tt.wantErr, tt.wantNil)
			}
		})
	}
}

func TestProtectedControlPlaneRefusesStandIns(t *testing.T) {
	t.Setenv("CLOUDFLARE_API_TOKEN", "t")
	t.Setenv("CLOUDFLARE_ACCOUNT_ID", "a")
	t.Setenv("CLOUDFLARE_ZONE_ID", "z")
	base := []string{"cp", "--env", "production", "--domain", "example.com",
		"--hostname", "app.example.com", "--db", t.TempDir() + "/r.db",
		"--admin-token", strings.Repeat("x", 40), "--listen", "127.0.0.1:0"}
	tests := []struct {
		name   string
		policy bool
		extra  []string
		want   string
	}{
		{"unverified attestation", true, []string{"--attestation", "none"}, "unverified"},
		{"no policy", false, []string{"--owner", "acme", "--owner-id", "7"}, "policy"},
		{"no owner", true, nil, "--owner"},
		{"local OIDC issuer", true, []string{"--owner", "acme", "--owner-id", "7",
			"--oidc-issuer", "http://127.0.0.1:1"}, "OIDC issuer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.policy {
				t.Setenv("DD_POLICY_MRTD", strings.Repeat("ab", 48))
			}
			var out, errOut strings.Builder
			code := run(t.Context(), append(append([]string{}, base...), tt.extra...), "",
				&out, &errOut)
			if code == 0 || !strings.Contains(errOut.String(), tt.want) {
				t.Errorf("exit %d, stderr %q; want a refusal naming %q", code, errOut.String(),
					tt.want)
			}
		})
	}
}
