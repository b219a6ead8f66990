package attestbind

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"testing"
)

func testKeys(t *testing.T) (Keys, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	noise := bytes.Repeat([]byte{7}, KeySize)
	return Keys{Signing: pub, Noise: noise}, priv
}

func TestReportDataBindsEveryInput(t *testing.T) {
	k, _ := testKeys(t)
	k2, _ := testKeys(t)
	nonce := bytes.Repeat([]byte{1}, NonceSize)
	nonce2 := bytes.Repeat([]byte{2}, NonceSize)
	noise2 := Keys{Signing: k.Signing, Noise: bytes.Repeat([]byte{8}, KeySize)}

	base, err := ReportData(PurposeRegister, nonce, k)
	if err != nil {
		t.Fatal(err)
	}

	again, _ := ReportData(PurposeRegister, nonce, k)
	if base != again {
		t.Fatal("ReportData is not deterministic")
	}

	variants := map[string]func() ([64]byte, error){
		"purpose":     func() ([64]byte, error) { return ReportData(PurposeReattest, nonce, k) },
		"nonce":       func() ([64]byte, error) { return ReportData(PurposeRegister, nonce2, k) },
		"signing key": func() ([64]byte, error) { return ReportData(PurposeRegister, nonce, k2) },
		"noise key":   func() ([64]byte, error) { return ReportData(PurposeRegister, nonce, noise2) },
	}
	for name, f := range variants {
		got, err := f()
		if err != nil {
			t.Fatal(err)
		}
		if got == base {
			t.Errorf("changing the %s does not change report_data", name)
		}
	}
}

func TestReportDataRejectsBadInput(t *testing.T) {
	k, _ := testKeys(t)
	nonce := make([]byte, NonceSize)
	bad := []struct {
		name    string
		purpose string
		nonce   []byte
		keys    Keys
	}{
		{"purpose", "login", nonce, k},
		{"short nonce", PurposeRegister, nonce[:16], k},
		{"short noise key", PurposeRegister, nonce, Keys{Signing: k.Signing, Noise: []byte{1}}},
		{"no signing key", PurposeRegister, nonce, Keys{Noise: k.Noise}},
	}
	for _, b := range bad {
		if _, err := ReportData(b.purpose, b.nonce, b.keys); err == nil {
			t.Errorf("%s: ReportData accepted bad input", b.name)
		}
	}
}

func TestSignatures(t *testing.T) {
	k, priv := testKeys(t)
	other, _ := testKeys(t)
	body := []byte(`{"vm_name":"vm-1"}`)
	sig := Sign(priv, body)
	if err := VerifySignature(k.Signing, body, sig); err != nil {
		t.Fatalf("valid signature refused: %v", err)
	}
	if err := VerifySignature(k.Signing, []byte(`{"vm_name":"vm-2"}`), sig); err == nil {
		t.Error("signature over another body accepted")
	}
	if err := VerifySignature(other.Signing, body, sig); err == nil {
		t.Error("signature checked with another key accepted")
	}

	if err := VerifySignature(k.Signing, body, "!!"); err == nil {
		t.Error("malformed signature accepted")
	}
}

func TestDecodeKeys(t *testing.T) {
	k, _ := testKeys(t)
	s := base64.StdEncoding.EncodeToString(k.Signing)
	n := base64.StdEncoding.EncodeToString(k.Noise)
	got, err := DecodeKeys(s, n)
	if err != nil || !bytes.Equal(got.Signing, k.Signing) || !bytes.Equal(got.Noise, k.Noise) {
		t.Fatalf("DecodeKeys = %v, %v", got, err)
	}

	for _, bad := range [][2]string{{"", n}, {s, ""}, {s, "AAAA"}, {"%%%", n}} {
		if _, err := DecodeKeys(bad[0], bad[1]); err == nil {
			t.Errorf("DecodeKeys(%q, %q) accepted bad keys", bad[0], bad[1])
		}
	}
}
