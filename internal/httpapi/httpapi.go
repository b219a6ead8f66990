// Package httpapi holds the JSON conventions every DevOps Defender HTTP
// server shares: handlers return errors, one adapter turns an error into a
// status and a {code, message} body, and request bodies are decoded with a
// size limit and strict type checks before anything changes.
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
)

// Error codes sent in the "code" field of an error body.
const (
	CodeBadRequest   = "BAD_REQUEST"
	CodeUnauthorized = "UNAUTHORIZED"
	CodeForbidden    = "FORBIDDEN"
	CodeNotFound     = "NOT_FOUND"
	CodeConflict     = "CONFLICT"
	CodeTooLarge     = "PAYLOAD_TOO_LARGE"
	CodeUnsupported  = "UNSUPPORTED_MEDIA_TYPE"
	CodeUpstream     = "UPSTREAM"
	CodeUnavailable  = "UNAVAILABLE"
	CodeInternal     = "INTERNAL"
)

// Error is an error with an HTTP status. Message goes to the client; Err is
// only logged.
type Error struct {
	Status  int
	Code    string
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// BadRequest returns a 400 whose message is safe to show.
func BadRequest(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest,
		Message: fmt.Sprintf(format, args...)}
}

// Unauthorized returns a 401: the caller proved no identity.
func Unauthorized(msg string) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: msg}
}

// Forbidden returns a 403: the caller's identity is not allowed.
func Forbidden(msg string) *Error {
	return &Error{Status: http.StatusForbidden, Code: CodeForbidden, Message: msg}
}

// NotFound returns a 404.
func NotFound(msg string) *Error {
	return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: msg}
}

// Upstream returns a 502 for a failure of a component behind this server.
// msg is shown to the caller; err is logged.
func Upstream(msg string, err error) *Error {
	return &Error{Status: http.StatusBadGateway, Code: CodeUpstream, Message: msg, Err: err}
}

// Body is the JSON shape of every error reply.
type Body struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// HandlerFunc is an HTTP handler that reports failure by returning an error.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts h to an http.Handler. An *Error is sent as its status and
// message; any other error is logged and sent as a generic 500, so internal
// details never reach the client.
func Handle(log *slog.Logger, h HandlerFunc) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			WriteError(log, w, r, err)
		}
	})
}

// WriteError sends err as a JSON error body.
func WriteError(log *slog.Logger, w http.ResponseWriter, r *http.Request, err error) {
	var he *Error
	if !errors.As(err, &he) {
		he = &Error{Status: http.StatusInternalServerError, Code: CodeInternal,
			Message: "internal error", Err: err}
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		he = &Error{Status: 499, Code: "CLIENT_CLOSED", Message: "client closed request", Err: err}
	}

	level := slog.LevelInfo
	if he.Status >= 500 {
		level = slog.LevelError
	}

	log.Log(r.Context(), level, "request failed", "method", r.Method, "path", r.URL.Path,
		"status", he.Status, "code", he.Code, "err", err)
	WriteJSON(w, he.Status, Body{Code: he.Code, Message: he.Message})
}

// WriteJSON sends v with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

// DefaultMaxBody is the request body limit when none is given.
const DefaultMaxBody = 1 << 20

// ReadBody reads a JSON request body of at most max bytes (0 means
// [DefaultMaxBody]). It requires a JSON content type when one is given and
// a JSON object as the body.
func ReadBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxBody
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		return nil, &Error{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupported,
			Message: "content type must be application/json"}
	}

	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
			Message: fmt.Sprintf("body exceeds %d bytes", max)}
	}
	if err != nil {
		return nil, BadRequest("reading body failed")
	}

	trimmed := strings.TrimSpace(string(data))
	if !strings.HasPrefix(trimmed, "{") {
		return nil, BadRequest("body must be a JSON object")
	}
	if !json.Valid(data) {
		return nil, BadRequest("body is not valid JSON")
	}

	return data, nil
}

// DecodeBody reads a JSON object body into v, refusing unknown fields.
func DecodeBody(w http.ResponseWriter, r *http.Request, max int64, v any) error {
	data, err := ReadBody(w, r, max)
	if err != nil {
		return err
	}
	return Unmarshal(data, v)
}

// Unmarshal decodes a JSON object into v, refusing unknown fields, and
// reports a mistake as a 400.
func Unmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return BadRequest("invalid body: %s", jsonMistake(err))
	}
	return nil
}

// jsonMistake says what was wrong with a JSON body in the terms of the
// JSON the caller sent, not of the Go types it was decoded into.
func jsonMistake(err error) string {
	var typeErr *json.UnmarshalTypeError
	if !errors.As(err, &typeErr) {
		// Unknown fields and syntax errors already name what the caller
		// wrote.
		return strings.TrimPrefix(err.Error(), "json: ")
	}

	field := typeErr.Field
	if field == "" {
		field = "the body"
	} else {
		field = fmt.Sprintf("field %q", field)
	}
	return fmt.Sprintf("%s must be %s, not %s", field, jsonKind(typeErr.Type), typeErr.Value)
}

// jsonKind names the JSON value that decodes into t.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "an object"
}

func isJSON(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.TrimSpace(strings.ToLower(mt))
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// BearerToken returns the token of an "Authorization: Bearer" header, or "".
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return ""
	}
	return strings.TrimSpace(h[7:])
}
