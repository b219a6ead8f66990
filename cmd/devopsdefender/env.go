package main

import "os"

// envOr returns the environment variable name, or def when it is unset or
// empty. Flags use it for their defaults so that the environment is the
// documented fallback and the flag wins.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
