package cloudflare

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/ingress"
)

// Cloudflare error codes the provider branches on.
const (
	// CodeActiveConnections: a tunnel with live connectors cannot be
	// deleted.
	CodeActiveConnections = 1022
	// CodeHostTaken, CodeCNAMEExists and CodeRecordExists: a record for
	// that name is already there.
	CodeHostTaken    = 81053
	CodeCNAMEExists  = 81054
	CodeRecordExists = 81057
)

// APIError is an answer from the Cloudflare API that is not a success: a
// non-2xx status, or a 2xx whose envelope says "success": false. It carries
// Cloudflare's error codes so callers can branch on them. It matches
// [ingress.ErrNotFound] with errors.Is when the status is 404.
type APIError struct {
	// Method and Path name the request (no query, no credentials).
	Method string
	Path   string

	// StatusCode is the HTTP status; 200 for a success:false envelope.
	StatusCode int

	// Codes and Messages are the envelope's errors, in order.
	Codes    []int
	Messages []string

	// RayID is Cloudflare's request id (the Cf-Ray header), for support.
	RayID string
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cloudflare: %s %s: status %d", e.Method, e.Path, e.StatusCode)

	for i, c := range e.Codes {
		fmt.Fprintf(&b, "; %d %s", c, e.Messages[i])
	}

	if e.RayID != "" {
		fmt.Fprintf(&b, " (ray %s)", e.RayID)
	}
	return b.String()
}

// Is makes errors.Is(err, ingress.ErrNotFound) true for a 404.
func (e *APIError) Is(target error) bool {
	return target == ingress.ErrNotFound && e.NotFound()
}

// HasCode reports whether Cloudflare sent the error code.
func (e *APIError) HasCode(code int) bool { return slices.Contains(e.Codes, code) }

// NotFound reports a 404.
func (e *APIError) NotFound() bool { return e.StatusCode == http.StatusNotFound }

// RateLimited reports a 429.
func (e *APIError) RateLimited() bool { return e.StatusCode == http.StatusTooManyRequests }

// Temporary reports an error worth retrying: 429 or a 5xx.
func (e *APIError) Temporary() bool { return e.RateLimited() || e.StatusCode >= 500 }

// Auth reports that the token was refused or lacks a permission.
func (e *APIError) Auth() bool {
	return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden ||
		e.HasCode(10000)
}

// Exists reports that a DNS record for the name already exists.
func (e *APIError) Exists() bool {
	return e.HasCode(CodeHostTaken) || e.HasCode(CodeCNAMEExists) || e.HasCode(CodeRecordExists)
}

// newAPIError builds an APIError from a response and its body. A body
// that is not an envelope contributes its first bytes as the message.
func newAPIError(resp *http.Response, body []byte) *APIError {
	e := &APIError{Method: resp.Request.Method, Path: resp.Request.URL.Path,
		StatusCode: resp.StatusCode, RayID: resp.Header.Get("Cf-Ray")}

	var env struct {
		Errors []struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &env) != nil || len(env.Errors) == 0 {
		text := strings.TrimSpace(string(body[:min(len(body), 200)]))
		if text == "" {
			text = http.StatusText(resp.StatusCode)
		}
		e.Codes, e.Messages = []int{0}, []string{strconv.Quote(text)}
		return e
	}

	for _, m := range env.Errors {
		e.Codes = append(e.Codes, m.Code)
		e.Messages = append(e.Messages, m.Message)
	}

	return e
}

// asAPIError returns the APIError in err's chain, if any.
func asAPIError(err error) (*APIError, bool) {
	var e *APIError
	ok := errors.As(err, &e)
	return e, ok
}
