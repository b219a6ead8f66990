package tdx

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
)

// fakeTSM is a configfs-tsm report subsystem whose outblob is whatever
// quote returns for the written inblob.
func fakeTSM(provider string, quote func(rd [64]byte) []byte) configfsi.Client {
	sub := faketsm.ReportV7(0)
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(provider + "\n"), nil
		case "outblob":
			var rd [64]byte
			copy(rd[:], e.InAttrs["inblob"].Value)
			return quote(rd), nil
		}

		return nil, os.ErrNotExist
	}

	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}
}

func TestConfigFSProvider(t *testing.T) {
	sim := newTestSimulator(t, SimulatorOptions{})
	honest := func(rd [64]byte) []byte { return simQuote(t, sim, rd) }
	tests := []struct {
		name     string
		provider string
		quote    func(rd [64]byte) []byte
		wantErr  bool
	}{
		{"TDX guest", "tdx_guest", honest, false},
		{"SEV-SNP guest", "sev_guest", honest, true},
		{"not a quote", "tdx_guest", func([64]byte) []byte { return []byte("privlevel: 0") }, true},
		{"other report data", "tdx_guest", func([64]byte) []byte {
			return simQuote(t, sim, ReportData{})
		}, true},
	}

	rd := [64]byte{0: 0xdd, 63: 1}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &configFSProvider{client: fakeTSM(tc.provider, tc.quote)}
			q, err := p.Quote(context.Background(), rd)
			if tc.wantErr {
				if err == nil {
					t.Fatal("Quote succeeded")
				}
				t.Logf("rejected: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Quote: %v", err)
			}

			opts := VerifyOptions{Roots: poolOf(sim.Root()), Now: at(simTime)}
			res, err := Verify(context.Background(), q, opts)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}

			if res.Measurements.ReportData != rd {
				t.Errorf("ReportData = %x, want %x", res.Measurements.ReportData, rd)
			}
			if p.Type() != TypeTDX {
				t.Errorf("Type = %q, want %q", p.Type(), TypeTDX)
			}
		})
	}
}

func TestDetectProviderWithoutTDX(t *testing.T) {
	if _, err := os.Stat(tsmReportDir); err == nil {
		t.Skip("this machine has configfs-tsm")
	}
	if _, err := DetectProvider(); !errors.Is(err, ErrNoTDX) {
		t.Errorf("DetectProvider error = %v, want ErrNoTDX", err)
	}
}
