package server

import (
	"context"
	"log/slog"
	"strconv"
	"testing"

	"github.com/devopsdefender/devopsdefender/internal/runtime"
	"github.com/devopsdefender/devopsdefender/internal/workload"
)

// BenchmarkDeployStart measures a deploy until list reports the process
// running with a pid, as a client polling the runtime sees it. Each
// iteration uses a new app name; the process is stopped outside the timer.
func BenchmarkDeployStart(b *testing.B) {
	ts := startServer(b, Options{Token: testToken, Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	i := 0

	for b.Loop() {
		i++
		id := ts.deploy(b, workload.Spec{AppName: "bench-" + strconv.Itoa(i),
			Cmd: []string{"sleep", "60"}})

		// poll as a client would until the process runs
		for {
			d := ts.find(b, id)
			if d != nil && d.Status == runtime.StatusRunning && d.PID != nil {
				break
			}
			if d == nil || runtime.Terminal(d.Status) {
				b.Fatalf("deployment %s ended: %+v", id, d)
			}
		}

		b.StopTimer()
		if err := ts.client.Stop(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
