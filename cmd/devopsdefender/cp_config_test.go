package main

import (
	"bytes"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/fleetenv"
	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
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
	t.Setenv("DD_ADMIN_TOKEN", strings.Repeat("x", 40))
	t.Setenv("DD_COLLATERAL", "")
	base := []string{"cp", "--env", "production", "--domain", "example.com",
		"--hostname", "app.example.com", "--db", t.TempDir() + "/r.db",
		"--listen", "127.0.0.1:0"}
	tests := []struct {
		name   string
		policy bool
		extra  []string
		want   string
	}{
		{"unverified attestation", true, []string{"--attestation", "none"}, "unverified"},
		{"no collateral", true, []string{"--collateral", "none"}, "collateral"},
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

// TestAdminTokenIsNotAFlag: a secret on the command line shows in the
// process list, so the admin token comes from DD_ADMIN_TOKEN only.
func TestAdminTokenIsNotAFlag(t *testing.T) {
	var out, errOut strings.Builder
	code := run(t.Context(), []string{"cp", "--admin-token", strings.Repeat("x", 40)}, "",
		&out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "flag provided but not defined") {
		t.Errorf("cp --admin-token: exit %d, stderr %q; want a usage error", code, errOut.String())
	}
	if strings.Contains(errOut.String(), "\n  -admin-token") {
		t.Error("cp's flag list still has -admin-token")
	}
}

func TestNewCollateral(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	client := &http.Client{}
	tests := []struct {
		name    string
		env     fleetenv.Env
		spec    string
		want    tdx.CollateralGetter
		wantErr string
	}{
		{"production default", fleetenv.Production, "", tdx.PCS{Client: client}, ""},
		{"staging default", fleetenv.Staging, "", tdx.PCS{Client: client}, ""},
		{"dev default", fleetenv.Dev, "", nil, ""},
		{"preview default", "pr-1", "", nil, ""},
		{"production without", fleetenv.Production, "none", nil, "refused in production"},
		{"staging without", fleetenv.Staging, "none", nil, "refused in staging"},
		{"dev without", fleetenv.Dev, "none", nil, ""},
		{"dev from Intel", fleetenv.Dev, "pcs", tdx.PCS{Client: client}, ""},
		{"production offline", fleetenv.Production, dir, tdx.CollateralDir(dir), ""},
		{"missing directory", fleetenv.Production, filepath.Join(dir, "nope"), nil,
			"directory"},
		{"a file", fleetenv.Dev, file, nil, "directory"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := newCollateral(tt.env, tt.spec, client)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("newCollateral = %v, %v; want an error naming %q", got, err,
						tt.wantErr)
				}
				return
			}

			if err != nil || got != tt.want {
				t.Errorf("newCollateral = %#v, %v; want %#v", got, err, tt.want)
			}
		})
	}
}

// TestDirectAppraisalChecksTCB appraises the real quote of internal/tdx's
// testdata the way a production control plane does. Without collateral it
// verifies but carries no TCB level, so an enforced policy refuses every
// hardware TD; with collateral, offline or fetched from "Intel" through the
// injected client, the TCB is appraised. This sample has no matching TCB
// level in its collateral (go-tdx-guest's own
// TestNegativeRawQuoteVerifyWithCollateral), and go-tdx-guest reports that
// only as text, hence the substring.
func TestDirectAppraisalChecksTCB(t *testing.T) {
	const (
		quoteFile     = "../../internal/tdx/testdata/tdx_prod_quote_SPR_E4.dat"
		collateralDir = "../../internal/tdx/testdata/collateral"
		noTCBLevel    = "no matching TCB level found"
	)

	raw, err := os.ReadFile(quoteFile)
	if err != nil {
		t.Fatal(err)
	}
	m, err := tdx.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}

	ev := ita.Evidence{Quote: raw, ReportData: m.ReportData}
	// The collateral was current in July 2023.
	at := func() time.Time { return time.Date(2023, time.July, 1, 0, 0, 0, 0, time.UTC) }
	t.Setenv("DD_POLICY_MRTD", hex.EncodeToString(m.MRTD))
	pol, err := newPolicy(fleetenv.Production, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	intel := &http.Client{Transport: pcsFromDir(collateralDir)}

	tests := []struct {
		name string
		env  fleetenv.Env
		spec string
		want string // in the appraisal's or else the policy's error
	}{
		{"without collateral", fleetenv.Dev, "none", "tcb_status"},
		{"offline collateral", fleetenv.Production, collateralDir, noTCBLevel},
		{"collateral from Intel PCS", fleetenv.Production, "pcs", noTCBLevel},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := newAppraiser(t.Context(), tt.env, appraiserConfig{mode: "direct",
				collateral: tt.spec, client: intel, now: at}, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}

			got, err := a.Appraise(t.Context(), ev)
			if err == nil {
				err = pol.Check(&got.Measurements, got.TCB)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("appraisal and policy: %v; want an error naming %q", err, tt.want)
			}
		})
	}
}

// pcsFromDir answers Intel PCS requests from saved responses, as Intel
// would send them.
type pcsFromDir tdx.CollateralDir

func (d pcsFromDir) RoundTrip(r *http.Request) (*http.Response, error) {
	header, body, err := tdx.CollateralDir(d).Get(r.Context(), r.URL.String())
	if err != nil {
		return &http.Response{StatusCode: http.StatusNotFound, Body: http.NoBody,
			Request: r}, nil
	}
	return &http.Response{StatusCode: http.StatusOK, Header: header,
		Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
}
