package fleet

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress"
	"github.com/devopsdefender/devopsdefender/internal/tdx"
)

// agentColumns, insertAgent, encodeAgent and scanAgent must list the
// columns in the same order.
const agentColumns = `id, vm_name, hostname, url, origin, status, registered_at, last_seen,
	att_type, att_quote_format, att_quote_b64, att_report_data_b64, att_verified,
	att_status, att_mrtd, att_tcb_status, att_verified_at, units, token_hash, last_error,
	signing_key, noise_key, att_measurements, att_tcb_date, tenant_kind, tenant_name, tenant_id,
	tunnel_id, ingress_claims`

const insertAgent = "INSERT INTO agents (" + agentColumns + `)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
		?, ?)`

func encodeAgent(a *Agent) ([]any, error) {
	units := a.Units
	if units == nil {
		units = []agentapi.Unit{}
	}

	data, err := json.Marshal(units)
	if err != nil {
		return nil, fmt.Errorf("encoding units: %w", err)
	}
	at := &a.Attestation
	m, err := encodeMeasurements(at.Measurements)
	if err != nil {
		return nil, err
	}

	var tk, tn string
	var tid int64
	if p := a.Tenant; p != nil {
		tk, tn, tid = string(p.Kind), p.Name, p.ID
	}

	claims, err := encodeClaims(a.Claims)
	if err != nil {
		return nil, err
	}
	return []any{a.ID, a.VMName, a.Hostname, a.URL, a.Origin, string(a.Status),
		formatTime(a.RegisteredAt), formatTime(a.LastSeen),
		at.Type, at.QuoteFormat, at.QuoteB64, at.ReportDataB64, at.Verified,
		at.Status, at.MRTD, at.TCBStatus, formatTime(at.VerifiedAt),
		string(data), a.TokenHash, a.LastError,
		base64.StdEncoding.EncodeToString(a.SigningKey),
		base64.StdEncoding.EncodeToString(a.NoiseKey), m, formatTime(at.TCBDate),
		tk, tn, tid, a.TunnelID, claims}, nil
}

// encodeClaims stores hostname claims as a JSON array ("[]" for none).
func encodeClaims(claims []ingress.Claim) (string, error) {
	if claims == nil {
		claims = []ingress.Claim{}
	}
	data, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encoding claims: %w", err)
	}

	return string(data), nil
}

// encodeMeasurements stores verified measurements as JSON ("" for none).
func encodeMeasurements(m *tdx.Measurements) (string, error) {
	if m == nil {
		return "", nil
	}

	data, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encoding measurements: %w", err)
	}
	return string(data), nil
}

// decodeRest decodes the columns added in schema v2.
func decodeRest(a *Agent, signing, noise, meas, tcbDate string) error {
	var err error
	if a.SigningKey, err = decodeKey(signing); err != nil {
		return fmt.Errorf("agent %s: signing_key: %w", a.ID, err)
	}
	if a.NoiseKey, err = decodeKey(noise); err != nil {
		return fmt.Errorf("agent %s: noise_key: %w", a.ID, err)
	}
	if meas != "" {
		a.Attestation.Measurements = new(tdx.Measurements)
		if err := json.Unmarshal([]byte(meas), a.Attestation.Measurements); err != nil {
			return fmt.Errorf("agent %s: att_measurements: %w", a.ID, err)
		}
	}

	if a.Attestation.TCBDate, err = parseTime(tcbDate); err != nil {
		return fmt.Errorf("agent %s: att_tcb_date: %w", a.ID, err)
	}
	return nil
}

// decodeClaims reads stored claims; none is nil.
func decodeClaims(s string) ([]ingress.Claim, error) {
	var claims []ingress.Claim
	if err := json.Unmarshal([]byte(s), &claims); err != nil || len(claims) == 0 {
		return nil, err
	}
	return claims, nil
}

type rowScanner interface {
	Scan(dest ...any) error
}

func scanAgent(row rowScanner) (Agent, error) {
	var (
		a                         Agent
		status, units             string
		registered, seen, checked string
		signing, noise, meas, tcb string
		tenantKind, tenantName    string
		tenantID                  int64
		claims                    string
	)

	at := &a.Attestation
	err := row.Scan(&a.ID, &a.VMName, &a.Hostname, &a.URL, &a.Origin, &status,
		&registered, &seen,
		&at.Type, &at.QuoteFormat, &at.QuoteB64, &at.ReportDataB64, &at.Verified,
		&at.Status, &at.MRTD, &at.TCBStatus, &checked,
		&units, &a.TokenHash, &a.LastError, &signing, &noise, &meas, &tcb,
		&tenantKind, &tenantName, &tenantID, &a.TunnelID, &claims)
	if err != nil {
		return Agent{}, err
	}
	if err := decodeRest(&a, signing, noise, meas, tcb); err != nil {
		return Agent{}, err
	}

	if tenantKind != "" {
		a.Tenant = &ghoidc.Principal{Kind: ghoidc.Kind(tenantKind), Name: tenantName,
			ID: tenantID}
	}

	a.Status = Status(status)
	if a.RegisteredAt, err = parseTime(registered); err != nil {
		return Agent{}, fmt.Errorf("agent %s: registered_at: %w", a.ID, err)
	}
	if a.LastSeen, err = parseTime(seen); err != nil {
		return Agent{}, fmt.Errorf("agent %s: last_seen: %w", a.ID, err)
	}
	if at.VerifiedAt, err = parseTime(checked); err != nil {
		return Agent{}, fmt.Errorf("agent %s: att_verified_at: %w", a.ID, err)
	}
	if err := json.Unmarshal([]byte(units), &a.Units); err != nil {
		return Agent{}, fmt.Errorf("agent %s: units: %w", a.ID, err)
	}

	if a.Claims, err = decodeClaims(claims); err != nil {
		return Agent{}, fmt.Errorf("agent %s: ingress_claims: %w", a.ID, err)
	}
	return a, nil
}

// querier is what *sql.DB and *sql.Tx share.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func queryAgents(ctx context.Context, q querier, query string, args ...any) ([]Agent, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()

	var agents []Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
	}

	return agents, rows.Err()
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// decodeKey decodes a stored key; "" (an agent of schema v1) is nil.
func decodeKey(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	return base64.StdEncoding.DecodeString(s)
}
