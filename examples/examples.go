// Package examples embeds the example workload specs shipped with the
// binary, so that `devopsdefender dev` can boot them from any directory.
package examples

import "embed"

// FS holds every *.json spec of this directory.
//
//go:embed *.json
var FS embed.FS

// Ticker is a long-running workload that logs a line a second using only
// /bin/sh. Every dev agent boots with it.
func Ticker() []byte {
	b, err := FS.ReadFile("ticker.json")
	if err != nil {
		panic(err) // embedded at build time
	}
	return b
}
