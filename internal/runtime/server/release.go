package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"runtime"
	"strings"

	"github.com/devopsdefender/devopsdefender/internal/workload"
)

const (
	// maxMetadata bounds a release metadata reply.
	maxMetadata = 8 << 20
	// maxAsset bounds one downloaded asset.
	maxAsset = 4 << 30
	// cacheDir holds one sidecar per asset name inside the bin dir.
	cacheDir = ".ee-release"
)

// fetcher places github_release assets in the bin dir (easyenclave.md §2.3,
// §7.4). Fetches are serialised: they all write into one directory.
type fetcher struct {
	apiURL   string
	token    string
	apiHost  string
	localDir string
	binDir   string
	client   *http.Client
	log      *slog.Logger
	sem      chan struct{}
}

func newFetcher(o Options, binDir string) *fetcher {
	f := &fetcher{
		apiURL:   strings.TrimRight(o.GitHubAPIURL, "/"),
		token:    o.GitHubToken,
		localDir: o.LocalAssetsDir,
		binDir:   binDir,
		client:   o.HTTPClient,
		log:      o.Logger,
		sem:      make(chan struct{}, 1),
	}

	if u, err := url.Parse(f.apiURL); err == nil {
		f.apiHost = u.Host
	}
	return f
}

// cacheEntry is the sidecar written after a successful fetch; a later fetch
// of the same repo, tag and asset whose primary path still exists is free.
type cacheEntry struct {
	Repo    string `json:"repo"`
	Tag     string `json:"tag"` // as requested; "" means latest
	Resolve string `json:"resolved_tag"`
	Asset   string `json:"asset"`
	Rename  string `json:"rename,omitempty"`
	Primary string `json:"primary"`
}

// fetch makes rel's asset available and returns its primary path, the
// program that replaces cmd[0].
func (f *fetcher) fetch(ctx context.Context, rel workload.Release) (string, error) {
	select {
	case f.sem <- struct{}{}:
		defer func() { <-f.sem }()
	case <-ctx.Done():
		return "", ctx.Err()
	}

	warnForeignAsset(f.log, rel.Asset)
	primary := f.binPath(primaryPath(rel))

	if local, ok := f.localAsset(rel); ok {
		f.log.Info("using local release asset", "repo", rel.Repo, "asset", rel.Asset, "path", local)
		src, err := os.Open(local)
		if err != nil {
			return "", fmt.Errorf("%s: %w", rel.Repo, err)
		}
		defer src.Close()
		return f.place(rel, "local", src)
	}

	// a pinned tag already in place needs no API call
	if rel.Tag != "" && f.cached(rel, rel.Tag) {
		return primary, nil
	}

	tag, assetURL, err := f.resolve(ctx, rel)
	if err != nil {
		return "", err
	}
	if f.cached(rel, tag) {
		return primary, nil
	}

	f.log.Info("downloading release asset", "repo", rel.Repo, "tag", tag, "asset", rel.Asset)
	resp, err := f.get(ctx, assetURL, "application/octet-stream")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	return f.place(rel, tag, resp.Body)
}

// place streams the asset from src into a temporary file in the bin dir,
// puts it in place as a plain file or an unpacked tarball, and records the
// sidecar. It returns the primary path.
func (f *fetcher) place(rel workload.Release, tag string, src io.Reader) (string, error) {
	root, err := os.OpenRoot(f.binDir)
	if err != nil {
		return "", fmt.Errorf("%s: opening bin dir: %w", rel.Repo, err)
	}
	defer root.Close()

	tmp, err := writeTemp(root, "."+rel.Asset+".download", src, maxAsset)
	if err != nil {
		return "", fmt.Errorf("%s: downloading %s: %w", rel.Repo, rel.Asset, err)
	}
	defer root.Remove(tmp)

	primary := primaryPath(rel)
	if isTarball(rel.Asset) {
		err = unpackTarball(root, tmp)
	} else {
		err = placePlain(root, tmp, rel)
	}
	if err == nil {
		err = chmodIfExists(root, primary)
	}
	if err != nil {
		return "", fmt.Errorf("%s: placing %s: %w", rel.Repo, rel.Asset, err)
	}

	f.remember(root, rel, tag, primary)
	return f.binPath(primary), nil
}

func (f *fetcher) binPath(rel string) string { return path.Join(f.binDir, rel) }

// primaryPath is the asset's program relative to the bin dir: the rename,
// else the asset itself or, for a tarball, its name without the extension.
func primaryPath(rel workload.Release) string {
	if rel.Rename != "" {
		return path.Clean(rel.Rename)
	}

	for _, ext := range []string{".tar.gz", ".tgz"} {
		if stem, ok := strings.CutSuffix(rel.Asset, ext); ok && isTarball(rel.Asset) {
			return stem
		}
	}

	return rel.Asset
}

func isTarball(asset string) bool {
	return strings.HasSuffix(asset, ".tar.gz") || strings.HasSuffix(asset, ".tgz")
}

// localAsset looks for the asset in the offline directory:
// <dir>/<owner>/<repo>/<tag or "latest">/<asset>, then <dir>/<asset>.
func (f *fetcher) localAsset(rel workload.Release) (string, bool) {
	if f.localDir == "" {
		return "", false
	}

	tag := rel.Tag
	if tag == "" {
		tag = "latest"
	}

	for _, p := range []string{
		path.Join(f.localDir, rel.Repo, tag, rel.Asset),
		path.Join(f.localDir, rel.Asset),
	} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, true
		}
	}
	return "", false
}

// cached reports whether the sidecar says this exact repo, tag and asset is
// in place and the primary path still exists.
func (f *fetcher) cached(rel workload.Release, tag string) bool {
	primary := primaryPath(rel)
	data, err := os.ReadFile(path.Join(f.binDir, cacheDir, rel.Asset+".json"))
	if err != nil {
		return false
	}

	var c cacheEntry
	if json.Unmarshal(data, &c) != nil {
		return false
	}
	if c.Repo != rel.Repo || c.Resolve != tag || c.Asset != rel.Asset || c.Primary != primary {
		return false
	}
	if _, err := os.Lstat(f.binPath(primary)); err != nil {
		return false
	}

	f.log.Debug("release asset cached", "repo", rel.Repo, "tag", tag, "asset", rel.Asset)
	return true
}

// remember writes the sidecar; failing to write it only costs a refetch.
func (f *fetcher) remember(root *os.Root, rel workload.Release, tag, primary string) {
	c := cacheEntry{Repo: rel.Repo, Tag: rel.Tag, Resolve: tag, Asset: rel.Asset,
		Rename: rel.Rename, Primary: primary}

	data, _ := json.Marshal(c)
	name := path.Join(cacheDir, rel.Asset+".json")
	err := root.MkdirAll(cacheDir, 0o755)
	if err == nil {
		err = replaceFile(root, name, bytes.NewReader(data), 0o644)
	}
	if err != nil {
		f.log.Warn("writing release cache entry", "asset", rel.Asset, "err", err)
	}
}

// releaseMeta is the part of GitHub's release object the fetch needs.
type releaseMeta struct {
	TagName string `json:"tag_name"`
	Assets  []struct {
		Name string `json:"name"`
		URL  string `json:"browser_download_url"`
	} `json:"assets"`
}

// resolve asks the release API for the tag (or the latest release) and
// returns the resolved tag and the asset's download URL.
func (f *fetcher) resolve(ctx context.Context, rel workload.Release) (string, string, error) {
	u := f.apiURL + "/repos/" + rel.Repo + "/releases/latest"
	if rel.Tag != "" {
		u = f.apiURL + "/repos/" + rel.Repo + "/releases/tags/" + url.PathEscape(rel.Tag)
	}

	resp, err := f.get(ctx, u, "application/vnd.github+json")
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()

	var meta releaseMeta
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxMetadata)).Decode(&meta); err != nil {
		return "", "", fmt.Errorf("GET %s: decoding release: %w", u, err)
	}
	if len(meta.Assets) == 0 {
		return "", "", fmt.Errorf("%s: no assets in release", rel.Repo)
	}

	for _, a := range meta.Assets {
		if a.Name == rel.Asset {
			tag := meta.TagName
			if tag == "" {
				tag = rel.Tag
			}
			return tag, a.URL, nil
		}
	}

	return "", "", fmt.Errorf("%s: asset %s not found", rel.Repo, rel.Asset)
}

// get sends a GET with EasyEnclave's headers and returns a 2xx response.
func (f *fetcher) get(ctx context.Context, u, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}

	req.Header.Set("User-Agent", "easyenclave")
	req.Header.Set("Accept", accept)
	if f.token != "" && f.sendsToken(req.URL) {
		req.Header.Set("Authorization", "Bearer "+f.token)
	}

	resp, err := f.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return resp, nil
}

// sendsToken keeps the GitHub token to the API's own host and github.com,
// whatever download URL a release names.
func (f *fetcher) sendsToken(u *url.URL) bool {
	return u.Host == f.apiHost || u.Host == "github.com"
}

// warnForeignAsset logs when an asset's name suggests another OS or CPU.
func warnForeignAsset(log *slog.Logger, asset string) {
	name := strings.ToLower(asset)
	for _, m := range []struct{ token, goos, goarch string }{
		{"linux", "linux", ""}, {"darwin", "darwin", ""}, {"windows", "windows", ""},
		{"amd64", "", "amd64"}, {"x86_64", "", "amd64"},
		{"arm64", "", "arm64"}, {"aarch64", "", "arm64"},
	} {
		if !strings.Contains(name, m.token) {
			continue
		}
		if (m.goos != "" && m.goos != runtime.GOOS) || (m.goarch != "" && m.goarch != runtime.GOARCH) {
			log.Warn("release asset looks built for another platform", "asset", asset,
				"goos", runtime.GOOS, "goarch", runtime.GOARCH)
			return
		}
	}
}
