package workload

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixturesDir holds the real workload specs written for the original
// system.
const fixturesDir = "../../testdata/workloads"

// TestFixturesParse parses every fixture; templates are expanded first with
// a placeholder value for each variable.
func TestFixturesParse(t *testing.T) {
	entries, err := os.ReadDir(fixturesDir)
	if err != nil {
		t.Fatal(err)
	}

	n := 0
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, ".json") || strings.HasSuffix(name, ".json.tmpl")) {
			continue
		}
		n++

		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(fixturesDir, name))
			if err != nil {
				t.Fatal(err)
			}

			text := string(data)
			if strings.HasSuffix(name, ".tmpl") {
				vars := map[string]string{}
				for _, v := range Placeholders(text) {
					vars[v] = "placeholder-" + strings.ToLower(v)
				}
				if text, err = ExpandTemplate(text, vars); err != nil {
					t.Fatal(err)
				}
			}

			spec, err := Parse([]byte(text))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}

			want := strings.TrimSuffix(strings.TrimSuffix(name, ".tmpl"), ".json")
			if spec.Name() != want {
				t.Errorf("app_name %q, want %q (the file name)", spec.Name(), want)
			}
			if len(spec.Cmd) == 0 && spec.GitHubRelease == nil {
				t.Error("spec has neither cmd nor github_release")
			}
		})
	}

	if n == 0 {
		t.Fatalf("no .json or .json.tmpl files in %s", fixturesDir)
	}
}
