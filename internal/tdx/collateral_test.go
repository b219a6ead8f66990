package tdx

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-tdx-guest/pcs"
)

func TestResourceFor(t *testing.T) {
	tests := []struct {
		url      string
		wantBody string // "" means rejected
	}{
		{pcs.TcbInfoURL("50806f000000"), "tcbinfo-50806f000000.json"},
		{pcs.TcbInfoURL("50806F000000"), "tcbinfo-50806f000000.json"},
		{pcs.QeIdentityURL(), "qeidentity.json"},
		{pcs.PckCrlURL("platform"), "pckcrl-platform.der"},
		{pcs.PckCrlURL("processor"), "pckcrl-processor.der"},
		{"https://certificates.trustedservices.intel.com/IntelSGXRootCA.der", "rootcrl.der"},
		{pcs.TcbInfoURL("../../etc/pa"), ""},
		{pcs.TcbInfoURL("50806f00000"), ""},
		{pcs.PckCrlURL("../x"), ""},
		{"https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform", ""},
		{"http://api.trustedservices.intel.com/tdx/certification/v4/qe/identity", ""},
		{"https://evil.example/tdx/certification/v4/qe/identity", ""},
		{"https://certificates.trustedservices.intel.com/other.der", ""},
		{"::", ""},
	}

	for _, tc := range tests {
		res, err := resourceFor(tc.url)
		if tc.wantBody == "" {
			if err == nil {
				t.Errorf("resourceFor(%q) = %+v, want an error", tc.url, res)
			}
			continue
		}

		if err != nil || res.body != tc.wantBody {
			t.Errorf("resourceFor(%q) = %q, %v; want %q", tc.url, res.body, err, tc.wantBody)
		}
	}
}

func TestCollateralDirGet(t *testing.T) {
	header, body, err := collateralDir.Get(context.Background(), pcs.TcbInfoURL("50806f000000"))
	if err != nil {
		t.Fatal(err)
	}

	wantBody, _ := os.ReadFile("testdata/collateral/tcbinfo-50806f000000.json")
	if string(body) != string(wantBody) {
		t.Error("body differs from the saved file")
	}
	// go-tdx-guest URL-decodes the issuer chain header, as PCS encodes it.
	chain, err := url.QueryUnescape(header[headerTCBInfoChain][0])
	if err != nil {
		t.Fatal(err)
	}

	wantChain, _ := os.ReadFile("testdata/collateral/tcbinfo-50806f000000.issuer-chain.pem")
	if chain != string(wantChain) {
		t.Errorf("issuer chain header decodes to %q, want the saved PEM", chain)
	}

	_, _, err = collateralDir.Get(context.Background(), pcs.TcbInfoURL("00906ed50000"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get of an absent FMSPC: error = %v, want fs.ErrNotExist", err)
	}
}

// TestVerifyRealQuoteWithCollateral checks the real quote against its
// real collateral. Every signature, the CRLs and the QE identity pass, but
// the quote's TEE_TCB_SVN (03 00 04 ...) is below every level of that TCB
// info (TDX late microcode SVN 5), so the verdict is a rejection, as
// go-tdx-guest's own tests expect.
func TestVerifyRealQuoteWithCollateral(t *testing.T) {
	opts := VerifyOptions{Now: at(collateralDate), Collateral: collateralDir}
	_, err := Verify(context.Background(), readRealQuote(t), opts)
	if err == nil || !strings.Contains(err.Error(), "no matching TCB level") {
		t.Errorf("Verify error = %v, want no matching TCB level", err)
	}
}

func TestVerifyWithSimulatedCollateral(t *testing.T) {
	tcbDate := time.Date(2025, time.November, 12, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		spec    collateralSpec
		at      time.Time
		wantTCB *TCB // nil: rejected
	}{
		{
			name:    "up to date",
			spec:    collateralSpec{status: "UpToDate", tcbDate: tcbDate},
			at:      simTime,
			wantTCB: &TCB{Status: "UpToDate", Date: tcbDate, EvaluationDataNumber: 17},
		},
		{
			name: "out of date",
			spec: collateralSpec{status: "OutOfDate", tcbDate: tcbDate},
			at:   simTime,
		},
		{
			name: "PCK revoked",
			spec: collateralSpec{status: "UpToDate", tcbDate: tcbDate, revokePCK: true},
			at:   simTime,
		},
		{
			name: "collateral expired",
			spec: collateralSpec{status: "UpToDate", tcbDate: tcbDate},
			at:   simTime.Add(31 * 24 * time.Hour),
		},
		{
			name: "TCB info signature broken",
			spec: collateralSpec{status: "UpToDate", tcbDate: tcbDate, breakTCBInfo: true},
			at:   simTime,
		},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPlatform(t)
			dir := t.TempDir()
			p.writeCollateral(t, dir, tc.spec)
			q := simQuote(t, p.simulator(t), ReportData{})

			res, err := Verify(context.Background(), q, VerifyOptions{
				Roots: poolOf(p.chain.root), Now: at(tc.at), Collateral: CollateralDir(dir),
			})
			if tc.wantTCB == nil {
				if err == nil {
					t.Fatal("Verify accepted the quote")
				}
				t.Logf("rejected: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}

			if diff := cmp.Diff(tc.wantTCB, res.TCB); diff != "" {
				t.Errorf("TCB (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPCSGet(t *testing.T) {
	client := &http.Client{Transport: dirTransport{collateralDir}}
	header, body, err := PCS{Client: client}.Get(context.Background(), pcs.QeIdentityURL())
	if err != nil {
		t.Fatal(err)
	}
	if len(body) == 0 || len(header[headerQEIdentityChain]) != 1 {
		t.Errorf("Get returned body of %d bytes and header %v", len(body), header)
	}

	_, _, err = PCS{Client: client}.Get(context.Background(), pcs.TcbInfoURL("00906ed50000"))
	if err == nil {
		t.Error("Get of a missing resource succeeded")
	}
	_, _, err = PCS{Client: client}.Get(context.Background(), "https://evil.example/x")
	if err == nil {
		t.Error("Get of a foreign URL succeeded")
	}

	// Real quote and collateral, fetched through the HTTP client.
	opts := VerifyOptions{Now: at(collateralDate), Collateral: PCS{Client: client}}
	_, err = Verify(context.Background(), readRealQuote(t), opts)
	if errors.Is(err, ErrCollateralUnavailable) {
		t.Errorf("Verify through PCS: %v", err)
	}
}

// dirTransport plays Intel PCS from a collateral directory.
type dirTransport struct{ dir CollateralDir }

func (d dirTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	header, body, err := d.dir.Get(req.Context(), req.URL.String())
	resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: req}
	if err != nil {
		resp.StatusCode = http.StatusNotFound
		body = nil
	}

	for k, v := range header {
		resp.Header[k] = v
	}
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp, nil
}

// testPlatform is a simulated chain whose CA keys are kept, plus a TCB
// signing certificate, so that tests can issue collateral for it.
type testPlatform struct {
	chain             *simChain
	rootKey, interKey *ecdsa.PrivateKey
	tcbSigner         *x509.Certificate
	tcbSignerKey      *ecdsa.PrivateKey
}

func newTestPlatform(t *testing.T) *testPlatform {
	t.Helper()
	p := &testPlatform{rootKey: newKey(t), interKey: newKey(t), tcbSignerKey: newKey(t)}
	pckKey := newKey(t)

	rootTmpl := caTemplate("Intel SGX Root CA", simTime, 1)
	// go-tdx-guest fetches the root CA CRL from the root's distribution point.
	rootTmpl.CRLDistributionPoints = []string{
		"https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"}
	root := mustIssue(t, rootTmpl, rootTmpl, p.rootKey, p.rootKey)
	inter := mustIssue(t, caTemplate("Intel SGX PCK Platform CA", simTime, 0), root,
		p.interKey, p.rootKey)
	pckTmpl, err := pckTemplate(simTime, &pckKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	pck := mustIssue(t, pckTmpl, inter, pckKey, p.interKey)
	signerTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      simName("Intel SGX TCB Signing"),
		NotBefore:    simTime.Add(-time.Hour),
		NotAfter:     simTime.Add(simValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}

	p.tcbSigner = mustIssue(t, signerTmpl, root, p.tcbSignerKey, p.rootKey)
	p.chain = &simChain{pck: pck, intermediate: inter, root: root, pckKey: pckKey}
	return p
}

func (p *testPlatform) simulator(t *testing.T) *Simulator {
	t.Helper()
	sim, err := newSimulator(p.chain, make([]byte, 48), SimulatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sim
}

type collateralSpec struct {
	status       string
	tcbDate      time.Time
	revokePCK    bool
	breakTCBInfo bool
}

// writeCollateral issues TCB info, QE identity and CRLs dated simTime and
// valid for 30 days, in the CollateralDir layout.
func (p *testPlatform) writeCollateral(t *testing.T, dir string, spec collateralSpec) {
	t.Helper()
	issued, next := simTime.Add(-time.Hour), simTime.Add(30*24*time.Hour)
	svns := func(b []byte) []map[string]int {
		var out []map[string]int
		for _, v := range b {
			out = append(out, map[string]int{"svn": int(v)})
		}
		return out
	}

	tcbInfo := map[string]any{
		"id": "TDX", "version": 3, "fmspc": "dd0000000000", "pceId": "0000",
		"issueDate": issued, "nextUpdate": next, "tcbType": 0, "tcbEvaluationDataNumber": 17,
		"tdxModule": map[string]string{"mrsigner": strings.Repeat("00", 48),
			"attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"},
		"tcbLevels": []any{map[string]any{
			"tcb": map[string]any{"sgxtcbcomponents": svns(simCPUSVN[:]), "pcesvn": simPCESVN,
				"tdxtcbcomponents": svns(simTEETCBSVN[:])},
			"tcbDate": spec.tcbDate, "tcbStatus": spec.status,
		}},
	}

	qeIdentity := map[string]any{
		"id": "TD_QE", "version": 2, "issueDate": issued, "nextUpdate": next,
		"tcbEvaluationDataNumber": 17, "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
		"attributes":     "11000000000000000000000000000000",
		"attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
		"mrsigner":       hex.EncodeToString(simQEMRSigner[:]), "isvprodid": 2,
		"tcbLevels": []any{map[string]any{"tcb": map[string]int{"isvsvn": 4},
			"tcbDate": spec.tcbDate, "tcbStatus": "UpToDate"}},
	}

	signerChain := pemCerts(p.tcbSigner, p.chain.root)
	tcbBody := p.signedJSON(t, "tcbInfo", tcbInfo)
	if spec.breakTCBInfo {
		tcbBody = []byte(strings.Replace(string(tcbBody), `"tcbEvaluationDataNumber":17`,
			`"tcbEvaluationDataNumber":18`, 1))
	}

	files := map[string][]byte{
		"tcbinfo-dd0000000000.json":             tcbBody,
		"tcbinfo-dd0000000000.issuer-chain.pem": signerChain,
		"qeidentity.json":                       p.signedJSON(t, "enclaveIdentity", qeIdentity),
		"qeidentity.issuer-chain.pem":           signerChain,
		"pckcrl-platform.issuer-chain.pem":      pemCerts(p.chain.intermediate, p.chain.root),
		"rootcrl.der":                           crl(t, p.chain.root, p.rootKey, nil),
		"pckcrl-platform.der":                   crl(t, p.chain.intermediate, p.interKey, nil),
	}

	if spec.revokePCK {
		files["pckcrl-platform.der"] = crl(t, p.chain.intermediate, p.interKey,
			p.chain.pck.SerialNumber)
	}
	for name, data := range files {
		writeFile(t, filepath.Join(dir, name), data)
	}
}

// signedJSON encodes {name: v, "signature": hex(r||s)} as PCS does, the
// signature covering the exact bytes of v.
func (p *testPlatform) signedJSON(t *testing.T, name string, v any) []byte {
	t.Helper()
	inner, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}

	digest := sha256.Sum256(inner)
	sig, err := signRaw(p.tcbSignerKey, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return []byte(`{"` + name + `":` + string(inner) + `,"signature":"` +
		hex.EncodeToString(sig) + `"}`)
}

// crl issues a CRL by the CA (cert, key) revoking the given serial, if any.
func crl(t *testing.T, cert *x509.Certificate, key *ecdsa.PrivateKey, revoked *big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(1),
		ThisUpdate: simTime.Add(-time.Hour),
		NextUpdate: simTime.Add(30 * 24 * time.Hour),
	}

	if revoked != nil {
		tmpl.RevokedCertificateEntries = []x509.RevocationListEntry{
			{SerialNumber: revoked, RevocationTime: simTime.Add(-time.Minute)}}
	}

	der, err := x509.CreateRevocationList(rand.Reader, tmpl, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemCerts(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustIssue(t *testing.T, tmpl, parent *x509.Certificate, subject, issuer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	c, err := issue(tmpl, parent, subject, issuer)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
