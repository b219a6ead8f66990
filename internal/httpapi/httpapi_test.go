package httpapi

import (
	"errors"
	"net/http"
	"testing"
)

func TestUnmarshalSaysWhatWasWrong(t *testing.T) {
	type principal struct {
		Kind string `json:"kind"`
		ID   int64  `json:"id"`
	}
	type body struct {
		Tenant *principal `json:"tenant"`
		Names  []string   `json:"names"`
		On     bool       `json:"on"`
	}

	tests := []struct {
		name, data, want string
	}{
		{"object expected", `{"tenant":"dev-tenant"}`,
			`invalid body: field "tenant" must be an object, not string`},
		{"nested number", `{"tenant":{"id":"7"}}`,
			`invalid body: field "tenant.id" must be a number, not string`},
		{"array expected", `{"names":"a"}`,
			`invalid body: field "names" must be an array, not string`},
		{"boolean expected", `{"on":1}`,
			`invalid body: field "on" must be a boolean, not number`},
		{"unknown field", `{"tenant":null,"extra":1}`, `invalid body: unknown field "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v body
			err := Unmarshal([]byte(tt.data), &v)

			var he *Error
			if !errors.As(err, &he) || he.Status != http.StatusBadRequest ||
				he.Code != CodeBadRequest || he.Message != tt.want {
				t.Errorf("Unmarshal(%s) = %#v, want a 400 saying %q", tt.data, err, tt.want)
			}
		})
	}

	var v body
	if err := Unmarshal([]byte(`{"tenant":{"kind":"user","id":7},"names":["a"],"on":true}`),
		&v); err != nil || v.Tenant.ID != 7 || !v.On || len(v.Names) != 1 {
		t.Errorf("Unmarshal of a good body = %+v, %v", v, err)
	}
}
