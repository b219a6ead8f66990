// Package websessiontest signs a test browser in through the control
// plane's GitHub sign-in and the local GitHub provider, the way a person
// clicks through it, for tests of servers that mount websession.
package websessiontest

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/websession"
)

// SignIn walks the OAuth flow from appURL (the control plane's origin) as
// the local provider's user login, leaving the session cookie in c's jar.
// c must keep cookies, must not follow redirects, and must reach the
// provider's host.
func SignIn(c *http.Client, appURL, login string) error {
	resp, err := c.Get(appURL + websession.StartPath + "?return_to=/")
	if err != nil {
		return fmt.Errorf("starting sign-in: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return fmt.Errorf("starting sign-in: status %d", resp.StatusCode)
	}

	authorize, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return fmt.Errorf("starting sign-in: %w", err)
	}

	// The provider's page posts the chosen login with the authorize
	// parameters back to itself.
	form := url.Values{"login": {login}}
	for k, v := range authorize.Query() {
		form.Set(k, v[0])
	}

	provider := authorize.Scheme + "://" + authorize.Host
	req, err := http.NewRequest(http.MethodPost, provider+"/login/oauth/authorize",
		strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", provider)

	if resp, err = c.Do(req); err != nil {
		return fmt.Errorf("choosing %s: %w", login, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return fmt.Errorf("choosing %s: status %d", login, resp.StatusCode)
	}

	if resp, err = c.Get(resp.Header.Get("Location")); err != nil {
		return fmt.Errorf("returning to the control plane: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		return fmt.Errorf("returning to the control plane: status %d (sign-in refused?)",
			resp.StatusCode)
	}
	return nil
}
