package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// watcher follows RTM's result and health streams (harness.Follow) and notes when each entry
// became readable: job results by request id, health events by game id and type (the first of
// each).
type watcher struct {
	rdb *redis.Client

	mu    sync.Mutex
	slots map[string]*slot
}

// slot is one awaited entry.
type slot struct {
	done   chan struct{}
	at     time.Time
	fields map[string]string
	id     string // the entry's stream id
}

func newWatcher(rdb *redis.Client) *watcher {
	return &watcher{rdb: rdb, slots: map[string]*slot{}}
}

func resultKey(requestID string) string         { return "result:" + requestID }
func healthKey(gameID, eventType string) string { return "health:" + gameID + ":" + eventType }

func (w *watcher) slot(key string) *slot {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slots[key]
	if s == nil {
		s = &slot{done: make(chan struct{})}
		w.slots[key] = s
	}
	return s
}

// run reads both streams from their beginning until ctx ends.
func (w *watcher) run(ctx context.Context) {
	harness.Follow(ctx, w.rdb, func(e harness.Entry) {
		key := healthKey(e.Fields["game_id"], e.Fields["event_type"])
		if e.Stream == harness.JobResults {
			key = resultKey(e.Fields["request_id"])
		}
		sl := w.slot(key)
		w.mu.Lock()
		if sl.fields == nil {
			sl.at, sl.fields, sl.id = e.At, e.Fields, e.ID
			close(sl.done)
		}
		w.mu.Unlock()
	}, harness.JobResults, harness.HealthEvents)
}

// wait returns when the entry of key became readable and its fields.
func (w *watcher) wait(ctx context.Context, key string, timeout time.Duration) (time.Time, map[string]string, error) {
	s := w.slot(key)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.done:
		return s.at, s.fields, nil
	case <-ctx.Done():
		return time.Time{}, nil, ctx.Err()
	case <-t.C:
		return time.Time{}, nil, fmt.Errorf("no %s within %s", key, timeout)
	}
}

// reset forgets every entry seen (after the streams were emptied).
func (w *watcher) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.slots = map[string]*slot{}
}
