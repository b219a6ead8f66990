package websession

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/gorilla/securecookie"
	"golang.org/x/oauth2"

	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
	"github.com/devopsdefender/devopsdefender/internal/httpapi"
)

// Paths served by [Service.Mount].
const (
	LoginPath       = "/auth/login"
	StartPath       = "/auth/github/start"
	CallbackPath    = "/auth/github/callback"
	DeviceStartPath = "/auth/device/start"
	DevicePollPath  = "/auth/device/poll"
	DevicePath      = "/auth/device"
	LogoutPath      = "/logout"
)

// Names under which securecookie signs each kind of value. The name is
// part of the MAC, so a state cannot pass as a session, nor a cookie as a
// bearer token (auth.md §7.13).
const (
	codecState  = "dd-oauth-state"
	codecCookie = "dd-session-cookie"
	codecBearer = "dd-session-bearer"
)

// Service is the GitHub OAuth broker, the session store and the device
// flow of one control plane. Create it with [New] and [Service.Mount] its
// routes. It starts no goroutines; call [Service.Prune] now and then to
// drop ended sessions.
type Service struct {
	cfg   *config
	log   *slog.Logger
	now   func() time.Time
	rule  Rule
	oauth *oauth2.Config

	// Codecs sign and encrypt, each with a max age just above the life
	// of what it carries; the database decides expiry exactly.
	state, cookie, bearer *securecookie.SecureCookie

	cookies cookieNames
	cop     *http.CrossOriginProtection
}

// New validates opts, migrates the tables and returns a Service.
func New(ctx context.Context, opts Options) (*Service, error) {
	cfg, err := opts.validate()
	if err != nil {
		return nil, err
	}

	if err := Migrate(ctx, cfg.DB.SQL()); err != nil {
		return nil, err
	}

	secret := cfg.Secret
	if secret == nil {
		if secret, err = storedSecret(ctx, cfg.DB); err != nil {
			return nil, fmt.Errorf("websession: %w", err)
		}
	}

	s := &Service{
		cfg: cfg, log: cfg.Logger, now: cfg.Now,
		rule: Rule{Owner: cfg.Owner, OrgAdminsOnly: cfg.OrgAdminsOnly,
			TenantAgents: cfg.TenantAgents},
		oauth: &oauth2.Config{
			ClientID:     cfg.GitHub.ClientID,
			ClientSecret: cfg.GitHub.ClientSecret,
			Endpoint: oauth2.Endpoint{
				AuthURL:   cfg.webURL + "/login/oauth/authorize",
				TokenURL:  cfg.webURL + "/login/oauth/access_token",
				AuthStyle: oauth2.AuthStyleInParams,
			},
			RedirectURL: cfg.public.String() + CallbackPath,
			// read:org lets an OAuth app see private org membership; a
			// GitHub App ignores scopes and needs the "Members: read"
			// organization permission instead.
			Scopes: []string{"read:org"},
		},
		cookies: newCookieNames(cfg.secure, cfg.CookieDomain != ""),
	}

	if err := s.initCodecs(secret); err != nil {
		return nil, err
	}
	if err := s.initCrossOrigin(); err != nil {
		return nil, err
	}
	return s, nil
}

// initCodecs derives independent signing and encryption keys from the
// secret, so the secret itself is never a key.
func (s *Service) initCodecs(secret []byte) error {
	hashKey, err := hkdf.Key(sha256.New, secret, nil, "devopsdefender websession mac", 64)
	if err != nil {
		return fmt.Errorf("websession: deriving keys: %w", err)
	}
	blockKey, err := hkdf.Key(sha256.New, secret, nil, "devopsdefender websession aes", 32)
	if err != nil {
		return fmt.Errorf("websession: deriving keys: %w", err)
	}

	codec := func(life time.Duration) *securecookie.SecureCookie {
		c := securecookie.New(hashKey, blockKey)
		c.SetSerializer(securecookie.JSONEncoder{})
		return c.MaxAge(int((life + time.Minute) / time.Second))
	}

	s.state = codec(s.cfg.DeviceCodeTTL)
	s.cookie = codec(s.cfg.SessionTTL)
	s.bearer = codec(s.cfg.DeviceTokenTTL)
	return nil
}

func (s *Service) initCrossOrigin() error {
	s.cop = http.NewCrossOriginProtection()
	for _, o := range s.cfg.TrustedOrigins {
		if err := s.cop.AddTrustedOrigin(o); err != nil {
			return fmt.Errorf("websession: trusted origin: %w", err)
		}
	}
	return nil
}

// Mount registers the routes on mux:
//
//	GET  /auth/login            sign-in page (?return_to=)
//	GET  /auth/github/start     to GitHub (?return_to=)
//	GET  /auth/github/callback  back from GitHub: session cookie, then return_to
//	POST /auth/device/start     a native client asks for a device code
//	POST /auth/device/poll      it polls with {"device_code"} for its token
//	GET  /auth/device           a signed-in person enters the user code
//	POST /auth/device           and approves or denies it (browser session)
//	POST /logout                ends the session of the cookie or bearer
func (s *Service) Mount(mux *http.ServeMux) {
	mux.Handle("GET "+LoginPath, s.handle(s.loginPage))
	mux.Handle("GET "+StartPath, s.handle(s.start))
	mux.Handle("GET "+CallbackPath, s.handle(s.callback))
	mux.Handle("POST "+DeviceStartPath, s.handle(s.deviceStart))
	mux.Handle("POST "+DevicePollPath, s.handle(s.devicePoll))
	mux.Handle("GET "+DevicePath, s.RequireSession(s.handle(s.devicePage)))
	mux.Handle("POST "+DevicePath, s.RequireSession(s.handle(s.deviceDecide)))
	mux.Handle("POST "+LogoutPath, s.handle(s.logout))
}

// handle adapts h like [httpapi.Handle], but answers a browser with an
// HTML page instead of a JSON body.
func (s *Service) handle(h httpapi.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		switch {
		case err == nil:
		case wantsHTML(r):
			s.renderError(w, r, err)
		default:
			httpapi.WriteError(s.log, w, r, err)
		}
	})
}

// Owner returns the fleet owner principal.
func (s *Service) Owner() ghoidc.Principal { return s.cfg.Owner }

func (s *Service) emit(ctx context.Context, e Event) {
	if s.cfg.OnEvent != nil {
		s.cfg.OnEvent(ctx, e)
	}
}
