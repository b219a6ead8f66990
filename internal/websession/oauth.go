package websession

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/oauth2"

	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// oauthState travels through GitHub in the state parameter, signed and
// encrypted. It binds the round trip to the browser that started it: the
// nonce cookie must hash to NonceHash.
type oauthState struct {
	ReturnTo  string `json:"r"`
	NonceHash string `json:"n"`
	Expires   int64  `json:"e"`
}

// loginPage offers "Sign in with GitHub" rather than redirecting at once,
// so that signing out does not sign straight back in through GitHub's own
// session.
func (s *Service) loginPage(w http.ResponseWriter, r *http.Request) error {
	ret, err := s.cfg.checkReturnTo(r.URL.Query().Get("return_to"))
	if err != nil {
		ret = "/"
	}

	return render(w, http.StatusOK, "login.html", loginData{
		StartURL:  StartPath + "?" + url.Values{"return_to": {ret}}.Encode(),
		SignedOut: r.URL.Query().Get("signed_out") != "",
	})
}

// start sends the browser to GitHub's authorize page (auth.md §1.5). The
// nonce is also the PKCE verifier, so a stolen code is useless without the
// browser's cookie.
func (s *Service) start(w http.ResponseWriter, r *http.Request) error {
	ret, err := s.cfg.checkReturnTo(r.URL.Query().Get("return_to"))
	if err != nil {
		return httpapi.BadRequest("%s", err.Error())
	}

	nonce := oauth2.GenerateVerifier()
	state, err := s.state.Encode(codecState, oauthState{
		ReturnTo: ret, NonceHash: secretID(nonce),
		Expires: s.now().Add(s.cfg.DeviceCodeTTL).Unix(),
	})
	if err != nil {
		return err
	}

	s.setCookie(w, s.cookies.nonce, nonce, int(s.cfg.DeviceCodeTTL/time.Second), "")
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, s.oauth.AuthCodeURL(state, oauth2.S256ChallengeOption(nonce)),
		http.StatusFound)
	return nil
}

// callback finishes the sign-in (auth.md §1.6): state and nonce, code
// exchange, GET /user, classification, then a new session.
func (s *Service) callback(w http.ResponseWriter, r *http.Request) error {
	ctx, q := r.Context(), r.URL.Query()
	// The nonce is single-use whatever happens next.
	s.setCookie(w, s.cookies.nonce, "", -1, "")
	w.Header().Set("Cache-Control", "no-store")

	if e := q.Get("error"); e != "" {
		s.log.InfoContext(ctx, "sign-in cancelled at GitHub", "error", e)
		return httpapi.Forbidden("GitHub sign-in was not completed")
	}

	st, nonce, err := s.checkState(r)
	if err != nil {
		return err
	}
	who, err := s.identify(ctx, q.Get("code"), nonce)
	if err != nil {
		return err
	}

	class, err := s.rule.Classify(ctx, who)
	if err != nil {
		s.emit(ctx, Event{Action: ActionLogin, Outcome: OutcomeError, Login: who.Login,
			UserID: who.ID, Details: map[string]any{"reason": "classification failed"}})
		return httpapi.Upstream("could not check your access", err)
	}

	if class.Role == "" {
		s.log.InfoContext(ctx, "sign-in refused", "login", who.Login, "user_id", who.ID)
		s.emit(ctx, Event{Action: ActionLogin, Outcome: OutcomeDenied, Login: who.Login,
			UserID: who.ID, Details: map[string]any{"reason": "not a fleet admin or tenant"}})
		return httpapi.Forbidden("GitHub user " + who.Login +
			" is neither an administrator nor a tenant of this fleet: a person becomes a " +
			"tenant when a fleet admin assigns them an agent (on the agent's page)")
	}
	return s.signIn(w, r, who, class, st.ReturnTo)
}

// checkState verifies the state parameter and its nonce cookie and
// returns the state and the nonce.
func (s *Service) checkState(r *http.Request) (oauthState, string, error) {
	var st oauthState
	raw := r.URL.Query().Get("state")
	if raw == "" {
		return st, "", httpapi.BadRequest("missing state")
	}
	if err := s.state.Decode(codecState, raw, &st); err != nil {
		return st, "", httpapi.BadRequest("invalid sign-in state")
	}
	if s.now().Unix() >= st.Expires {
		return st, "", httpapi.BadRequest("sign-in took too long; start again")
	}

	c, err := r.Cookie(s.cookies.nonce)
	if err != nil || subtle.ConstantTimeCompare([]byte(secretID(c.Value)),
		[]byte(st.NonceHash)) != 1 {
		return st, "", httpapi.BadRequest("sign-in was started in another browser or tab")
	}

	// Re-check: the rule may have changed since the state was made.
	if _, err := s.cfg.checkReturnTo(st.ReturnTo); err != nil {
		return st, "", httpapi.BadRequest("%s", err.Error())
	}
	return st, c.Value, nil
}

// identify exchanges the code for the user's token and reads who they
// are. The token is used for this sign-in's lookups only and then dropped.
func (s *Service) identify(ctx context.Context, code, verifier string) (Identity, error) {
	if code == "" {
		return Identity{}, httpapi.BadRequest("missing code")
	}

	octx := context.WithValue(ctx, oauth2.HTTPClient, s.cfg.HTTPClient)
	tok, err := s.oauth.Exchange(octx, code, oauth2.VerifierOption(verifier))
	var re *oauth2.RetrieveError
	switch {
	case errors.As(err, &re) && re.ErrorCode == "bad_verification_code":
		return Identity{}, httpapi.BadRequest("GitHub refused the sign-in code; start again")
	case err != nil:
		return Identity{}, httpapi.Upstream("GitHub code exchange failed", err)
	}

	gh := &githubAPI{base: s.cfg.apiURL, client: s.cfg.HTTPClient, token: tok.AccessToken}
	u, err := gh.user(ctx)
	if err != nil {
		return Identity{}, httpapi.Upstream("GitHub user lookup failed", err)
	}
	return Identity{Login: u.Login, ID: u.ID, Standing: gh.standing}, nil
}

// signIn ends the browser's previous session, if any, so that a session
// id never outlives a sign-in, then records and sets the new one.
func (s *Service) signIn(w http.ResponseWriter, r *http.Request, who Identity,
	class Classification, returnTo string) error {
	ctx := r.Context()
	if old, err := s.Authenticate(r); err == nil {
		if err := s.Revoke(ctx, old.ID); err != nil {
			return err
		}
	}

	g := grant{Login: who.Login, UserID: who.ID, Role: class.Role, Agents: class.Agents}
	value, sess, err := s.createSession(ctx, s.cfg.DB, g, ClientBrowser, nil)
	if err != nil {
		return err
	}

	s.setSessionCookie(w, value)
	s.log.InfoContext(ctx, "signed in", "login", who.Login, "user_id", who.ID,
		"role", class.Role, "session", sess.ID)
	s.emit(ctx, Event{Action: ActionLogin, Outcome: OutcomeOK, Login: who.Login,
		UserID: who.ID, Role: class.Role, Session: sess.ID,
		Details: map[string]any{"client": string(ClientBrowser), "agents": nonNil(class.Agents)}})
	http.Redirect(w, r, returnTo, http.StatusSeeOther)
	return nil
}
