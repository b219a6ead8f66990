package devfleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/devopsdefender/devopsdefender/internal/ghoidc"
)

// StateFile is the name of the file, in the state directory, that tells
// clients how to reach a running dev fleet.
const StateFile = "dev.json"

// State is the content of dev.json. It holds credentials, so it is written
// with mode 0600.
type State struct {
	CPURL        string `json:"cp_url"`
	EdgeURL      string `json:"edge_url"`
	DashboardURL string `json:"dashboard_url"`
	AdminToken   string `json:"admin_token"`
	OIDCIssuer   string `json:"oidc_issuer"`

	// OIDCAudience is the audience every agent of the fleet requires.
	OIDCAudience string `json:"oidc_audience"`

	// OIDCMintSecret authorizes the local issuer's mint endpoint, which
	// only the dev command line uses.
	OIDCMintSecret string `json:"oidc_mint_secret"`

	// Owner is the fleet owner principal: tokens whose repository owner
	// matches it by name and id may deploy.
	Owner Owner `json:"owner"`

	Agents []StateAgent `json:"agents"`

	// Services locate the fleet's local stand-ins, for a control plane
	// that joins the fleet from another process (`devopsdefender dev cp`).
	Services Services `json:"services"`
}

// Services are the addresses of a running dev fleet's local stand-ins.
// Their credentials stay in the state dir's secrets.json.
type Services struct {
	// Domain is the parent domain of fleet hostnames.
	Domain string `json:"domain"`
	// EdgePort is the local edge's loopback port.
	EdgePort int `json:"edge_port"`
	// EdgeAPIURL is the edge provider's API, the stand-in for
	// Cloudflare's.
	EdgeAPIURL string `json:"edge_api_url"`
	// TrustAuthorityURL and TrustAuthorityJWKSURL locate the local Trust
	// Authority and the keys its tokens are signed with.
	TrustAuthorityURL     string `json:"trust_authority_url"`
	TrustAuthorityJWKSURL string `json:"trust_authority_jwks_url"`
	// GitHubURL is the local GitHub, as browsers reach it on the edge.
	GitHubURL string `json:"github_url"`
}

// Owner is a GitHub principal as dev.json records it.
type Owner struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	ID   int64  `json:"id"`
}

// MintRequest returns a mint request for a token of this owner.
func (o Owner) MintRequest() ghoidc.MintRequest {
	return ghoidc.MintRequest{RepositoryOwner: o.Name, RepositoryOwnerID: o.ID}
}

// StateAgent is one agent of the dev fleet.
type StateAgent struct {
	Name          string `json:"name"`
	URL           string `json:"url"`
	RuntimeSocket string `json:"runtime_socket"`
}

// Agent returns the agent called name.
func (s *State) Agent(name string) (StateAgent, error) {
	for _, a := range s.Agents {
		if a.Name == name {
			return a, nil
		}
	}

	names := make([]string, 0, len(s.Agents))
	for _, a := range s.Agents {
		names = append(names, a.Name)
	}

	return StateAgent{}, fmt.Errorf("no agent %q in the dev fleet (agents: %v)", name, names)
}

// LoadState reads dev.json from dir.
func LoadState(dir string) (State, error) {
	var s State
	data, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return s, fmt.Errorf("no dev fleet state in %s: is `devopsdefender dev` running?", dir)
	}

	if err != nil {
		return s, fmt.Errorf("reading dev fleet state: %w", err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("decoding %s: %w", StateFile, err)
	}
	return s, nil
}

// writeState writes dev.json atomically with mode 0600.
func writeState(dir string, s State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, StateFile), append(data, '\n'), 0o600)
}

// writeFileAtomic writes data to a temporary file and renames it over path.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())

	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}

	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
