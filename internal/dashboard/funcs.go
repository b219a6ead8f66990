package dashboard

import (
	"fmt"
	"html/template"
	"time"
)

var funcs = template.FuncMap{
	"asset":   assetURL,
	"head":    newHead,
	"pill":    pillClass,
	"ago":     ago,
	"rfc3339": rfc3339,
	"exit":    exitCode,
	"uptime":  uptime,
	"healthy": healthyCount,
}

// head is what the shared "top" template needs.
type head struct {
	Title       string
	RefreshSecs int
	// NavHome links the "Fleet" entry; empty hides it.
	NavHome string
	NavNote string
}

func newHead(title string, refreshSecs int, navHome, navNote string) head {
	return head{Title: title, RefreshSecs: refreshSecs, NavHome: navHome, NavNote: navNote}
}

// assetURL returns the link to an embedded file, versioned by its content
// so that a new build is never served a cached old stylesheet.
func assetURL(name string) (string, error) {
	a, ok := assets[name]
	if !ok {
		return "", fmt.Errorf("no embedded asset %q", name)
	}
	return AssetPrefix + name + "?v=" + a.version, nil
}

// pillClass maps an agent or unit status to the colour of its pill.
func pillClass(status string) string {
	switch status {
	case "healthy", "running":
		return "ok"
	case "registering", "stale", "deploying", "pending", "unknown":
		return "warn"
	case "dead", "failed", "exited", "error":
		return "bad"
	}

	return "idle"
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}

	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}

	return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func exitCode(code *int) string {
	if code == nil {
		return "—"
	}
	return fmt.Sprint(*code)
}

func uptime(d time.Duration) string {
	d = d.Truncate(time.Second)
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd %dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	case d >= time.Hour:
		return fmt.Sprintf("%dh %dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	case d >= time.Minute:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	}

	return fmt.Sprintf("%ds", int(d/time.Second))
}

func healthyCount(agents []Agent) int {
	n := 0
	for _, a := range agents {
		if a.Status == "healthy" {
			n++
		}
	}
	return n
}
