package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
	"github.com/devopsdefender/devopsdefender/internal/devfleet"
	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/ingress/localedge"
)

// target says which agent a client verb talks to and with which token.
type target struct {
	stateDir string
	agent    string
	agentURL string
	token    string
}

func (t *target) register(fs *flag.FlagSet) {
	fs.StringVar(&t.stateDir, "state-dir", "",
		"find the agent in the dev fleet of this state dir and mint a dev token "+
			"(e.g. ./.devopsdefender/dev)")
	fs.StringVar(&t.agent, "agent", "", "agent name in the dev fleet (with --state-dir)")
	fs.StringVar(&t.agentURL, "agent-url", "", "agent base URL (instead of --state-dir)")
	fs.StringVar(&t.token, "token", os.Getenv("DD_TOKEN"),
		"bearer token: a GitHub Actions OIDC token for the fleet (env DD_TOKEN)")
}

// client resolves the flags into an agent client.
func (t *target) client(ctx context.Context) (*agentapi.Client, error) {
	hc := &http.Client{Transport: localedge.HTTPClient().Transport, Timeout: 2 * time.Minute}
	if t.agentURL != "" {
		if t.token == "" {
			return nil, usagef("--agent-url needs --token (or DD_TOKEN)")
		}
		return &agentapi.Client{BaseURL: t.agentURL, Token: t.token, HTTP: hc}, nil
	}
	if t.stateDir == "" {
		return nil, usagef("give --state-dir DIR --agent NAME, or --agent-url URL --token T")
	}
	st, err := devfleet.LoadState(t.stateDir)
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
	return &agentapi.Client{BaseURL: a.URL, Token: tok, HTTP: hc}, nil
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
		return fmt.Errorf("not allowed: %s (the token's repository owner is not this "+
			"fleet's owner)", ae.Message)
	}
	return err
}
