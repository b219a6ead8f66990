package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

const verifyHelp = `usage: devopsdefender verify quote [flags] FILE
       devopsdefender verify token [flags] TOKEN

'verify quote' verifies the Intel TDX quote in FILE (raw bytes, or base64
such as the runtime's quote_b64) and prints the verdict and the
measurements as JSON. The PCK chain must lead to Intel's SGX Root CA unless
-root names other roots. With -collateral, the platform's TCB level, the
quoting enclave's identity and revocation are checked against saved Intel
PCS responses. The exit status is 1 when the quote is rejected.

'verify token' is described by 'devopsdefender verify token -h'.

Flags of 'verify quote':
`

const verifyTokenHelp = `usage: devopsdefender verify token [flags] TOKEN

Verifies a Trust Authority attestation token and prints the verdict and
the appraisal (measurements, TCB status and date, attester type) as JSON.
TOKEN is the JWT itself, @FILE for a file holding it, or - for stdin. The
signature is checked against the issuer's published keys (-jwks), then the
issuer, expiry and the TDX claims. The defaults are Intel Trust Authority's;
point both at a local trust authority for a dev fleet. With -report-data,
the token must also commit to those 64 bytes. The exit status is 1 when the
token is rejected.

Flags:
`

// maxQuoteFile bounds the input; real quotes are under 10 KiB.
const maxQuoteFile = 1 << 20

// quoteVerdict is the JSON printed by 'verify quote'.
type quoteVerdict struct {
	OK         bool      `json:"ok"`
	Error      string    `json:"error,omitempty"`
	File       string    `json:"file"`
	Roots      string    `json:"roots"`
	Collateral string    `json:"collateral,omitempty"`
	At         time.Time `json:"at"`

	// Measurements are set only when the quote verified.
	Measurements *tdx.Measurements `json:"measurements,omitempty"`
	FMSPC        string            `json:"fmspc,omitempty"`
	TCB          *tdx.TCB          `json:"tcb,omitempty"`

	// Unverified are the measurements a rejected quote claims, for
	// diagnosis only.
	Unverified *tdx.Measurements `json:"unverified_measurements,omitempty"`
}

// runVerify implements 'devopsdefender verify': it prints a JSON verdict on
// stdout and returns an error when the evidence is rejected, so that the
// exit status tells scripts the outcome.
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("expected what to verify: verify quote FILE or verify token TOKEN")
	}

	switch args[0] {
	case "quote":
		return runVerifyQuote(ctx, args[1:], stdout, stderr)
	case "token":
		return runVerifyToken(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stderr, verifyHelp)
		newVerifyFlags(stderr).fs.PrintDefaults()
		return flag.ErrHelp
	}

	return usagef("unknown verify subcommand %q (want quote or token)", args[0])
}

// verifyFlags are the flags of 'verify quote'.
type verifyFlags struct {
	fs         *flag.FlagSet
	at         string
	collateral string
	root       string
}

func newVerifyFlags(stderr io.Writer) *verifyFlags {
	f := &verifyFlags{fs: flag.NewFlagSet("verify quote", flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.fs.StringVar(&f.at, "at", "",
		"check validity at this RFC 3339 time instead of now, e.g. the collateral's date")
	f.fs.StringVar(&f.collateral, "collateral", "",
		"directory of saved Intel PCS responses (layout: see tdx.CollateralDir)")
	f.fs.StringVar(&f.root, "root", "",
		"PEM file of root CAs to trust instead of Intel's, e.g. a simulated fleet's root.pem")
	f.fs.Usage = func() { fmt.Fprint(stderr, verifyHelp); f.fs.PrintDefaults() }
	return f
}

// runVerifyQuote verifies one quote file; see verifyHelp.
func runVerifyQuote(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newVerifyFlags(stderr)
	files, err := parseVerifyArgs(f.fs, args)
	if err != nil {
		return err
	}
	if len(files) != 1 {
		return usagef("expected one quote FILE, got %d arguments", len(files))
	}

	opts, verdict, err := f.options()
	if err != nil {
		return err
	}

	verdict.File = files[0]
	raw, err := readQuoteFile(files[0])
	if err != nil {
		return err
	}

	res, verr := tdx.Verify(ctx, raw, opts)
	if verr != nil {
		verdict.Error = verr.Error()
		verdict.Unverified, _ = tdx.Parse(raw)
	} else {
		verdict.OK = true
		verdict.Measurements, verdict.FMSPC, verdict.TCB = &res.Measurements, res.FMSPC, res.TCB
	}

	if err := writeVerdict(stdout, verdict); err != nil {
		return err
	}
	if verr != nil {
		return fmt.Errorf("quote rejected: %w", verr)
	}
	return nil
}

// parseVerifyArgs lets flags follow the FILE argument, as in
// 'verify quote q.bin -at ...', which the flag package alone stops at.
func parseVerifyArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			return nil, err
		} else if err != nil {
			return nil, usagef("%v", err)
		}

		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// options turns the flags into verification options and the verdict's
// description of them.
func (f *verifyFlags) options() (tdx.VerifyOptions, *quoteVerdict, error) {
	var opts tdx.VerifyOptions
	v := &quoteVerdict{Roots: "intel", At: time.Now().UTC()}
	if f.at != "" {
		at, err := time.Parse(time.RFC3339, f.at)
		if err != nil {
			return opts, nil, usagef("-at: want an RFC 3339 time like 2023-07-01T00:00:00Z: %v",
				err)
		}
		v.At = at
	}

	opts.Now = func() time.Time { return v.At }
	if f.root != "" {
		pool, err := readTrustedRoots(f.root)
		if err != nil {
			return opts, nil, err
		}
		opts.Roots, v.Roots = pool, f.root
	}

	if f.collateral != "" {
		if fi, err := os.Stat(f.collateral); err != nil || !fi.IsDir() {
			return opts, nil, usagef("-collateral %s: not a directory", f.collateral)
		}
		opts.Collateral, v.Collateral = tdx.CollateralDir(f.collateral), f.collateral
	}
	return opts, v, nil
}

func readTrustedRoots(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading roots: %w", err)
	}

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("reading roots: no PEM certificate in %s", path)
	}
	return pool, nil
}

// readQuoteFile reads a raw quote, or a base64 one. A raw quote starts with
// its version, 0x04 0x00, which is not base64 text, so the two never mix.
func readQuoteFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading quote: %w", err)
	}
	defer f.Close()

	data, err := io.ReadAll(io.LimitReader(f, maxQuoteFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading quote: %w", err)
	}
	if len(data) > maxQuoteFile {
		return nil, fmt.Errorf("reading quote: %s is larger than %d bytes", path, maxQuoteFile)
	}

	// text that decodes as base64 is a base64 quote
	if decoded, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data))); err == nil {
		return decoded, nil
	}
	return data, nil
}

func writeVerdict(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("writing verdict: %w", err)
	}
	return nil
}

// maxTokenInput bounds a token read from a file or stdin.
const maxTokenInput = 1 << 20

// tokenVerdict is the JSON printed by 'verify token'.
type tokenVerdict struct {
	OK     bool      `json:"ok"`
	Error  string    `json:"error,omitempty"`
	Issuer string    `json:"issuer"`
	JWKS   string    `json:"jwks"`
	At     time.Time `json:"at"`
	// Appraisal is set only when the token verified.
	Appraisal *ita.Appraisal `json:"appraisal,omitempty"`
}

// tokenFlags are the flags of 'verify token'.
type tokenFlags struct {
	fs         *flag.FlagSet
	jwks       string
	issuer     string
	reportData string
}

func newTokenFlags(stderr io.Writer) *tokenFlags {
	f := &tokenFlags{fs: flag.NewFlagSet("verify token", flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.fs.StringVar(&f.jwks, "jwks", ita.DefaultJWKSURL,
		"URL of the issuer's JWKS (https, or http to a loopback host)")
	f.fs.StringVar(&f.issuer, "issuer", ita.IntelIssuer, "issuer the token must carry")
	f.fs.StringVar(&f.reportData, "report-data", "",
		"128 hex digits the token's quote must commit to (optional)")
	f.fs.Usage = func() { fmt.Fprint(stderr, verifyTokenHelp); f.fs.PrintDefaults() }
	return f
}

// runVerifyToken verifies one token; see verifyTokenHelp.
func runVerifyToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newTokenFlags(stderr)
	tokens, err := parseVerifyArgs(f.fs, args)
	if err != nil {
		return err
	}
	if len(tokens) != 1 {
		return usagef("expected one TOKEN, got %d arguments", len(tokens))
	}

	var want *tdx.ReportData
	if f.reportData != "" {
		want = new(tdx.ReportData)
		if err := want.UnmarshalText([]byte(f.reportData)); err != nil {
			return usagef("-report-data: want 128 hex digits: %v", err)
		}
	}

	v, err := ita.NewVerifier(ctx, ita.VerifierOptions{JWKSURL: f.jwks, Issuer: f.issuer})
	if err != nil {
		return usagef("%v", err)
	}
	defer v.Close()

	token, err := readToken(tokens[0], os.Stdin)
	if err != nil {
		return err
	}

	verdict := &tokenVerdict{Issuer: f.issuer, JWKS: f.jwks, At: time.Now().UTC()}
	a, verr := v.Verify(ctx, token)
	if verr == nil && want != nil {
		verr = a.CheckBinding(*want)
	}
	if verr != nil {
		verdict.Error = verr.Error()
	} else {
		verdict.OK, verdict.Appraisal = true, a
	}

	if err := writeVerdict(stdout, verdict); err != nil {
		return err
	}
	if verr != nil {
		return fmt.Errorf("token rejected: %w", verr)
	}
	return nil
}

// readToken returns the token named by arg: the JWT itself, @FILE, or -
// for stdin.
func readToken(arg string, stdin io.Reader) (string, error) {
	var r io.Reader
	switch {
	case arg == "-":
		r = stdin
	case strings.HasPrefix(arg, "@"):
		f, err := os.Open(arg[1:])
		if err != nil {
			return "", fmt.Errorf("reading token: %w", err)
		}
		defer f.Close()
		r = f
	default:
		return arg, nil
	}

	data, err := io.ReadAll(io.LimitReader(r, maxTokenInput+1))
	if err != nil {
		return "", fmt.Errorf("reading token: %w", err)
	}
	if len(data) > maxTokenInput {
		return "", fmt.Errorf("reading token: larger than %d bytes", maxTokenInput)
	}
	return strings.TrimSpace(string(data)), nil
}
