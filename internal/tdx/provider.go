package tdx

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
)

// Provider produces TDX quotes over caller-chosen report data.
type Provider interface {
	// Quote returns a quote whose TD quote body carries reportData.
	Quote(ctx context.Context, reportData [64]byte) ([]byte, error)
	// Type names the evidence: [TypeTDX] for hardware quotes,
	// [TypeSimulated] for a [Simulator].
	Type() string
}

var (
	_ Provider = (*Simulator)(nil)
	_ Provider = (*configFSProvider)(nil)
)

// TypeTDX is the [Provider.Type] of hardware TDX quotes.
const TypeTDX = "tdx"

// tsmReportDir is where Linux (6.7 and later) exposes configfs-tsm reports.
const tsmReportDir = "/sys/kernel/config/tsm/report"

// tdxGuestProvider is the configfs-tsm "provider" attribute of a TDX guest.
const tdxGuestProvider = "tdx_guest"

// ErrNoTDX reports that this machine offers no TDX quote interface.
var ErrNoTDX = errors.New("tdx: no configfs-tsm report interface (" + tsmReportDir + ")")

// DetectProvider returns the hardware provider when the kernel exposes
// configfs-tsm reports, and [ErrNoTDX] otherwise. It never falls back to a
// [Simulator]: choosing simulated evidence is the caller's explicit decision.
func DetectProvider() (Provider, error) {
	if _, err := os.Stat(tsmReportDir); errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoTDX
	} else if err != nil {
		return nil, fmt.Errorf("probing configfs-tsm: %w", err)
	}

	client, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, fmt.Errorf("opening configfs-tsm: %w", err)
	}
	return &configFSProvider{client: client}, nil
}

// configFSProvider asks the kernel for a quote through configfs-tsm: each
// call creates its own report entry, writes the report data to inblob,
// reads outblob and removes the entry, so concurrent calls do not mix.
type configFSProvider struct {
	client configfsi.Client
}

func (p *configFSProvider) Type() string { return TypeTDX }

func (p *configFSProvider) Quote(ctx context.Context, reportData [64]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	resp, err := report.Get(p.client, &report.Request{InBlob: reportData[:]})
	if err != nil {
		return nil, fmt.Errorf("getting configfs-tsm report: %w", err)
	}
	if got := strings.TrimSpace(resp.Provider); got != tdxGuestProvider {
		return nil, fmt.Errorf("tdx: configfs-tsm provider is %q, not %q", got, tdxGuestProvider)
	}

	// Check what the kernel returned before anyone relies on it: a quote
	// over other report data would fail verification far from its cause.
	m, err := Parse(resp.OutBlob)
	if err != nil {
		return nil, fmt.Errorf("reading configfs-tsm quote: %w", err)
	}
	if m.ReportData != reportData {
		return nil, errors.New("tdx: configfs-tsm quote carries other report data")
	}

	return resp.OutBlob, nil
}
