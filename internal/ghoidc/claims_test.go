package ghoidc

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestDecodeClaims(t *testing.T) {
	tests := []struct {
		name string
		json string
		want *Claims // nil means an error
	}{
		{"ids as strings", `{"repository_id":"884121234","repository_owner_id":"67890123",
			"actor_id":"7","run_id":"5298213421","run_attempt":"2"}`,
			&Claims{RepositoryID: 884121234, RepositoryOwnerID: 67890123, ActorID: 7,
				RunID: 5298213421, RunAttempt: 2}},
		{"ids as numbers", `{"repository_id":884121234,"repository_owner_id":67890123}`,
			&Claims{RepositoryID: 884121234, RepositoryOwnerID: 67890123}},
		{"null id", `{"repository_id":null}`, &Claims{}},
		{"aud string", `{"aud":"a"}`, &Claims{Audience: []string{"a"}}},
		{"aud array", `{"aud":["a","b"]}`, &Claims{Audience: []string{"a", "b"}}},
		{"fractional time", `{"exp":1748779500.75,"iat":1748779200}`,
			&Claims{Expiry: time.Unix(1748779500, 0).UTC(), IssuedAt: time.Unix(1748779200, 0).UTC()}},
		{"epoch exp is present", `{"exp":0}`, &Claims{Expiry: time.Unix(0, 0).UTC()}},
		{"id not a number", `{"repository_id":"abc"}`, nil},
		{"empty id", `{"repository_owner_id":""}`, nil},
		{"negative id", `{"repository_id":-1}`, nil},
		{"fraction id", `{"repository_id":1.0}`, nil},
		{"exponent id", `{"repository_id":1e3}`, nil},
		{"id overflow", `{"repository_id":"99999999999999999999"}`, nil},
		{"id bool", `{"actor_id":true}`, nil},
		{"aud number", `{"aud":5}`, nil},
		{"exp string", `{"exp":"1748779500"}`, nil},
		{"exp huge", `{"exp":1e300}`, nil},
		{"sub number", `{"sub":5}`, nil},
		{"not an object", `[]`, nil},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeClaims([]byte(tt.json))
			if tt.want == nil {
				if err == nil {
					t.Fatalf("decodeClaims = %+v, want an error", got)
				}
				return
			}

			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestClaimsMarshal(t *testing.T) {
	c := Claims{Audience: []string{"a"}, RepositoryID: 42, Expiry: time.Unix(100, 0)}
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}

	if want := `{"aud":"a","exp":100,"repository_id":"42"}`; string(data) != want {
		t.Errorf("Marshal = %s, want %s", data, want)
	}
}

// FuzzDecodeClaims checks that the decoder never panics and that what it
// accepts survives a round trip through MarshalJSON.
func FuzzDecodeClaims(f *testing.F) {
	f.Add([]byte(`{"repository_id":"884121234","aud":["a"],"exp":1.5}`))
	f.Add([]byte(`{"repository_owner_id":67890123,"aud":"x","nbf":-3,"iat":253402300799}`))
	f.Add([]byte(`{"run_id":"00012","sub":"repo:a/b:ref:refs/heads/main"}`))
	f.Add([]byte(`{"actor_id":"1e3"}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decodeClaims(data)
		if err != nil {
			return
		}

		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal of decoded claims: %v", err)
		}

		again, err := decodeClaims(out)
		if err != nil {
			t.Fatalf("decoding %s: %v", out, err)
		}
		if diff := cmp.Diff(c, again, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("round trip (-first +second):\n%s", diff)
		}
	})
}

// The local issuer's claims_supported must list every claim Claims
// carries.
func TestClaimNamesComplete(t *testing.T) {
	var tags []string
	typ := reflect.TypeFor[wireClaims]()
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		tags = append(tags, name)
	}

	if diff := cmp.Diff(tags, claimNames); diff != "" {
		t.Errorf("claimNames (-wire tags +list):\n%s", diff)
	}
}
