package server

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func TestAttachEchoesTerm(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})

	conn, err := ts.client.Attach(context.Background(), []string{"sh"})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	defer conn.Close()

	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, "echo term=$TERM size=$(stty size)\nexit\n"); err != nil {
		t.Fatal(err)
	}

	// The session ends, and the server closes the connection, when sh exits.
	out, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading session: %v (got %q)", err, out)
	}
	if !strings.Contains(string(out), "term=xterm-256color size=24 80") {
		t.Errorf("session output %q, want term=xterm-256color size=24 80", out)
	}
}

func TestAttachForwardsBufferedInput(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	c := dialRaw(t, ts)

	// The request and the first keystrokes arrive in one write.
	c.send(t, ts.line(t, map[string]any{"method": "attach"}), "echo sum=$((40+2))", "exit")
	if r := c.reply(t); r["ok"] != true || r["attached"] != true {
		t.Fatalf("ack %v, want attached", r)
	}

	out, _ := io.ReadAll(c.r)
	if !strings.Contains(string(out), "sum=42") {
		t.Errorf("session output %q, want sum=42", out)
	}
}

func TestAttachSpawnFailure(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	c := dialRaw(t, ts)
	c.send(t, ts.line(t, map[string]any{"method": "attach", "cmd": []string{"/no/such/shell"}}))
	if r := c.reply(t); r["ok"] != true || r["attached"] != true {
		t.Fatalf("ack %v, want attached before the spawn", r)
	}

	out, _ := io.ReadAll(c.r)
	if !strings.HasPrefix(string(out), "\nattach failed: ") {
		t.Errorf("after the ack: %q, want an attach failed line", out)
	}
}

func TestAttachClientCloseKillsSession(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	dir := t.TempDir()
	conn, err := ts.client.Attach(context.Background(), []string{"sh"})
	if err != nil {
		t.Fatal(err)
	}

	io.WriteString(conn, "echo $$ > "+dir+"/pid; sleep 1000\n")
	waitFor(t, "the shell to write its pid", func() bool {
		data, _ := os.ReadFile(dir + "/pid")
		return strings.HasSuffix(string(data), "\n")
	})

	pid := readPID(t, dir+"/pid")
	conn.Close()
	waitFor(t, "the attached shell to die", func() bool { return !alive(pid) })
}

func TestAttachUnauthenticated(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Token: testToken})
	c := dialRaw(t, ts)
	c.send(t, `{"method":"attach"}`)
	if r := c.reply(t); r["error"] != "unauthenticated" {
		t.Errorf("reply %v, want unauthenticated", r)
	}
}
