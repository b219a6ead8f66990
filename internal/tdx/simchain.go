package tdx

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tdx-guest/pcs"
)

// simChain is a simulated PCK chain and the PCK key that signs QE reports.
type simChain struct {
	pck, intermediate, root *x509.Certificate
	pckKey                  *ecdsa.PrivateKey
}

const (
	simChainFile = "simulated-pck.pem"
	simRootFile  = "root.pem"

	simValidity = 20 * 365 * 24 * time.Hour

	// simOrg marks every simulated certificate. The common names must be
	// Intel's: go-tdx-guest checks them.
	simOrg = "DevOps Defender simulated TD (not Intel)"
)

// oidSGXType is the SGX Type entry of Intel's SGX extension (ENUMERATED;
// 0 is "Standard"); go-tdx-guest exports the other OIDs.
var oidSGXType = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}

// loadOrCreateChain returns the chain kept in dir, creating it on first
// use, or a fresh in-memory chain when dir is empty.
func loadOrCreateChain(dir string, now time.Time, log *slog.Logger) (*simChain, error) {
	if dir == "" {
		log.Info("simulated TD chain generated", "persisted", false)
		return newSimChain(now)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating simulated chain directory: %w", err)
	}

	path := filepath.Join(dir, simChainFile)
	chain, err := readSimChain(path)
	created := false
	if errors.Is(err, fs.ErrNotExist) {
		chain, created, err = createSimChain(path, now)
	}
	if err != nil {
		return nil, err
	}
	if err := ensureRootFile(filepath.Join(dir, simRootFile), chain.root); err != nil {
		return nil, err
	}

	log.Info("simulated TD chain ready", "dir", dir, "created", created,
		"root_not_after", chain.root.NotAfter)
	return chain, nil
}

// createSimChain writes a new chain to path, unless another process wrote
// one first, in which case that one is used.
func createSimChain(path string, now time.Time) (*simChain, bool, error) {
	chain, err := newSimChain(now)
	if err != nil {
		return nil, false, err
	}
	data, err := chain.marshal()
	if err != nil {
		return nil, false, err
	}

	err = writeNewFile(path, data)
	if errors.Is(err, fs.ErrExist) {
		chain, err = readSimChain(path)
		return chain, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("writing simulated chain: %w", err)
	}

	return chain, true, nil
}

// ensureRootFile writes root.pem if it is missing and otherwise checks that
// it holds this chain's root.
func ensureRootFile(path string, root *x509.Certificate) error {
	want := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	got, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		err = writeNewFile(path, want)
		if errors.Is(err, fs.ErrExist) {
			got, err = os.ReadFile(path)
		} else if err == nil {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("writing simulated root: %w", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("tdx: %s does not hold the root of %s", path, simChainFile)
	}
	return nil
}

// writeNewFile creates path with mode 0600 atomically, failing with
// fs.ErrExist if it exists: the file is written under a temporary name and
// hard-linked into place, so readers never see it half written.
func writeNewFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())

	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}

	return os.Link(tmp.Name(), path)
}

// newSimChain generates root CA → intermediate CA → PCK certificate.
func newSimChain(now time.Time) (*simChain, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating simulated root key: %w", err)
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating simulated intermediate key: %w", err)
	}
	pckKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating simulated PCK key: %w", err)
	}

	rootTmpl := caTemplate("Intel SGX Root CA", now, 1)
	root, err := issue(rootTmpl, rootTmpl, rootKey, rootKey)
	if err != nil {
		return nil, err
	}

	inter, err := issue(caTemplate("Intel SGX PCK Platform CA", now, 0), root, interKey, rootKey)
	if err != nil {
		return nil, err
	}
	pckTmpl, err := pckTemplate(now, &pckKey.PublicKey)
	if err != nil {
		return nil, err
	}

	pck, err := issue(pckTmpl, inter, pckKey, interKey)
	if err != nil {
		return nil, err
	}
	return &simChain{pck: pck, intermediate: inter, root: root, pckKey: pckKey}, nil
}

// issue signs tmpl, for the subject's key, with the issuer's key.
func issue(tmpl, parent *x509.Certificate, subject, issuer *ecdsa.PrivateKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &subject.PublicKey, issuer)
	if err != nil {
		return nil, fmt.Errorf("issuing simulated %q: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

func caTemplate(cn string, now time.Time, maxPathLen int) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               simName(cn),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(simValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

// pckTemplate mirrors an Intel PCK certificate: go-tdx-guest wants exactly
// six extensions, the last being Intel's SGX extension (FMSPC, PCEID, TCB).
func pckTemplate(now time.Time, pub *ecdsa.PublicKey) (*x509.Certificate, error) {
	sgx, err := sgxExtension()
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding simulated PCK key: %w", err)
	}

	ski := sha256.Sum256(pubDER)
	return &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               simName("Intel SGX PCK Certificate"),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(simValidity),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		SubjectKeyId:          ski[:20],
		CRLDistributionPoints: []string{"https://simulated-td.invalid/pckcrl"},
		ExtraExtensions:       []pkix.Extension{sgx},
	}, nil
}

// sgxExtension encodes Intel's SGX extension (OID 1.2.840.113741.1.13.1) as
// go-tdx-guest's pcs package reads it: a sequence of (OID, value) pairs for
// PPID, TCB (16 component SVNs, PCESVN, CPUSVN), PCEID, FMSPC and SGX type.
func sgxExtension() (pkix.Extension, error) {
	ppid := make([]byte, 16)
	if _, err := rand.Read(ppid); err != nil {
		return pkix.Extension{}, fmt.Errorf("generating simulated PPID: %w", err)
	}

	// the value types of the (OID, value) pairs
	type octets struct {
		ID    asn1.ObjectIdentifier
		Value []byte
	}
	type integer struct {
		ID    asn1.ObjectIdentifier
		Value int
	}
	type enumerated struct {
		ID    asn1.ObjectIdentifier
		Value asn1.Enumerated
	}
	type sequence struct {
		ID    asn1.ObjectIdentifier
		Value []asn1.RawValue
	}

	// TCB: the 16 component SVNs, then PCESVN and CPUSVN
	var tcb []asn1.RawValue
	for i, svn := range simCPUSVN {
		id := append(append(asn1.ObjectIdentifier(nil), pcs.OidTCB...), i+1)
		tcb = append(tcb, raw(integer{id, int(svn)}))
	}
	tcb = append(tcb, raw(integer{pcs.OidPCESvn, simPCESVN}),
		raw(octets{pcs.OidCPUSvn, simCPUSVN[:]}))

	value, err := asn1.Marshal([]asn1.RawValue{
		raw(octets{pcs.OidPPID, ppid}),
		raw(sequence{pcs.OidTCB, tcb}),
		raw(octets{pcs.OidPCEID, simPCEID}),
		raw(octets{pcs.OidFMSPC, simFMSPC}),
		raw(enumerated{oidSGXType, 0}),
	})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encoding simulated SGX extension: %w", err)
	}
	return pkix.Extension{Id: pcs.OidSgxExtension, Value: value}, nil
}

// raw marshals v, which is built from fixed types that always encode.
func raw(v any) asn1.RawValue {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("tdx: encoding %T: %v", v, err))
	}
	return asn1.RawValue{FullBytes: b}
}

func simName(cn string) pkix.Name {
	return pkix.Name{CommonName: cn, Organization: []string{simOrg}}
}

func randomSerial() *big.Int {
	b := make([]byte, 16)
	rand.Read(b) // crypto/rand.Read never fails
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b)
}

// pem returns the chain as a quote carries it: leaf, intermediate, root.
func (c *simChain) pem() []byte {
	var b []byte
	for _, cert := range []*x509.Certificate{c.pck, c.intermediate, c.root} {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return b
}

// marshal is the chain file: the quote's PEM chain and the PCK key.
func (c *simChain) marshal() ([]byte, error) {
	key, err := x509.MarshalPKCS8PrivateKey(c.pckKey)
	if err != nil {
		return nil, fmt.Errorf("encoding simulated PCK key: %w", err)
	}
	return append(c.pem(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})...), nil
}

// readSimChain reads and checks a chain file written by marshal.
func readSimChain(path string) (*simChain, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading simulated chain: %w", err)
	}

	chain, err := parseSimChain(data)
	if err != nil {
		return nil, fmt.Errorf("tdx: simulated chain %s: %w", path, err)
	}
	return chain, nil
}

func parseSimChain(data []byte) (*simChain, error) {
	var certs []*x509.Certificate
	var key any
	for n := 0; ; n++ {
		block, rest := pem.Decode(data)
		if block == nil {
			break
		}
		data = rest

		var err error
		switch {
		case n < 3 && block.Type == "CERTIFICATE":
			var c *x509.Certificate
			c, err = x509.ParseCertificate(block.Bytes)
			certs = append(certs, c)
		case n == 3 && block.Type == "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("unexpected PEM block %d of type %q", n, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
	}

	pckKey, ok := key.(*ecdsa.PrivateKey)
	if len(certs) != 3 || !ok {
		return nil, errors.New("want three certificates and an ECDSA private key")
	}
	c := &simChain{pck: certs[0], intermediate: certs[1], root: certs[2], pckKey: pckKey}
	return c, c.check()
}

// check verifies the signatures linking the chain and the key to the leaf.
func (c *simChain) check() error {
	if !c.pckKey.PublicKey.Equal(c.pck.PublicKey) {
		return errors.New("private key does not match the PCK certificate")
	}
	if err := c.pck.CheckSignatureFrom(c.intermediate); err != nil {
		return fmt.Errorf("PCK certificate: %w", err)
	}
	if err := c.intermediate.CheckSignatureFrom(c.root); err != nil {
		return fmt.Errorf("intermediate certificate: %w", err)
	}
	if err := c.root.CheckSignatureFrom(c.root); err != nil {
		return fmt.Errorf("root certificate: %w", err)
	}

	return nil
}
