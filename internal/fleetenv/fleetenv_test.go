package fleetenv

import "testing"

func TestParse(t *testing.T) {
	tests := []struct {
		in        string
		want      Env
		wantErr   bool
		protected bool
	}{
		{"production", Production, false, true},
		{"staging", Staging, false, true},
		{"dev", Dev, false, false},
		{"pr-42", "pr-42", false, false},
		{" bot ", "bot", false, false},
		{"prod", "", true, false},
		{"", "", true, false},
		{"Production", "", true, false},
		{"-x", "", true, false},
		{"a.b", "", true, false},
		{"abcdefghijabcdefghijabcdefghijabc", "", true, false},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("Parse(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil && got.Protected() != tt.protected {
			t.Errorf("Parse(%q).Protected() = %v, want %v", tt.in, got.Protected(), tt.protected)
		}
	}
}

func TestRequireReal(t *testing.T) {
	if err := Production.RequireReal("the local issuer", true); err == nil {
		t.Error("production accepted a stand-in")
	}
	if err := Staging.RequireReal("the local issuer", true); err == nil {
		t.Error("staging accepted a stand-in")
	}
	if err := Production.RequireReal("the local issuer", false); err != nil {
		t.Errorf("production refused the real thing: %v", err)
	}
	if err := Env("pr-1").RequireReal("the local issuer", true); err != nil {
		t.Errorf("a preview refused a stand-in: %v", err)
	}
}
