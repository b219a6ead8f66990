package tdx

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// CollateralGetter fetches one Intel PCS resource (TCB info, QE identity or
// a CRL) by the URL go-tdx-guest asks for. It returns the response headers,
// because PCS sends the issuer chain of a signed response in a header, and
// the body.
type CollateralGetter interface {
	Get(ctx context.Context, url string) (header map[string][]string, body []byte, err error)
}

// CollateralDir serves Intel PCS responses saved in a directory, so that
// quotes can be appraised offline and a verdict can be reproduced later with
// the same collateral. Files, by the request they answer:
//
//   - TCB info, tdx/certification/v4/tcb?fmspc=F:
//     tcbinfo-F.json and tcbinfo-F.issuer-chain.pem
//   - QE identity, tdx/certification/v4/qe/identity:
//     qeidentity.json and qeidentity.issuer-chain.pem
//   - PCK CRL, sgx/certification/v4/pckcrl?ca=C&encoding=der:
//     pckcrl-C.der and pckcrl-C.issuer-chain.pem
//   - root CA CRL, certificates.trustedservices.intel.com/IntelSGXRootCA.der:
//     rootcrl.der
//
// F is the lowercase hex FMSPC and C is "platform" or "processor". A body
// file holds the response body byte for byte (its signature covers it); an
// issuer-chain file holds the PEM certificates of the response header.
type CollateralDir string

// PCS fetches collateral from Intel's Provisioning Certification Service.
// It only fetches the Intel URLs that [CollateralDir] also knows.
type PCS struct {
	// Client makes the requests. Nil means a client with a 30 s timeout.
	Client *http.Client
}

// maxCollateralSize bounds a PCS response; real ones are a few kilobytes.
const maxCollateralSize = 1 << 20

// Intel PCS hosts and the response headers carrying issuer chains.
const (
	pcsHost     = "api.trustedservices.intel.com"
	rootCRLHost = "certificates.trustedservices.intel.com"

	headerTCBInfoChain    = "Tcb-Info-Issuer-Chain"
	headerQEIdentityChain = "Sgx-Enclave-Identity-Issuer-Chain"
	headerPCKCRLChain     = "Sgx-Pck-Crl-Issuer-Chain"
)

var fmspcPattern = regexp.MustCompile(`^[0-9a-fA-F]{12}$`)

// pcsResource names a PCS response this package can serve or fetch.
type pcsResource struct {
	body   string // body file name in a CollateralDir
	chain  string // issuer chain file name, or "" when there is none
	header string // response header carrying the issuer chain
}

// Get reads the saved response for url. File names come from a fixed table,
// never from the URL's path, so a URL cannot reach other files.
func (d CollateralDir) Get(ctx context.Context, rawURL string) (map[string][]string, []byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}

	res, err := resourceFor(rawURL)
	if err != nil {
		return nil, nil, err
	}

	body, err := os.ReadFile(filepath.Join(string(d), res.body))
	if err != nil {
		return nil, nil, fmt.Errorf("reading offline collateral: %w", err)
	}
	if res.chain == "" {
		return nil, body, nil
	}

	chain, err := os.ReadFile(filepath.Join(string(d), res.chain))
	if err != nil {
		return nil, nil, fmt.Errorf("reading offline collateral: %w", err)
	}
	// PCS sends the chain URL-encoded; go-tdx-guest decodes it.
	header := map[string][]string{res.header: {url.QueryEscape(string(chain))}}
	return header, body, nil
}

// Get fetches url from Intel PCS.
func (p PCS) Get(ctx context.Context, rawURL string) (map[string][]string, []byte, error) {
	if _, err := resourceFor(rawURL); err != nil {
		return nil, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("building PCS request: %w", err)
	}

	client := p.Client
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching collateral: %w", err)
	}
	defer resp.Body.Close()

	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("fetching collateral %s: HTTP %d", rawURL, resp.StatusCode)
	}

	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCollateralSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("reading collateral: %w", err)
	}
	if len(body) > maxCollateralSize {
		return nil, nil, fmt.Errorf("collateral %s is larger than %d bytes",
			rawURL, maxCollateralSize)
	}

	return resp.Header, body, nil
}

// resourceFor maps the URLs go-tdx-guest requests (pcs.TcbInfoURL,
// pcs.QeIdentityURL, pcs.PckCrlURL and the root CA's CRL distribution point)
// to their saved form, rejecting anything else.
func resourceFor(rawURL string) (pcsResource, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" {
		return pcsResource{}, fmt.Errorf("tdx: not an Intel PCS URL: %q", rawURL)
	}

	q := u.Query()
	switch {
	case u.Host == pcsHost && u.Path == "/tdx/certification/v4/tcb" &&
		fmspcPattern.MatchString(q.Get("fmspc")):
		fmspc := strings.ToLower(q.Get("fmspc"))
		return pcsResource{body: "tcbinfo-" + fmspc + ".json",
			chain: "tcbinfo-" + fmspc + ".issuer-chain.pem", header: headerTCBInfoChain}, nil
	case u.Host == pcsHost && u.Path == "/tdx/certification/v4/qe/identity":
		return pcsResource{body: "qeidentity.json", chain: "qeidentity.issuer-chain.pem",
			header: headerQEIdentityChain}, nil
	case u.Host == pcsHost && u.Path == "/sgx/certification/v4/pckcrl" &&
		(q.Get("ca") == "platform" || q.Get("ca") == "processor") && q.Get("encoding") == "der":
		return pcsResource{body: "pckcrl-" + q.Get("ca") + ".der",
			chain: "pckcrl-" + q.Get("ca") + ".issuer-chain.pem", header: headerPCKCRLChain}, nil
	case u.Host == rootCRLHost && u.Path == "/IntelSGXRootCA.der":
		return pcsResource{body: "rootcrl.der"}, nil
	}

	return pcsResource{}, fmt.Errorf("tdx: not a known Intel PCS resource: %q", rawURL)
}
