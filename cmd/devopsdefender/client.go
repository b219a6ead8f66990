package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/cpapi"
	"github.com/devopsdefender/devopsdefender/internal/devfleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
)

// The GitHub Actions runtime hands a job these when it has
// "permissions: id-token: write".
const (
	envActionsTokenURL   = "ACTIONS_ID_TOKEN_REQUEST_URL"
	envActionsTokenToken = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
)

// retryDelay is the pause before a deploy's second try; zero means the
// agentapi default. Tests shorten it.
var retryDelay time.Duration

// targetHelp documents the ways of naming an agent, for the client verbs'
// help texts.
const targetHelp = `Choosing the agent and the token (one of):
  --state-dir DIR [--agent NAME]   an agent of a local dev fleet, with a
                                   token minted by its local issuer
  --agent-url URL --token T        any agent, with a token you have
  --oidc --cp-url URL --agent NAME an agent found by VM name in the control
                                   plane's listing, from a GitHub Actions job
                                   with "permissions: id-token: write"; tokens
                                   for --audience come from the Actions
                                   runtime and are renewed a minute before
                                   they expire (--agent-url may replace
                                   --cp-url and --agent)

Environment:
  DD_TOKEN                        bearer token when --token is not given
  DD_CP_URL, DD_OIDC_AUDIENCE     defaults of --cp-url and --audience
  ACTIONS_ID_TOKEN_REQUEST_URL,
  ACTIONS_ID_TOKEN_REQUEST_TOKEN  set by GitHub Actions; used by --oidc
`

// target says which agent a client verb talks to and with which token.
type target struct {
	stateDir string
	agent    string
	agentURL string
	token    string

	oidc     bool
	cpURL    string
	audience string
}

func (t *target) register(fs *flag.FlagSet) {
	fs.StringVar(&t.stateDir, "state-dir", "",
		"find the agent in the dev fleet of this state dir and mint a dev token "+
			"(e.g. ./.devopsdefender/dev)")
	fs.StringVar(&t.agent, "agent", "",
		"agent VM name: in the dev fleet (with --state-dir) or in the control plane (with --oidc)")
	fs.StringVar(&t.agentURL, "agent-url", "", "agent base URL")
	fs.StringVar(&t.token, "token", "",
		"bearer token: a GitHub Actions OIDC token for the fleet (default $DD_TOKEN)")

	fs.BoolVar(&t.oidc, "oidc", false,
		"get tokens from the GitHub Actions runtime of the current job")
	fs.StringVar(&t.cpURL, "cp-url", envOr("DD_CP_URL", ""),
		"control plane URL, to find --agent by VM name with --oidc (DD_CP_URL)")
	fs.StringVar(&t.audience, "audience", envOr("DD_OIDC_AUDIENCE", ""),
		"the fleet's OIDC audience, for --oidc (DD_OIDC_AUDIENCE)")
}

// client resolves the flags into an agent client.
func (t *target) client(ctx context.Context) (*agentapi.Client, error) {
	hc := &http.Client{Transport: localedge.HTTPClient().Transport, Timeout: 2 * time.Minute}
	if t.oidc {
		return t.oidcClient(ctx, hc)
	}

	if t.token == "" {
		t.token = os.Getenv("DD_TOKEN")
	}

	if t.agentURL != "" {
		if t.token == "" {
			return nil, usagef("--agent-url needs --token (or DD_TOKEN), or --oidc")
		}
		if err := checkBearerURL(t.agentURL); err != nil {
			return nil, usagef("--agent-url: %v", err)
		}
		return &agentapi.Client{BaseURL: t.agentURL, Token: t.token, HTTP: hc,
			RetryDelay: retryDelay}, nil
	}
	if t.stateDir == "" {
		return nil, usagef("give --state-dir DIR --agent NAME, --agent-url URL --token T, " +
			"or --oidc --cp-url URL --agent NAME")
	}

	return t.devClient(ctx, hc)
}

// loadRunningFleet reads the dev.json of stateDir, and says how to start
// the fleet when it is not running, rather than letting the first request
// fail to connect.
func loadRunningFleet(stateDir string) (devfleet.State, error) {
	st, err := devfleet.LoadState(stateDir)
	if err != nil {
		return devfleet.State{}, err
	}
	if up, err := devfleet.Running(stateDir); err == nil && !up {
		return devfleet.State{}, fmt.Errorf("the dev fleet of %s is not running: start it with "+
			"`devopsdefender dev --state-dir %s`", stateDir, stateDir)
	}
	return st, nil
}

// devClient finds the agent in dev.json and mints a token from the dev
// fleet's issuer unless one was given.
func (t *target) devClient(ctx context.Context, hc *http.Client) (*agentapi.Client, error) {
	st, err := loadRunningFleet(t.stateDir)
	if err != nil {
		return nil, err
	}

	if t.agent == "" && len(st.Agents) == 1 {
		t.agent = st.Agents[0].Name
	}
	a, err := st.Agent(t.agent)
	if err != nil {
		return nil, err
	}

	tok := t.token
	if tok == "" {
		tok, err = ghoidc.MintFromIssuer(ctx, hc, st.OIDCIssuer, st.OIDCMintSecret,
			st.Owner.MintRequest())
		if err != nil {
			return nil, fmt.Errorf("minting a dev token: %w", err)
		}
	}

	return &agentapi.Client{BaseURL: a.URL, Token: tok, HTTP: hc, RetryDelay: retryDelay}, nil
}

// oidcClient gets tokens from the GitHub Actions runtime and, unless
// --agent-url names the agent, finds it in the control plane's listing.
func (t *target) oidcClient(ctx context.Context, hc *http.Client) (*agentapi.Client, error) {
	switch {
	case t.token != "" || t.stateDir != "":
		return nil, usagef("--oidc excludes --token and --state-dir")
	case t.audience == "":
		return nil, usagef("--oidc needs --audience (or DD_OIDC_AUDIENCE), the fleet's audience")
	case t.agentURL == "" && (t.cpURL == "" || t.agent == ""):
		return nil, usagef("--oidc needs --cp-url URL (or DD_CP_URL) and --agent NAME, " +
			"or --agent-url URL")
	}

	reqURL, reqToken := os.Getenv(envActionsTokenURL), os.Getenv(envActionsTokenToken)
	if reqURL == "" || reqToken == "" {
		return nil, fmt.Errorf("--oidc: %s and %s are unset: run in a GitHub Actions job "+
			"with \"permissions: id-token: write\"", envActionsTokenURL, envActionsTokenToken)
	}
	ts := &tokenSource{now: time.Now, fetch: func(ctx context.Context) (string, error) {
		return ghoidc.FetchActionsToken(ctx, hc, reqURL, reqToken, t.audience)
	}}

	agentURL := t.agentURL
	if agentURL == "" {
		var err error
		if agentURL, err = findAgent(ctx, hc, t.cpURL, t.agent, ts); err != nil {
			return nil, err
		}
	}

	if err := checkBearerURL(agentURL); err != nil {
		return nil, fmt.Errorf("agent URL: %w", err)
	}
	return &agentapi.Client{BaseURL: agentURL, Tokens: ts, HTTP: hc,
		RetryDelay: retryDelay}, nil
}

// findAgent returns the URL of the agent whose VM name is name, from the
// control plane's GET /api/agents. The request carries the same OIDC
// token as the deploy: the control plane admits the fleet's CI principal
// there. A dead agent is never chosen; if a name was registered more than
// once, the most recently seen record wins.
func findAgent(ctx context.Context, hc *http.Client, cpURL, name string,
	ts agentapi.TokenSource) (string, error) {
	agents, err := listAgents(ctx, hc, cpURL, ts)
	if err != nil {
		return "", err
	}

	var best *cpapi.Agent
	names := make([]string, 0, len(agents))
	for i, a := range agents {
		names = append(names, a.VMName)
		if a.VMName != name || a.Status == "dead" {
			continue
		}
		if best == nil || lastSeen(a).After(lastSeen(*best)) {
			best = &agents[i]
		}
	}

	switch {
	case best == nil:
		return "", fmt.Errorf("no live agent %q in the control plane's listing (agents: %v)",
			name, names)
	case best.URL == "":
		return "", fmt.Errorf("agent %q has no URL in the control plane's listing", name)
	}
	return best.URL, nil
}

func lastSeen(a cpapi.Agent) time.Time {
	t, _ := time.Parse(time.RFC3339, a.LastSeen)
	return t
}

// listAgents fetches GET <cp>/api/agents.
func listAgents(ctx context.Context, hc *http.Client, cpURL string,
	ts agentapi.TokenSource) ([]cpapi.Agent, error) {
	if err := checkBearerURL(cpURL); err != nil {
		return nil, usagef("--cp-url: %v", err)
	}
	tok, err := ts.Token(ctx)
	if err != nil {
		return nil, fmt.Errorf("getting a token: %w", err)
	}

	endpoint := strings.TrimRight(cpURL, "/") + "/api/agents"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")

	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	defer resp.Body.Close()

	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Code, Message string }
		json.Unmarshal(body, &e)
		return nil, fmt.Errorf("listing agents: control plane answered %d %s: %s",
			resp.StatusCode, e.Code, e.Message)
	}

	var agents []cpapi.Agent
	if err := json.Unmarshal(body, &agents); err != nil {
		return nil, fmt.Errorf("listing agents: decoding reply: %w", err)
	}
	return agents, nil
}

// checkBearerURL refuses to send a bearer token in clear text: the URL
// must be https, or http to a loopback or *.localhost host (the dev fleet).
func checkBearerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", raw)
	}

	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); localedge.IsLocalhost(host) || ip != nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("%q: plain http only to loopback; use https", raw)
	}

	return fmt.Errorf("%q: scheme must be https", raw)
}

// explain turns an agent error into a message for a person.
func explain(err error) error {
	var ae *agentapi.APIError
	if !errors.As(err, &ae) {
		return err
	}

	switch ae.Status {
	case http.StatusUnauthorized:
		return fmt.Errorf("not authenticated: %s (is the token valid and unexpired?)", ae.Message)
	case http.StatusForbidden:
		return fmt.Errorf("not allowed: %s (the token's repository is neither the fleet "+
			"owner's nor the agent tenant's)", ae.Message)
	}
	return err
}
