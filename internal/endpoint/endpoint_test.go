package endpoint

import "testing"

func TestCheck(t *testing.T) {
	tests := []struct {
		url        string
		ok, baseOK bool
	}{
		{"https://token.actions.githubusercontent.com", true, true},
		{"https://example.com/path", true, true},
		{"http://127.0.0.1:8700", true, true},
		{"http://[::1]:8700/certs", true, true},
		{"http://localhost:8700", true, true},
		{"https://runner.example/token?api-version=2.0", true, false},
		{"http://127.0.0.1:1/#frag", true, false},
		{"http://example.com", false, false},
		{"http://localhost.example.com", false, false},
		{"http://10.0.0.1", false, false},
		{"ftp://127.0.0.1", false, false},
		{"example.com", false, false},
		{"/certs", false, false},
		{"https://user:pass@example.com", false, false},
		{"https://exa mple.com", false, false},
		{"", false, false},
	}
	for _, tt := range tests {
		if err := Check(tt.url); (err == nil) != tt.ok {
			t.Errorf("Check(%q) = %v, want ok=%v", tt.url, err, tt.ok)
		}
		if err := CheckBase(tt.url); (err == nil) != tt.baseOK {
			t.Errorf("CheckBase(%q) = %v, want ok=%v", tt.url, err, tt.baseOK)
		}
	}
}
