package main

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// watcher follows runtime:job_results and runtime:health_events from their beginning
// (harness.Follow). It counts the results of every request id (the exactly-once check) and the
// health events by type.
type watcher struct {
	rdb *redis.Client

	mu      sync.Mutex
	results map[string]*result
	health  map[string]int // event_type → events
	total   int64          // results read
}

// result is what the watcher saw for one request id.
type result struct {
	count  int
	done   chan struct{} // closed at the first result
	fields map[string]string
}

func newWatcher(rdb *redis.Client) *watcher {
	return &watcher{rdb: rdb, results: map[string]*result{}, health: map[string]int{}}
}

// slot returns the result of a request id, made on first use. The caller holds mu.
func (w *watcher) slot(requestID string) *result {
	if r, ok := w.results[requestID]; ok {
		return r
	}
	r := &result{done: make(chan struct{})}
	w.results[requestID] = r
	return r
}

// run reads both streams until ctx ends.
func (w *watcher) run(ctx context.Context) {
	harness.Follow(ctx, w.rdb, func(e harness.Entry) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if e.Stream == harness.HealthEvents {
			w.health[e.Fields["event_type"]]++
			return
		}
		w.total++
		r := w.slot(e.Fields["request_id"])
		r.count++
		if r.count == 1 {
			r.fields = e.Fields
			close(r.done)
		}
	}, harness.JobResults, harness.HealthEvents)
}

// wait returns the first result of a request id.
func (w *watcher) wait(ctx context.Context, requestID string, timeout time.Duration) (map[string]string, error) {
	w.mu.Lock()
	r := w.slot(requestID)
	w.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.done:
		return r.fields, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("no result for %s within %s", requestID, timeout)
	}
}

// healthCounts returns the health events seen so far by type.
func (w *watcher) healthCounts() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.health)
}

// resultsRead is the number of job results read so far.
func (w *watcher) resultsRead() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}

// onceCheck is the outcome of the exactly-once check.
type onceCheck struct {
	sent       int      // distinct request ids sent
	missing    []string // sent, no result
	doubled    []string // sent, more than one result
	unexpected []string // a result for a request id never sent
}

func (c onceCheck) ok() bool {
	return c.sent > 0 && len(c.missing) == 0 && len(c.doubled) == 0 && len(c.unexpected) == 0
}

// check compares the request ids sent with the results read.
func (w *watcher) check(sent map[string]bool) onceCheck {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := onceCheck{sent: len(sent)}
	for id := range sent {
		r := w.results[id]
		switch {
		case r == nil || r.count == 0:
			c.missing = append(c.missing, id)
		case r.count > 1:
			c.doubled = append(c.doubled, id)
		}
	}
	for id, r := range w.results {
		if r.count > 0 && !sent[id] {
			c.unexpected = append(c.unexpected, id)
		}
	}
	return c
}
