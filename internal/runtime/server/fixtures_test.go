package server

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// fixturesDir holds the real workload specs of the original system.
const fixturesDir = "../../../testdata/workloads"

// TestBusyboxFixturesRun runs the two oracle specs, written for
// EasyEnclave's busybox under /var/lib/easyenclave, unchanged except for
// their listen address: test servers listen on loopback only.
func TestBusyboxFixturesRun(t *testing.T) {
	t.Parallel()
	bb := needBusybox(t)
	ts := startServer(t, Options{Token: testToken, HostTools: []string{bb}})

	for _, app := range []string{"oracle-readonly", "human-readonly"} {
		t.Run(app, func(t *testing.T) {
			t.Parallel()
			port := freePort(t)
			spec := loadFixture(t, app+".json", "0.0.0.0:8082", "127.0.0.1:"+strconv.Itoa(port))
			id := ts.deploy(t, spec)

			ts.waitStatus(t, id, runtime.StatusRunning)
			ts.waitLog(t, id, app+": tick=1 ")
			waitFor(t, app+"'s oracle document", func() bool {
				return oracleTick(port) >= 1
			})
		})
	}
}

func loadFixture(t testing.TB, name, old, new string) workload.Spec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixturesDir, name))
	if err != nil {
		t.Fatal(err)
	}

	if !strings.Contains(string(data), old) {
		t.Fatalf("fixture %s no longer contains %q", name, old)
	}
	spec, err := workload.Parse([]byte(strings.ReplaceAll(string(data), old, new)))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// oracleTick fetches the oracle document and returns its tick, or -1.
func oracleTick(port int) int {
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/oracle.json")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()

	body, _ := io.ReadAll(resp.Body)
	var doc struct {
		OK   bool `json:"ok"`
		Tick int  `json:"tick"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &doc) != nil || !doc.OK {
		return -1
	}
	return doc.Tick
}
