package harness

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// RTM's streams (the defaults of CONTRACT §1).
const (
	StartJobs    = "runtime:start_jobs"
	StopJobs     = "runtime:stop_jobs"
	JobResults   = "runtime:job_results"
	HealthEvents = "runtime:health_events"
)

// Entry is one stream entry as Follow hands it over.
type Entry struct {
	Stream string
	ID     string
	At     time.Time // when the XREAD that returned it came back
	Fields map[string]string
}

// Follow reads streams from their beginning with a blocking XREAD until ctx ends and hands every
// entry to handle, in stream order, from the calling goroutine. A failed read is logged and
// retried.
func Follow(ctx context.Context, rdb *redis.Client, handle func(Entry), streams ...string) {
	args := make([]string, 0, 2*len(streams))
	args = append(args, streams...)
	for range streams {
		args = append(args, "0-0")
	}
	pos := make(map[string]int, len(streams))
	for i, s := range streams {
		pos[s] = len(streams) + i
	}
	for ctx.Err() == nil {
		res, err := rdb.XRead(ctx, &redis.XReadArgs{Streams: args, Count: 1000, Block: 2 * time.Second}).Result()
		at := time.Now()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				Logf("following %v: %v", streams, err)
				SleepCtx(ctx, 100*time.Millisecond)
			}
			continue
		}
		for _, s := range res {
			for _, m := range s.Messages {
				args[pos[s.Stream]] = m.ID
				f := make(map[string]string, len(m.Values))
				for k, v := range m.Values {
					f[k], _ = v.(string)
				}
				handle(Entry{Stream: s.Stream, ID: m.ID, At: at, Fields: f})
			}
		}
	}
}
