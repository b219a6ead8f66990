package tdx

import (
	"context"
	"crypto/x509"
	_ "embed"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify"
)

// intelRootPEM is Intel's SGX Root CA ("Intel SGX Root CA", valid until
// 2049-12-31, SHA-256 fingerprint 44:A0:19:6B:2B:99:F8:89:B8:E1:49:E9:5B:80:
// 7A:35:0E:74:24:96:43:99:E8:85:A7:CB:B8:CC:FA:B6:74:D3), as Intel publishes
// it at certificates.trustedservices.intel.com and go-tdx-guest embeds it.
//
//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

// ErrCollateralUnavailable reports that Intel PCS collateral could not be
// fetched, as opposed to collateral that was fetched and failed its checks.
// Callers may retry later; the quote itself was not judged.
var ErrCollateralUnavailable = errors.New("tdx: collateral unavailable")

// intelRoots parses the embedded root once.
var intelRoots = sync.OnceValue(func() *x509.CertPool {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(intelRootPEM) {
		panic("tdx: embedded Intel SGX Root CA does not parse")
	}
	return pool
})

// IntelRoots returns a pool holding only Intel's SGX Root CA, the default
// trust anchor of [Verify].
func IntelRoots() *x509.CertPool { return intelRoots().Clone() }

// VerifyOptions configure [Verify]. The zero value verifies against Intel's
// root at the current time without collateral.
type VerifyOptions struct {
	// Roots are the CAs a quote's PCK chain must lead to. Nil means Intel's
	// SGX Root CA. A simulated TD's root comes from [Simulator.Root]; it
	// MUST NOT be trusted where real TDX evidence is required.
	Roots *x509.CertPool

	// Now is the time at which certificates, CRLs and collateral must be
	// valid. Nil means time.Now; pin it to re-check recorded evidence.
	Now func() time.Time

	// Collateral, when non-nil, supplies Intel PCS collateral (TCB info, QE
	// identity, PCK and root CRLs). The platform's TCB level and the QE are
	// then appraised and the PCK chain checked for revocation. Nil checks
	// the signatures and the chain only.
	Collateral CollateralGetter
}

// Result is a verified quote.
type Result struct {
	Measurements Measurements `json:"measurements"`
	// FMSPC identifies the platform family, from the PCK certificate.
	FMSPC string `json:"fmspc"`
	// VerifiedAt is the time the certificates were checked against.
	VerifiedAt time.Time `json:"verified_at"`
	// TCB is the platform's appraised TCB level; nil without collateral.
	TCB *TCB `json:"tcb,omitempty"`
}

// TCB is the TCB level of Intel's TCB info that matches a quote's platform
// (Intel's "TDX TCB status" algorithm: the PCK certificate's SGX component
// SVNs and PCESVN, and the TD report's TEE_TCB_SVN).
type TCB struct {
	// Status is Intel's verdict for this level, e.g. "UpToDate".
	Status string `json:"status"`
	// Date is the level's TCB date: patches released after it are missing.
	Date time.Time `json:"date"`
	// EvaluationDataNumber numbers the TCB recovery event of the TCB info.
	EvaluationDataNumber int      `json:"evaluation_data_number"`
	AdvisoryIDs          []string `json:"advisory_ids,omitempty"`
}

// Verify checks a TDX quote and returns its measurements: the quote's
// structure; the PCK chain up to opts.Roots at opts.Now; with collateral,
// the signed TCB info and QE identity and the CRLs; the QE report's
// signature by the PCK key and that the QE report binds the attestation
// key; the quote's signature by that key over the header and TD quote body;
// and, with collateral, the platform's TCB level and the QE's identity.
//
// With collateral, go-tdx-guest (v0.3.1) accepts only TCB status
// "UpToDate". Verify does not judge the measurements: comparing MRTD, RTMRs,
// report data and Debug against a policy is the caller's job.
func Verify(ctx context.Context, raw []byte, opts VerifyOptions) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// structure first: it is cheap, and it keeps abi from slicing out of range
	q, err := parseQuote(raw)
	if err != nil {
		return nil, err
	}

	at := time.Now()
	if opts.Now != nil {
		at = opts.Now()
	}

	// signatures, certificates and, with collateral, TCB info, QE identity and revocation
	fetched := &boundGetter{ctx: ctx, g: opts.Collateral, bodies: map[string][]byte{}}
	if err := verifyQuote(raw, at, opts, fetched); err != nil {
		return nil, err
	}

	ext, err := pckExtensions(q.pckChain)
	if err != nil {
		return nil, err
	}

	res := &Result{Measurements: *q.measurements(), FMSPC: ext.FMSPC, VerifiedAt: at}
	// the TCB level comes from the same TCB info the verifier checked
	if opts.Collateral != nil {
		tcbInfo := fetched.bodies[pcs.TcbInfoURL(ext.FMSPC)]
		if res.TCB, err = matchTCBLevel(tcbInfo, ext, res.Measurements.TEETCBSVN); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// verifyQuote runs go-tdx-guest's verifier, fetching collateral through
// getter. raw must have passed parseQuote, which keeps abi from slicing out
// of range.
func verifyQuote(raw []byte, at time.Time, opts VerifyOptions, getter *boundGetter) error {
	pq, err := abi.QuoteToProto(raw)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}

	roots := opts.Roots
	if roots == nil {
		// Always pass roots: go-tdx-guest logs a warning to stdout otherwise.
		roots = intelRoots()
	}

	vopts := &verify.Options{
		TrustedRoots:     roots,
		Now:              at,
		GetCollateral:    opts.Collateral != nil,
		CheckRevocations: opts.Collateral != nil,
		Getter:           getter,
	}

	if err := verify.TdxQuote(pq, vopts); err != nil {
		if getter.err != nil {
			return fmt.Errorf("%w: %w", ErrCollateralUnavailable, getter.err)
		}
		return fmt.Errorf("tdx: verifying quote: %w", err)
	}
	return nil
}

// boundGetter adapts a CollateralGetter to go-tdx-guest's context-free
// trust.HTTPSGetter for one verification, and keeps what it fetched so the
// result is computed from exactly the collateral that was checked.
type boundGetter struct {
	ctx    context.Context
	g      CollateralGetter
	bodies map[string][]byte
	err    error // the first fetch error
}

func (b *boundGetter) Get(url string) (map[string][]string, []byte, error) {
	if b.g == nil {
		return nil, nil, errors.New("tdx: no collateral source")
	}

	header, body, err := b.g.Get(b.ctx, url)
	if err != nil {
		if b.err == nil {
			b.err = err
		}
		return nil, nil, err
	}

	b.bodies[url] = body
	return header, body, nil
}

// pckExtensions reads Intel's SGX extensions of the chain's leaf.
func pckExtensions(chainPEM []byte) (*pcs.PckExtensions, error) {
	block, _ := pem.Decode(chainPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM certificate in the PCK chain", ErrMalformed)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing PCK certificate: %w", err)
	}

	ext, err := pcs.PckCertificateExtensions(leaf)
	if err != nil {
		return nil, fmt.Errorf("reading PCK certificate extensions: %w", err)
	}
	return ext, nil
}

// matchTCBLevel finds the first TCB level (Intel orders them newest first)
// that the platform meets, as go-tdx-guest does when it checks the status.
func matchTCBLevel(tcbInfoJSON []byte, ext *pcs.PckExtensions, teeTCBSVN []byte) (*TCB, error) {
	var info pcs.TdxTcbInfo
	if err := json.Unmarshal(tcbInfoJSON, &info); err != nil {
		return nil, fmt.Errorf("decoding TCB info: %w", err)
	}

	for _, level := range info.TcbInfo.TcbLevels {
		if !meetsLevel(level.Tcb, ext.TCB, teeTCBSVN) {
			continue
		}
		date, err := time.Parse(time.RFC3339, level.TcbDate)
		if err != nil {
			return nil, fmt.Errorf("decoding TCB date: %w", err)
		}

		return &TCB{
			Status:               string(level.TcbStatus),
			Date:                 date,
			EvaluationDataNumber: info.TcbInfo.TcbEvaluationDataNumber,
			AdvisoryIDs:          level.AdvisoryIDs,
		}, nil
	}

	return nil, errors.New("tdx: no TCB level matches the platform")
}

// meetsLevel reports whether every SVN of the platform is at least the
// level's. TEE_TCB_SVN[0:2] describe the TDX module when byte 1 (its major
// version) is non-zero; that module is matched separately against TDX
// module identities, so those two bytes are skipped then.
func meetsLevel(level pcs.Tcb, pck pcs.PckCertTCB, teeTCBSVN []byte) bool {
	if len(pck.CPUSvnComponents) != len(level.SgxTcbcomponents) ||
		len(teeTCBSVN) != len(level.TdxTcbcomponents) || len(teeTCBSVN) < 2 {
		return false
	}

	for i, c := range level.SgxTcbcomponents {
		if pck.CPUSvnComponents[i] < c.Svn {
			return false
		}
	}

	if pck.PCESvn < level.Pcesvn {
		return false
	}
	start := 0
	if teeTCBSVN[1] > 0 {
		start = 2
	}

	for i := start; i < len(teeTCBSVN); i++ {
		if teeTCBSVN[i] < level.TdxTcbcomponents[i].Svn {
			return false
		}
	}
	return true
}
