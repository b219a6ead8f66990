package agent

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
)

// runtimeQuoter has the runtime quote report data, for the Trust
// Authority client.
type runtimeQuoter struct{ a *Agent }

func (q runtimeQuoter) Quote(ctx context.Context, reportData [64]byte) ([]byte, error) {
	att, err := q.a.opts.Runtime.Attest(ctx, reportData[:])
	if err != nil {
		return nil, fmt.Errorf("attesting: %w", err)
	}

	quote, err := base64.StdEncoding.DecodeString(att.QuoteB64)
	if err != nil {
		return nil, fmt.Errorf("decoding the runtime's quote: %w", err)
	}
	return quote, nil
}

// trustAuthorityEvidence trades a quote for a Trust Authority token. The
// binding report data rd travels as the quote's runtime data: the quote
// commits to SHA-512(authority nonce || rd), as Intel's API defines, and
// the token carries rd as held data, which the control plane checks
// against its own nonce and the agent's keys.
func (a *Agent) trustAuthorityEvidence(ctx context.Context, rd [64]byte) (agentapi.Evidence, error) {
	typ := "unknown"
	if h, err := a.opts.Runtime.Health(ctx); err == nil {
		typ = h.AttestationType
	}

	token, quote, err := a.opts.TrustAuthority.Token(ctx, runtimeQuoter{a}, rd[:])
	if err != nil {
		return agentapi.Evidence{}, fmt.Errorf("getting a Trust Authority token: %w", err)
	}

	return agentapi.Evidence{
		AttestationType: typ, QuoteFormat: "tdx",
		QuoteB64:      base64.StdEncoding.EncodeToString(quote),
		ReportDataB64: base64.StdEncoding.EncodeToString(rd[:]), ITAToken: token,
	}, nil
}
