package tdx

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

// TypeSimulated is the [Provider.Type] of a [Simulator].
const TypeSimulated = "simulated"

// SimulatorOptions configure [NewSimulator].
type SimulatorOptions struct {
	// Dir, when set, keeps the simulated PCK chain in this directory (see
	// [NewSimulator]) so that verifiers trusting its root keep trusting it
	// across restarts. Empty keeps a fresh chain in memory.
	Dir string

	// MRTD is the simulated build-time measurement (48 bytes). Nil means
	// the SHA-384 of the running executable, so that another binary gets
	// another MRTD, as another firmware would on real TDX.
	MRTD []byte

	// RTMR are the runtime measurement registers (48 bytes each). Nil
	// entries are zero.
	RTMR [4][]byte

	// Debug sets TDATTRIBUTES.DEBUG in quotes, to test that policies
	// reject debug TDs. Off by default.
	Debug bool

	// Now dates newly generated certificates. Nil means time.Now.
	Now func() time.Time

	// Logger receives lifecycle events. Nil discards them.
	Logger *slog.Logger
}

// Simulator is a [Provider] for machines without TDX. Its quotes have the
// exact version 4 layout and are signed the way a real quoting enclave signs
// them, but by a PCK chain generated locally whose certificates carry
// Intel's names (go-tdx-guest requires them): they verify only against
// [Simulator.Root], never against Intel's root. A Simulator is safe for
// concurrent use.
type Simulator struct {
	root       *x509.Certificate
	attestKey  *ecdsa.PrivateKey
	headerBody []byte // header and TD quote body, report data zero
	authData   []byte // attestation key and certification data
}

// Simulated platform values. They are fixed so that quotes are stable, and
// chosen not to collide with Intel's: a simulated FMSPC has no TCB info.
var (
	simFMSPC      = []byte{0xdd, 0, 0, 0, 0, 0}
	simPCEID      = []byte{0, 0}
	simCPUSVN     = [16]byte{3, 3, 2, 2, 2, 1, 0, 2}
	simPCESVN     = 11
	simTEETCBSVN  = [16]byte{3, 0, 4}
	simXFAM       = []byte{0xe7, 0x1a, 0x06, 0, 0, 0, 0, 0}
	simQEMRSigner = sha256.Sum256([]byte("devopsdefender simulated quoting enclave signer"))
	simQEVendorID = []byte{ // Intel's QE vendor ID
		0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9,
		0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
	}
)

// tdAttributesSEPTVEDisable is TDATTRIBUTES bit 28 (SEPT_VE_DISABLE),
// which production Linux guests set so that an access to private memory the
// host removed stops the TD instead of raising a #VE inside it.
const tdAttributesSEPTVEDisable = 1 << 28

// NewSimulator builds a simulated TD. With opts.Dir set, the chain lives in
// two files there: simulated-pck.pem (PCK certificate, intermediate CA,
// root CA and the PCK private key) and root.pem (the root alone, for
// verifiers), both mode 0600. They are created on first use and reused
// afterwards; an unreadable or inconsistent file is an error, never
// silently replaced. The CA private keys are discarded after generation.
func NewSimulator(opts SimulatorOptions) (*Simulator, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}

	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	mrtd, err := opts.mrtd()
	if err != nil {
		return nil, err
	}

	chain, err := loadOrCreateChain(opts.Dir, now(), log)
	if err != nil {
		return nil, err
	}
	return newSimulator(chain, mrtd, opts)
}

// newSimulator gives a chain a fresh attestation key, as a quoting enclave
// does at start, and certifies it once for all quotes.
func newSimulator(chain *simChain, mrtd []byte, opts SimulatorOptions) (*Simulator, error) {
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating attestation key: %w", err)
	}
	authData, err := simAuthData(ak, chain)
	if err != nil {
		return nil, err
	}

	return &Simulator{
		root:       chain.root,
		attestKey:  ak,
		headerBody: simHeaderBody(mrtd, opts),
		authData:   authData,
	}, nil
}

func (o *SimulatorOptions) validate() error {
	if o.MRTD != nil && len(o.MRTD) != measurementSize {
		return fmt.Errorf("tdx: simulator MRTD is %d bytes, want %d", len(o.MRTD), measurementSize)
	}

	for i, r := range o.RTMR {
		if r != nil && len(r) != measurementSize {
			return fmt.Errorf("tdx: simulator RTMR%d is %d bytes, want %d",
				i, len(r), measurementSize)
		}
	}
	return nil
}

// mrtd returns the configured MRTD or hashes the running executable.
func (o *SimulatorOptions) mrtd() ([]byte, error) {
	if o.MRTD != nil {
		return o.MRTD, nil
	}

	path, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locating executable for the simulated MRTD: %w", err)
	}

	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("hashing executable for the simulated MRTD: %w", err)
	}
	defer f.Close()

	h := sha512.New384()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("hashing executable for the simulated MRTD: %w", err)
	}
	return h.Sum(nil), nil
}

// Type returns [TypeSimulated].
func (s *Simulator) Type() string { return TypeSimulated }

// Root returns the simulated root CA, the only root its quotes verify with.
func (s *Simulator) Root() *x509.Certificate { return s.root }

// Quote returns a version 4 quote over reportData, signed by the
// simulator's attestation key.
func (s *Simulator) Quote(ctx context.Context, reportData [64]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// the attestation key signs the header and body, report data included
	out := make([]byte, 0, len(s.headerBody)+4+signatureSize+len(s.authData))
	out = append(out, s.headerBody...)
	copy(out[headerSize+offReportData:], reportData[:])
	digest := sha256.Sum256(out)
	sig, err := signRaw(s.attestKey, digest[:])
	if err != nil {
		return nil, fmt.Errorf("signing simulated quote: %w", err)
	}

	// then the signed data: its size, the signature and the authentication data
	out = binary.LittleEndian.AppendUint32(out, uint32(signatureSize+len(s.authData)))
	out = append(out, sig...)
	return append(out, s.authData...), nil
}

// simHeaderBody lays out the quote header and a TD quote body whose report
// data is left zero for Quote to fill.
func simHeaderBody(mrtd []byte, opts SimulatorOptions) []byte {
	// header: version, attestation key type, TEE type and QE vendor ID
	b := make([]byte, headerSize+bodySize)
	binary.LittleEndian.PutUint16(b[0:], quoteVersion4)
	binary.LittleEndian.PutUint16(b[2:], attestKeyECDSA256)
	binary.LittleEndian.PutUint32(b[4:], teeTypeTDX)
	copy(b[12:28], simQEVendorID)

	body := b[headerSize:]
	copy(body[offTEETCBSVN:], simTEETCBSVN[:])
	mrseam := sha512.Sum384([]byte("devopsdefender simulated TDX module"))
	copy(body[offMRSEAM:], mrseam[:])

	attrs := uint64(tdAttributesSEPTVEDisable)
	if opts.Debug {
		attrs |= tdAttributesDebug
	}
	binary.LittleEndian.PutUint64(body[offTDAttributes:], attrs)
	copy(body[offXFAM:], simXFAM)
	copy(body[offMRTD:], mrtd)

	for i, r := range opts.RTMR {
		copy(body[offRTMR+i*measurementSize:], r)
	}
	return b
}

// simAuthData builds everything that follows the quote signature: the
// attestation key, and the certification data proving, through a QE report
// signed by the PCK key, that this attestation key belongs to a genuine
// (here: simulated) quoting enclave on that platform.
func simAuthData(ak *ecdsa.PrivateKey, chain *simChain) ([]byte, error) {
	akPoint, err := ak.PublicKey.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding attestation key: %w", err)
	}
	akRaw := akPoint[1:] // drop the SEC 1 uncompressed-point prefix 0x04

	qeAuth := make([]byte, 32)
	for i := range qeAuth {
		qeAuth[i] = byte(i) // what Intel's QE sends
	}

	report := simQEReport(akRaw, qeAuth)
	digest := sha256.Sum256(report)
	reportSig, err := signRaw(chain.pckKey, digest[:])
	if err != nil {
		return nil, fmt.Errorf("signing simulated QE report: %w", err)
	}

	var qe []byte
	qe = append(qe, report...)
	qe = append(qe, reportSig...)
	qe = binary.LittleEndian.AppendUint16(qe, uint16(len(qeAuth)))
	qe = append(qe, qeAuth...)
	qe = appendCertData(qe, certTypePCKChain, chain.pem())

	out := append([]byte(nil), akRaw...)
	return appendCertData(out, certTypeQEReport, qe), nil
}

// simQEReport is an SGX report of the quoting enclave whose report data is
// SHA-256(attestation key || QE authentication data), zero-padded: the
// binding go-tdx-guest checks.
func simQEReport(akRaw, qeAuth []byte) []byte {
	r := make([]byte, qeReportSize)
	copy(r[0:16], simCPUSVN[:])
	copy(r[48:64], []byte{0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7}) // ATTRIBUTES
	mrenclave := sha256.Sum256([]byte("devopsdefender simulated quoting enclave"))
	copy(r[64:96], mrenclave[:])
	copy(r[128:160], simQEMRSigner[:])
	binary.LittleEndian.PutUint16(r[256:], 2) // ISVPRODID of the TD QE
	binary.LittleEndian.PutUint16(r[258:], 4) // ISVSVN

	binding := sha256.Sum256(append(append([]byte(nil), akRaw...), qeAuth...))
	copy(r[320:352], binding[:])
	return r
}

func appendCertData(b []byte, typ uint16, data []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, typ)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// signRaw signs a digest and encodes the signature as Intel quotes do:
// r and s as 32-byte big-endian integers.
func signRaw(key *ecdsa.PrivateKey, digest []byte) ([]byte, error) {
	r, s, err := ecdsa.Sign(rand.Reader, key, digest)
	if err != nil {
		return nil, err
	}
	sig := make([]byte, signatureSize)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return sig, nil
}
