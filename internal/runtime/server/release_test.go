package server

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// fakeGitHub serves GitHub's release API for a few releases, with their
// assets downloadable from the same server.
type fakeGitHub struct {
	t   testing.TB
	srv *httptest.Server

	mu        sync.Mutex
	releases  map[string]map[string][]byte // "owner/repo@tag" -> asset name -> content
	latest    map[string]string            // repo -> tag
	metaCalls int
	downloads int
	auth      []string // Authorization headers seen
}

func newFakeGitHub(t testing.TB) *fakeGitHub {
	f := &fakeGitHub{t: t, releases: map[string]map[string][]byte{}, latest: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /repos/{owner}/{repo}/releases/tags/{tag}", f.release)
	mux.HandleFunc("GET /repos/{owner}/{repo}/releases/latest", f.release)
	mux.HandleFunc("GET /dl/{owner}/{repo}/{tag}/{asset}", f.download)

	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// add publishes assets as release tag of repo; the last tag added is latest.
func (f *fakeGitHub) add(repo, tag string, assets map[string][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases[repo+"@"+tag] = assets
	f.latest[repo] = tag
}

func (f *fakeGitHub) release(w http.ResponseWriter, r *http.Request) {
	f.check(r, "application/vnd.github+json")
	repo := r.PathValue("owner") + "/" + r.PathValue("repo")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.metaCalls++

	tag := r.PathValue("tag")
	if tag == "" {
		tag = f.latest[repo]
	}
	assets, ok := f.releases[repo+"@"+tag]
	if !ok {
		http.NotFound(w, r)
		return
	}

	type asset struct {
		Name string `json:"name"`
		URL  string `json:"browser_download_url"`
	}
	list := []asset{}
	for name := range assets {
		list = append(list, asset{name, f.srv.URL + "/dl/" + repo + "/" + tag + "/" + name})
	}
	json.NewEncoder(w).Encode(map[string]any{"tag_name": tag, "assets": list})
}

func (f *fakeGitHub) download(w http.ResponseWriter, r *http.Request) {
	f.check(r, "application/octet-stream")
	repo := r.PathValue("owner") + "/" + r.PathValue("repo")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.downloads++

	data, ok := f.releases[repo+"@"+r.PathValue("tag")][r.PathValue("asset")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Write(data)
}

func (f *fakeGitHub) check(r *http.Request, accept string) {
	if r.Header.Get("User-Agent") != "easyenclave" || r.Header.Get("Accept") != accept {
		f.t.Errorf("%s: User-Agent %q, Accept %q; want easyenclave, %s", r.URL.Path,
			r.Header.Get("User-Agent"), r.Header.Get("Accept"), accept)
	}

	f.mu.Lock()
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	f.mu.Unlock()
}

func (f *fakeGitHub) counts() (meta, downloads int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.metaCalls, f.downloads
}

// options points a server at the fake.
func (f *fakeGitHub) options() Options {
	return Options{Token: testToken, GitHubAPIURL: f.srv.URL, HTTPClient: f.srv.Client()}
}

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func tarGz(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)

	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode,
			Size: int64(len(e.body))}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}

	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func script(out string) []byte { return []byte("#!/bin/sh\necho " + out + " \"$@\"\n") }

func TestReleasePlainAssetWithRename(t *testing.T) {
	t.Parallel()
	gh := newFakeGitHub(t)
	gh.add("acme/tool", "v1", map[string][]byte{"tool-bin": script("tool-ran"), "other": nil})
	opts := gh.options()
	opts.GitHubToken = "ghs_secret"
	ts := startServer(t, opts)

	id := ts.deploy(t, workload.Spec{AppName: "tool", Cmd: []string{"tool", "arg"},
		GitHubRelease: &workload.Release{Repo: "acme/tool", Asset: "tool-bin", Tag: "v1",
			Rename: "tool"}})
	d := ts.waitStatus(t, id, runtime.StatusCompleted)
	if d.Source != "acme/tool@v1" {
		t.Errorf("source %q, want acme/tool@v1", d.Source)
	}
	ts.waitLog(t, id, "tool-ran arg")

	bin := filepath.Join(ts.srv.DataDir(), "bin")
	if target, err := os.Readlink(filepath.Join(bin, "tool")); err != nil || target != "tool-bin" {
		t.Errorf("bin/tool -> %q (%v), want a relative symlink to tool-bin", target, err)
	}
	if fi, err := os.Stat(filepath.Join(bin, "tool-bin")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/tool-bin: %v, %v; want mode 0755", fi, err)
	}

	for _, a := range gh.auth {
		if a != "Bearer ghs_secret" {
			t.Errorf("Authorization %q, want the bearer token on API and download", a)
		}
	}
}

func TestReleaseTarball(t *testing.T) {
	t.Parallel()
	gh := newFakeGitHub(t)
	pkg := tarGz(t,
		tarEntry{name: "pkg/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "pkg/usr/local/bin/prog", body: string(script("prog-ran")), typ: tar.TypeReg},
		tarEntry{name: "pkg/usr/local/bin/alias", link: "prog", typ: tar.TypeSymlink},
		tarEntry{name: "pkg/usr/local/lib/hard", link: "pkg/usr/local/bin/prog", typ: tar.TypeLink},
	)
	gh.add("acme/pkg", "v2", map[string][]byte{"pkg.tar.gz": pkg})
	ts := startServer(t, gh.options())
	bin := filepath.Join(ts.srv.DataDir(), "bin")

	t.Run("nested rename", func(t *testing.T) {
		id := ts.deploy(t, workload.Spec{AppName: "prog", Cmd: []string{"prog", "x"},
			GitHubRelease: &workload.Release{Repo: "acme/pkg", Asset: "pkg.tar.gz", Tag: "v2",
				Rename: "pkg/usr/local/bin/prog"}})
		ts.waitStatus(t, id, runtime.StatusCompleted)
		ts.waitLog(t, id, "prog-ran x")

		target, err := os.Readlink(filepath.Join(bin, "pkg/usr/local/bin/alias"))
		if err != nil || target != "prog" {
			t.Errorf("alias -> %q (%v), want prog", target, err)
		}
		if _, err := os.Stat(filepath.Join(bin, "pkg/usr/local/lib/hard")); err != nil {
			t.Errorf("hard link: %v", err)
		}
	})
	t.Run("stem directory, fetch only", func(t *testing.T) {
		id := ts.deploy(t, workload.Spec{AppName: "pkg",
			GitHubRelease: &workload.Release{Repo: "acme/pkg", Asset: "pkg.tar.gz", Tag: "v2"}})
		ts.waitStatus(t, id, runtime.StatusCompleted)
		if fi, err := os.Stat(filepath.Join(bin, "pkg")); err != nil || !fi.IsDir() {
			t.Errorf("bin/pkg: %v, %v; want the unpacked directory", fi, err)
		}
	})
}

func TestReleaseFailures(t *testing.T) {
	t.Parallel()
	gh := newFakeGitHub(t)
	gh.add("acme/tool", "v1", map[string][]byte{"tool-bin": script("x")})
	gh.add("acme/empty", "v1", map[string][]byte{})
	for name, entry := range map[string]tarEntry{
		"dotdot":   {name: "../escape", body: "x", typ: tar.TypeReg},
		"absolute": {name: "/tmp/escape", body: "x", typ: tar.TypeReg},
		"symlink":  {name: "link", link: "../../escape", typ: tar.TypeSymlink},
		"abs link": {name: "link", link: "/etc", typ: tar.TypeSymlink},
		"hardlink": {name: "hard", link: "../escape", typ: tar.TypeLink},
	} {
		gh.add("evil/"+strings.ReplaceAll(name, " ", "-"), "v1",
			map[string][]byte{"evil.tgz": tarGz(t, entry)})
	}
	ts := startServer(t, gh.options())
	url := gh.srv.URL

	tests := []struct {
		name string
		rel  workload.Release
		want string
	}{
		{"missing asset", workload.Release{Repo: "acme/tool", Asset: "nope", Tag: "v1"},
			"acme/tool: asset nope not found"},
		{"no assets", workload.Release{Repo: "acme/empty", Asset: "nope", Tag: "v1"},
			"acme/empty: no assets in release"},
		{"unknown tag", workload.Release{Repo: "acme/tool", Asset: "tool-bin", Tag: "v9"},
			"GET " + url + "/repos/acme/tool/releases/tags/v9: 404 Not Found"},
		{"tar dotdot", workload.Release{Repo: "evil/dotdot", Asset: "evil.tgz", Tag: "v1"},
			"evil/dotdot: placing evil.tgz: tar entry \"../escape\": …"},
		{"tar absolute", workload.Release{Repo: "evil/absolute", Asset: "evil.tgz", Tag: "v1"},
			"evil/absolute: placing evil.tgz: tar entry \"/tmp/escape\": …"},
		{"tar symlink", workload.Release{Repo: "evil/symlink", Asset: "evil.tgz", Tag: "v1"},
			"…leaves the tree"},
		{"tar absolute symlink", workload.Release{Repo: "evil/abs-link", Asset: "evil.tgz", Tag: "v1"},
			"…leaves the tree"},
		{"tar hard link", workload.Release{Repo: "evil/hardlink", Asset: "evil.tgz", Tag: "v1"},
			"…name contains \"..\""},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rel := tt.rel
			id := ts.deploy(t, workload.Spec{AppName: "r", Cmd: []string{"x"}, GitHubRelease: &rel})
			d := ts.waitStatus(t, id, runtime.StatusFailed)
			if !matchPattern(d.ErrorMessage, tt.want) {
				t.Errorf("error %q, want %q", d.ErrorMessage, tt.want)
			}
		})
	}

	// no refused tarball left any of its entries behind
	for _, p := range []string{"escape", "../escape", "bin/link", "/tmp/escape"} {
		if !filepath.IsAbs(p) {
			p = filepath.Join(ts.srv.DataDir(), "bin", p)
		}
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s exists after refused tarballs", p)
		}
	}
}

func TestReleaseCache(t *testing.T) {
	t.Parallel()
	gh := newFakeGitHub(t)
	gh.add("acme/tool", "v1", map[string][]byte{"tool": script("v1")})
	ts := startServer(t, gh.options())
	fetch := func(tag string) {
		t.Helper()
		id := ts.deploy(t, workload.Spec{AppName: "tool",
			GitHubRelease: &workload.Release{Repo: "acme/tool", Asset: "tool", Tag: tag}})
		ts.waitStatus(t, id, runtime.StatusCompleted)
	}

	run := func() []string {
		t.Helper()
		res, err := ts.client.Exec(context.Background(), []string{"tool"}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return []string{res.Stdout}
	}

	type counts struct{ Meta, Downloads int }
	got := func() counts { m, d := gh.counts(); return counts{m, d} }

	fetch("v1")
	fetch("v1") // a pinned tag in the cache needs no request at all
	if diff := cmp.Diff(counts{1, 1}, got()); diff != "" {
		t.Errorf("after two v1 fetches (-want +got):\n%s", diff)
	}

	gh.add("acme/tool", "v2", map[string][]byte{"tool": script("v2")})
	fetch("v2") // a new tag is fetched, not served from the old file
	if diff := cmp.Diff([]string{"v2\n"}, run()); diff != "" {
		t.Errorf("after the v2 fetch, tool prints (-want +got):\n%s", diff)
	}

	fetch("") // latest is v2: one metadata call, no download
	if diff := cmp.Diff(counts{3, 2}, got()); diff != "" {
		t.Errorf("after fetching latest (-want +got):\n%s", diff)
	}
}

func TestLocalAssets(t *testing.T) {
	t.Parallel()
	gh := newFakeGitHub(t)
	local := t.TempDir()
	for p, out := range map[string]string{"acme/tool/v1/tool": "tagged", "flat": "flat"} {
		os.MkdirAll(filepath.Join(local, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(local, p), script(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	opts := gh.options()
	opts.LocalAssetsDir = local
	ts := startServer(t, opts)

	tests := []struct {
		name string
		rel  workload.Release
		want string
	}{
		{"by repo and tag", workload.Release{Repo: "acme/tool", Asset: "tool", Tag: "v1"}, "tagged"},
		{"flat", workload.Release{Repo: "acme/other", Asset: "flat"}, "flat"},
	}
	for _, tt := range tests {
		rel := tt.rel
		id := ts.deploy(t, workload.Spec{AppName: rel.Asset, Cmd: []string{rel.Asset},
			GitHubRelease: &rel})
		ts.waitStatus(t, id, runtime.StatusCompleted)
		ts.waitLog(t, id, tt.want)
	}

	if m, d := gh.counts(); m+d != 0 {
		t.Errorf("%d metadata and %d download requests, want none", m, d)
	}
}

func TestBootPrefetch(t *testing.T) {
	t.Parallel()
	gh := newFakeGitHub(t)
	gh.add("acme/tool", "v1", map[string][]byte{"tool": script("booted")})
	opts := gh.options()
	opts.BootWorkloads = []workload.Spec{
		{AppName: "fetch-tool",
			GitHubRelease: &workload.Release{Repo: "acme/tool", Asset: "tool", Tag: "v1"}},
		// Uses the tool without fetching it: only the pre-fetch makes it exist.
		{AppName: "user", Cmd: []string{"tool", "now"}},
	}

	ts := startServer(t, opts)
	d, err := ts.client.Find(context.Background(), "user")
	if err != nil || d == nil {
		t.Fatalf("Find(user) = %v, %v", d, err)
	}
	ts.waitLog(t, d.ID, "booted now")
}

func TestBootPrefetchFailureStopsServe(t *testing.T) {
	t.Parallel()
	gh := newFakeGitHub(t)
	gh.add("acme/tool", "v1", map[string][]byte{"tool": script("x")})
	opts := gh.options()
	opts.BootWorkloads = []workload.Spec{
		{AppName: "ok", GitHubRelease: &workload.Release{Repo: "acme/tool", Asset: "tool", Tag: "v1"}},
		{AppName: "bad",
			GitHubRelease: &workload.Release{Repo: "acme/tool", Asset: "missing", Tag: "v1"}},
	}

	srv, errc := serveAsync(t, opts)
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "acme/tool: asset missing not found") {
			t.Errorf("Serve: %v, want the fetch error", err)
		}
	case <-srv.Ready():
		t.Fatal("server became ready despite a failed boot fetch")
	}

	if _, err := os.Stat(srv.SocketPath()); !os.IsNotExist(err) {
		t.Errorf("socket after a failed start: %v, want none", err)
	}
}
