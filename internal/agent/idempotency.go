package agent

import (
	"regexp"
	"sync"
	"time"

	"github.com/devopsdefender/devopsdefender/internal/agentapi"
)

// IdempotencyHeader names the request header that makes a deploy safe to
// retry: a repeated key returns the first result instead of deploying
// again.
const IdempotencyHeader = agentapi.IdempotencyHeader

const (
	idempotencyTTL = 15 * time.Minute
	maxIdempotent  = 1024
)

var idempotencyKeyRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{8,128}$`)

// deployResults remembers the outcome of recent deploys by idempotency
// key. mu is held across a keyed deploy, so two requests with one key
// cannot both reach the runtime.
type deployResults struct {
	mu      sync.Mutex
	results map[string]deployResult
}

// deployResult is the outcome of a keyed deploy: its reply, or its error.
// A failure is remembered too: the runtime may have started the workload
// before the failure reached us, so a retry must not try again.
type deployResult struct {
	specHash string
	resp     agentapi.DeployResponse
	err      error
	expires  time.Time
}

// lookupLocked returns the remembered result for key, dropping expired
// entries as it goes.
func (d *deployResults) lookupLocked(key string, now time.Time) (deployResult, bool) {
	r, ok := d.results[key]
	if ok && now.After(r.expires) {
		delete(d.results, key)
		return deployResult{}, false
	}
	return r, ok
}

// storeLocked remembers a result, evicting expired entries, and the
// oldest one when the table is full.
func (d *deployResults) storeLocked(key string, r deployResult, now time.Time) {
	if d.results == nil {
		d.results = map[string]deployResult{}
	}

	if len(d.results) >= maxIdempotent {
		var oldest string
		for k, v := range d.results {
			if now.After(v.expires) {
				delete(d.results, k)
				continue
			}
			if oldest == "" || v.expires.Before(d.results[oldest].expires) {
				oldest = k
			}
		}
		if len(d.results) >= maxIdempotent {
			delete(d.results, oldest)
		}
	}

	d.results[key] = r
}
