package cloudflare

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/cloudflare/cloudflare-go/v6/option"
)

// maxResponseBody bounds one response; a page of 1000 DNS records is well
// under 1 MiB.
const maxResponseBody = 32 << 20

// call returns the per-request options of one API call made for ctx. Its
// middleware is where the provider's policy lives, because cloudflare-go's
// own loop cannot be tuned enough:
//   - it binds ctx to every request: cloudflare-go fetches the second and
//     later pages of a list with context.Background;
//   - it retries 429 and 5xx answers and transport errors with capped,
//     jittered exponential backoff (honouring Retry-After), with a timeout
//     per attempt; cloudflare-go also retries 409 and sleeps on real
//     timers, so its retries are turned off ([New]);
//   - it turns non-2xx answers and 2xx answers whose envelope says
//     success:false into one [APIError];
//   - it records each page's result_info in pages (may be nil), so that
//     lists can prove they are complete.
func (p *Provider) call(ctx context.Context, pages *pageLog) []option.RequestOption {
	return []option.RequestOption{option.WithMiddleware(
		func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
			return p.do(req.WithContext(ctx), next, pages)
		})}
}

// do sends req until it succeeds, fails for good, or ctx ends.
func (p *Provider) do(req *http.Request, next option.MiddlewareNext,
	pages *pageLog) (*http.Response, error) {
	ctx := req.Context()
	for attempt := 1; ; attempt++ {
		resp, body, err := p.attempt(req, next)
		if err == nil {
			return p.accept(resp, body, pages)
		}

		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, ctx.Err())
		}
		if !retryable(err) || attempt >= p.opts.MaxAttempts || (req.Body != nil &&
			req.GetBody == nil) {
			return nil, err
		}

		wait := p.backoff(attempt, resp)
		if d, ok := ctx.Deadline(); ok && time.Until(d) < wait {
			return nil, err // the caller's deadline comes first; say why
		}

		p.log.WarnContext(ctx, "cloudflare request retried", "method", req.Method,
			"path", req.URL.Path, "attempt", attempt, "wait", wait, "err", err)
		if serr := p.opts.Sleep(ctx, wait); serr != nil {
			return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, serr)
		}
	}
}

// attempt sends req once under the per-attempt timeout and reads the
// whole body, so that the timeout covers it. A non-2xx answer is returned
// as an *APIError together with the response (for Retry-After).
func (p *Provider) attempt(req *http.Request, next option.MiddlewareNext) (*http.Response,
	[]byte, error) {
	ctx, cancel := context.WithTimeout(req.Context(), p.opts.RequestTimeout)
	defer cancel()

	r := req.Clone(ctx)
	if req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			return nil, nil, fmt.Errorf("rewinding request body: %w", err)
		}
		r.Body = body
	}

	resp, err := next(r)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return nil, nil, &transportError{err: err}
	}
	defer resp.Body.Close()

	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return nil, nil, &transportError{err: fmt.Errorf("reading response: %w", err)}
	}

	resp.Body = io.NopCloser(bytes.NewReader(body))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp, body, newAPIError(resp, body)
	}
	return resp, body, nil
}

// accept checks a 2xx answer's envelope and logs its page.
func (p *Provider) accept(resp *http.Response, body []byte, pages *pageLog) (*http.Response,
	error) {
	var env struct {
		Success    *bool           `json:"success"`
		Result     json.RawMessage `json:"result"`
		ResultInfo *resultInfo     `json:"result_info"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Success == nil {
		return nil, fmt.Errorf("%s %s: response is not a Cloudflare envelope",
			resp.Request.Method, resp.Request.URL.Path)
	}

	if !*env.Success {
		return nil, newAPIError(resp, body)
	}

	if pages != nil {
		pages.add(env.ResultInfo, env.Result)
	}
	return resp, nil
}

// transportError is a request that got no HTTP answer: refused, reset,
// or timed out.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

func retryable(err error) bool {
	if _, ok := err.(*transportError); ok {
		return true
	}
	apiErr, ok := asAPIError(err)
	return ok && apiErr.Temporary()
}

// backoff returns the wait before retry number attempt: an exponential
// step from MinBackoff capped at MaxBackoff, with "equal jitter" (half
// fixed, half random) so that many clients do not retry in step. A longer
// Retry-After from the server wins, up to MaxBackoff.
func (p *Provider) backoff(attempt int, resp *http.Response) time.Duration {
	step := p.opts.MinBackoff << min(attempt-1, 30)
	if step <= 0 || step > p.opts.MaxBackoff {
		step = p.opts.MaxBackoff
	}
	wait := step/2 + rand.N(step/2+1)
	if ra, ok := retryAfter(resp, p.opts.Now()); ok && ra > wait {
		wait = min(ra, p.opts.MaxBackoff)
	}
	return wait
}

// retryAfter parses a Retry-After header: seconds or an HTTP date.
func retryAfter(resp *http.Response, now time.Time) (time.Duration, bool) {
	if resp == nil {
		return 0, false
	}

	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0, false
	}

	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()

	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// resultInfo is a list page's paging summary. Fields the API left out are
// nil.
type resultInfo struct {
	Page       *int `json:"page"`
	PerPage    *int `json:"per_page"`
	Count      *int `json:"count"`
	TotalCount *int `json:"total_count"`
	TotalPages *int `json:"total_pages"`
}

// pageLog collects the pages of one list, to tell a complete list from
// one the API cut short. cloudflare-go's pager simply stops at the first
// empty page, so a page that is short or empty too early, or a listing
// that shifted between pages, would otherwise pass as the whole list.
type pageLog struct {
	mu    sync.Mutex
	pages []pageSummary
}

type pageSummary struct {
	info  resultInfo
	items int // len(result), -1 when result is not an array
}

func (l *pageLog) add(info *resultInfo, result json.RawMessage) {
	s := pageSummary{items: -1}
	if info != nil {
		s.info = *info
	}
	var items []json.RawMessage
	if json.Unmarshal(result, &items) == nil {
		s.items = len(items)
	}

	l.mu.Lock()
	defer l.mu.Unlock()

	l.pages = append(l.pages, s)
}

// check reports why a list of got items, read page by page, may be
// incomplete, or nil when every page and total agrees.
func (l *pageLog) check(got int) error {
	l.mu.Lock()
	defer l.mu.Unlock()

	if len(l.pages) == 0 {
		return errors.New("no page was read")
	}

	var errs []error
	total, nonEmpty := l.pages[0].info.TotalCount, 0
	for i, pg := range l.pages {
		if pg.items > 0 {
			nonEmpty++
		}
		if c := pg.info.Count; c != nil && pg.items >= 0 && pg.items != *c {
			errs = append(errs, fmt.Errorf("page %d held %d items, result_info.count says %d",
				i+1, pg.items, *c))
		}

		if t := pg.info.TotalCount; t != nil && total != nil && *t != *total {
			errs = append(errs, fmt.Errorf("total_count changed from %d to %d while paging",
				*total, *t))
		}
	}

	if total != nil && got != *total {
		errs = append(errs, fmt.Errorf("read %d items of a total_count of %d", got, *total))
	}
	if tp := l.pages[0].info.TotalPages; tp != nil && nonEmpty < *tp {
		errs = append(errs, fmt.Errorf("read %d pages of a total_pages of %d", nonEmpty, *tp))
	}
	return errors.Join(errs...)
}

// set assigns v to a cloudflare-go request field (a param.Field[T]) and
// marks it present. The SDK's own helper, cloudflare.F, lives in its root
// package, which links every Cloudflare service into the binary (about
// 10 MB and a minute of compile time), and param.Field itself is in an
// internal package, so it cannot be written as a literal here. The field
// layout is checked when the first request of each kind runs.
func set[T any](field any, v T) {
	f := reflect.ValueOf(field).Elem()
	f.FieldByName("Value").Set(reflect.ValueOf(v))
	f.FieldByName("Present").SetBool(true)
}
