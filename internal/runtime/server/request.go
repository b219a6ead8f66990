package server

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// decodeDeploy reads a deploy request the way EasyEnclave does (§2.1):
// unknown members are ignored, including inherit_token, which only boot
// workloads may use; null means the default except for cmd; a member of the
// wrong type is an error. Unlike EasyEnclave it then validates app_name,
// env names and the release's repo, asset and rename, so no request names a
// path outside the data directory.
func decodeDeploy(fields map[string]json.RawMessage) (workload.Spec, error) {
	var spec workload.Spec
	if raw, ok := fields["cmd"]; ok && string(raw) == "null" {
		return spec, errors.New("cmd: must be an array of strings, not null")
	}

	var app *string
	var env *[]string
	var rel map[string]json.RawMessage
	err := errors.Join(
		member(fields, "app_name", &app),
		member(fields, "cmd", &spec.Cmd),
		member(fields, "env", &env),
		member(fields, "tty", &spec.TTY),
		member(fields, "github_release", &rel),
	)
	if err != nil {
		return spec, err
	}

	if app != nil {
		spec.AppName = *app
	}
	if env != nil {
		spec.Env = *env
	}
	if rel != nil {
		if spec.GitHubRelease, err = decodeRelease(rel); err != nil {
			return spec, err
		}
	}

	if err := spec.Validate(); err != nil {
		return spec, err
	}
	return spec, nil
}

// decodeRelease reads github_release: repo and asset are required, tag and
// rename may be null.
func decodeRelease(fields map[string]json.RawMessage) (*workload.Release, error) {
	var repo, asset, tag, rename *string
	err := errors.Join(
		member(fields, "repo", &repo),
		member(fields, "asset", &asset),
		member(fields, "tag", &tag),
		member(fields, "rename", &rename),
	)

	switch {
	case err != nil:
		return nil, fmt.Errorf("github_release: %w", err)
	case repo == nil:
		return nil, errors.New("github_release: missing field repo")
	case asset == nil:
		return nil, errors.New("github_release: missing field asset")
	}

	rel := &workload.Release{Repo: *repo, Asset: *asset}
	if tag != nil {
		rel.Tag = *tag
	}
	if rename != nil {
		rel.Rename = *rename
	}

	return rel, nil
}

// member decodes fields[name] into dst when present. Names match exactly,
// as in EasyEnclave; encoding/json alone would also accept "APP_NAME".
func member(fields map[string]json.RawMessage, name string, dst any) error {
	raw, ok := fields[name]
	if !ok {
		return nil
	}

	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
