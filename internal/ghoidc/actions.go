package ghoidc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/endpoint"
)

// FetchActionsToken asks the GitHub Actions runtime for an OIDC token for
// audience, from inside a workflow job that has "permissions: id-token:
// write". requestURL and requestToken are the job's
// ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN. A nil
// client means one with a 10 s timeout.
//
// The protocol is the one of actions/toolkit's getIDToken: GET the request
// URL with an added "audience" query parameter and "Authorization: bearer
// <request token>"; the reply is {"value": "<jwt>"}.
func FetchActionsToken(ctx context.Context, client *http.Client, requestURL, requestToken,
	audience string) (string, error) {
	if requestURL == "" || requestToken == "" {
		return "", errors.New("ghoidc: actions token: request URL and token are required " +
			"(does the job have id-token: write permission?)")
	}
	if audience == "" {
		return "", errors.New("ghoidc: actions token: audience is required")
	}

	endpoint, err := actionsTokenURL(requestURL, audience)
	if err != nil {
		return "", fmt.Errorf("ghoidc: actions token: %w", err)
	}

	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return "", fmt.Errorf("ghoidc: actions token: %w", err)
	}
	req.Header.Set("Authorization", "bearer "+requestToken)
	req.Header.Set("Accept", "application/json")

	var reply struct {
		Value string `json:"value"`
	}
	if err := doJSON(client, req, &reply); err != nil {
		return "", fmt.Errorf("ghoidc: fetching actions token: %w", err)
	}

	if reply.Value == "" {
		return "", errors.New("ghoidc: fetching actions token: empty value in reply")
	}
	return reply.Value, nil
}

// actionsTokenURL adds the audience to the runner's request URL, which
// already carries a query (api-version=…). The request token is a bearer
// credential, so the URL must be https or loopback http.
func actionsTokenURL(requestURL, audience string) (string, error) {
	if err := endpoint.Check(requestURL); err != nil {
		return "", fmt.Errorf("request URL: %w", err)
	}

	u, err := url.Parse(requestURL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("audience", audience)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
