package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// RTM's output streams (the defaults of CONTRACT §1).
const (
	startJobs    = "runtime:start_jobs"
	stopJobs     = "runtime:stop_jobs"
	jobResults   = "runtime:job_results"
	healthEvents = "runtime:health_events"
)

// watcher follows RTM's result and health streams with a blocking XREAD and notes when each
// entry became readable: job results by request id, health events by game id and type (the
// first of each).
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
	ids := map[string]string{jobResults: "0-0", healthEvents: "0-0"}
	for ctx.Err() == nil {
		res, err := w.rdb.XRead(ctx, &redis.XReadArgs{
			Streams: []string{jobResults, healthEvents, ids[jobResults], ids[healthEvents]},
			Count:   1000, Block: 2 * time.Second}).Result()
		at := time.Now()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				logf("watcher: %v", err)
				sleepCtx(ctx, 100*time.Millisecond)
			}
			continue
		}
		for _, s := range res {
			for _, m := range s.Messages {
				ids[s.Stream] = m.ID
				f := make(map[string]string, len(m.Values))
				for k, v := range m.Values {
					f[k], _ = v.(string)
				}
				var key string
				if s.Stream == jobResults {
					key = resultKey(f["request_id"])
				} else {
					key = healthKey(f["game_id"], f["event_type"])
				}
				sl := w.slot(key)
				w.mu.Lock()
				if sl.fields == nil {
					sl.at, sl.fields, sl.id = at, f, m.ID
					close(sl.done)
				}
				w.mu.Unlock()
			}
		}
	}
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
