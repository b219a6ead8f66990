package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/ita"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

const (
	realQuote     = "../../internal/tdx/testdata/tdx_prod_quote_SPR_E4.dat"
	realColl      = "../../internal/tdx/testdata/collateral"
	collateralDay = "2023-07-01T00:00:00Z"
)

// verifyCmd runs 'verify' with args and decodes the printed verdict.
func verifyCmd(t *testing.T, args ...string) (*quoteVerdict, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := runVerify(context.Background(), args, &stdout, &stderr)
	if stdout.Len() == 0 {
		return nil, err
	}

	var v quoteVerdict
	if jerr := json.Unmarshal(stdout.Bytes(), &v); jerr != nil {
		t.Fatalf("stdout is not a JSON verdict: %v\n%s", jerr, stdout.String())
	}
	return &v, err
}

func TestVerifyQuoteAccepts(t *testing.T) {
	b64 := filepath.Join(t.TempDir(), "quote.b64")
	raw, err := os.ReadFile(realQuote)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, b64, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"))

	for name, args := range map[string][]string{
		"raw file":         {"quote", "-at", collateralDay, realQuote},
		"flags after FILE": {"quote", realQuote, "--at", collateralDay},
		"base64 file":      {"quote", "-at", collateralDay, b64},
	} {
		t.Run(name, func(t *testing.T) {
			v, err := verifyCmd(t, args...)
			if err != nil {
				t.Fatalf("runVerify: %v", err)
			}
			if !v.OK || v.Measurements == nil || v.Roots != "intel" || v.FMSPC != "50806f000000" {
				t.Errorf("verdict = %+v, want ok with measurements against Intel's root", v)
			}
		})
	}
}

// TestVerifyQuoteWithCollateral: the real collateral is checked, and it
// rates the real quote's TCB below every known level (see the tdx
// package's testdata README), so the verdict is a rejection that says so.
func TestVerifyQuoteWithCollateral(t *testing.T) {
	v, err := verifyCmd(t, "quote", "-at", collateralDay, "-collateral", realColl, realQuote)
	if err == nil || v == nil || v.OK {
		t.Fatalf("verdict = %+v, error = %v; want a rejection", v, err)
	}
	if !strings.Contains(v.Error, "TCB") || v.Collateral != realColl {
		t.Errorf("verdict = %+v, want the TCB reason and the collateral directory", v)
	}
}

func TestVerifyQuoteRejectsFlippedSignature(t *testing.T) {
	raw, err := os.ReadFile(realQuote)
	if err != nil {
		t.Fatal(err)
	}
	raw[636+10] ^= 0x40 // a byte of the quote signature's r
	path := filepath.Join(t.TempDir(), "tampered.dat")
	writeTestFile(t, path, raw)

	v, err := verifyCmd(t, "quote", "-at", collateralDay, path)
	if err == nil {
		t.Fatal("runVerify accepted a tampered quote")
	}
	if v == nil || v.OK || v.Error == "" || v.Measurements != nil || v.Unverified == nil {
		t.Errorf("verdict = %+v, want a rejection with reason and unverified measurements", v)
	}
}

func TestVerifyQuoteSimulatedRoot(t *testing.T) {
	dir := t.TempDir()
	sim, err := tdx.NewSimulator(tdx.SimulatorOptions{Dir: dir, MRTD: make([]byte, 48)})
	if err != nil {
		t.Fatal(err)
	}

	q, err := sim.Quote(context.Background(), [64]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "quote.dat")
	writeTestFile(t, path, q)

	root := filepath.Join(dir, "root.pem")
	if v, err := verifyCmd(t, "quote", "-root", root, path); err != nil || !v.OK {
		t.Errorf("with -root: verdict = %+v, error = %v; want ok", v, err)
	}
	if v, err := verifyCmd(t, "quote", path); err == nil || v.OK {
		t.Errorf("against Intel's root: verdict = %+v; want a rejection", v)
	}
}

func TestVerifyUsage(t *testing.T) {
	tests := map[string][]string{
		"nothing":         nil,
		"token, none":     {"token"},
		"token, two":      {"token", "a.b.c", "d.e.f"},
		"token, bad jwks": {"token", "-jwks", "http://keys.example/certs", "a.b.c"},
		"token, bad rd":   {"token", "-report-data", "abcd", "a.b.c"},
		"unknown":         {"nonce"},
		"no file":         {"quote"},
		"two files":       {"quote", realQuote, realQuote},
		"bad time":        {"quote", "-at", "yesterday", realQuote},
		"collateral file": {"quote", "-collateral", realQuote, realQuote},
		"unknown flag":    {"quote", "-strict", realQuote},
	}

	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runVerify(context.Background(), args, &stdout, &stderr)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Errorf("runVerify error = %v, want a usage error", err)
			}
			if stdout.Len() != 0 {
				t.Errorf("printed %q on a usage error", stdout.String())
			}
		})
	}
}

func TestVerifyHelp(t *testing.T) {
	if err := runVerify(context.Background(), []string{"token", "-h"}, io.Discard,
		io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("token -h: error = %v, want flag.ErrHelp", err)
	}

	for _, args := range [][]string{{"-h"}, {"quote", "-h"}} {
		var stdout, stderr bytes.Buffer
		err := runVerify(context.Background(), args, &stdout, &stderr)
		if !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%v: error = %v, want flag.ErrHelp", args, err)
		}

		for _, want := range []string{"-at", "-collateral", "-root", "verify quote"} {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("%v: help does not mention %q:\n%s", args, want, stderr.String())
			}
		}
	}
}

// localAuthority runs a local trust authority trusting sim on httptest.
func localAuthority(t *testing.T, sim *tdx.Simulator) *ita.Authority {
	t.Helper()
	var h http.Handler = http.NotFoundHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(sim.Root())
	auth, err := ita.NewAuthority(ita.AuthorityOptions{
		URL: srv.URL, APIKey: "verify-test-api-key", SimulatedRoots: roots,
	})
	if err != nil {
		t.Fatal(err)
	}

	h = auth.Handler()
	return auth
}

// tokenCmd runs 'verify token' with args and decodes the printed verdict.
func tokenCmd(t *testing.T, args ...string) (*tokenVerdict, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := runVerify(context.Background(), append([]string{"token"}, args...), &stdout, &stderr)
	if stdout.Len() == 0 {
		return nil, err
	}

	var v tokenVerdict
	if jerr := json.Unmarshal(stdout.Bytes(), &v); jerr != nil {
		t.Fatalf("stdout is not a JSON verdict: %v\n%s", jerr, stdout.String())
	}
	return &v, err
}

func TestVerifyToken(t *testing.T) {
	sim, err := tdx.NewSimulator(tdx.SimulatorOptions{MRTD: bytes.Repeat([]byte{0xab}, 48)})
	if err != nil {
		t.Fatal(err)
	}

	auth := localAuthority(t, sim)
	client, err := ita.NewClient(ita.ClientOptions{BaseURL: auth.URL(),
		APIKey: "verify-test-api-key"})
	if err != nil {
		t.Fatal(err)
	}

	rd := tdx.ReportData{1, 2, 3}
	token, _, err := client.Token(context.Background(), sim, rd[:])
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "token.jwt")
	writeTestFile(t, file, []byte(token+"\n"))
	rdHex := strings.Repeat("0", 128)

	ok := map[string][]string{
		"literal":     {"-jwks", auth.JWKSURL(), "-issuer", auth.URL(), token},
		"file, after": {"@" + file, "--jwks", auth.JWKSURL(), "--issuer", auth.URL()},
		"report data": {"-jwks", auth.JWKSURL(), "-issuer", auth.URL(),
			"-report-data", "010203" + rdHex[6:], token},
	}

	for name, args := range ok {
		t.Run(name, func(t *testing.T) {
			v, err := tokenCmd(t, args...)
			if err != nil {
				t.Fatalf("verify token: %v", err)
			}

			a := v.Appraisal
			if !v.OK || a == nil || a.Type != tdx.TypeSimulated || a.TCB == nil ||
				a.Measurements.MRTD[0] != 0xab || a.Issuer != auth.URL() {
				t.Errorf("verdict = %+v, want a simulated appraisal of the local issuer", v)
			}
		})
	}

	bad := map[string][]string{
		"wrong issuer": {"-jwks", auth.JWKSURL(), "-issuer", "https://other.example", token},
		"report data": {"-jwks", auth.JWKSURL(), "-issuer", auth.URL(), "-report-data", rdHex,
			token},
		"tampered": {"-jwks", auth.JWKSURL(), "-issuer", auth.URL(), token[:len(token)-4] + "AAAA"},
	}

	for name, args := range bad {
		t.Run(name, func(t *testing.T) {
			v, err := tokenCmd(t, args...)
			if err == nil || v == nil || v.OK || v.Error == "" || v.Appraisal != nil {
				t.Errorf("verdict = %+v, error = %v; want a rejection", v, err)
			}
		})
	}
}

func writeTestFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
