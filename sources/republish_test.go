package sources_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"

	rtm "github.com/galaxy-platform/rtmanager"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/publisher"
	"github.com/galaxy-platform/rtmanager/sources"
)

// TestJobConsumer_Run_answersAgainAResentJobWhoseResultRedisLost answers a job, wipes Redis
// (its streams, offsets and publication markers) and resends the job: its stored result is
// published again, once, however often the job comes.
func TestJobConsumer_Run_answersAgainAResentJobWhoseResultRedisLost(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	pctx, stopPub := context.WithCancel(ctx)
	pub := publisher.New(publisher.Publisher{Outbox: h.st, Redis: h.co, Poll: 20 * time.Millisecond,
		Names: map[string]string{"job_results": "results"}, Log: h.consumer(rtm.StartJobs, "").Log})
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); _ = pub.Run(pctx) }()
	defer func() { stopPub(); <-pubDone }()

	results := func() int64 { return h.rdb.XLen(ctx, "results").Val() }
	var logs testenv.SyncBuffer
	resend := func(want int64) {
		t.Helper()
		// Refused at once (the image is not allowed): answered by the consumer itself.
		h.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:start_jobs",
			Values: []any{"game_id", "g1", "image_ref", "evil/image:1", "request_id", "r1"}})
		// Invalid (no image_ref): answered at once too, by another path.
		h.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:start_jobs",
			Values: []any{"game_id", "g2", "request_id", "r2"}})
		c := h.consumer(rtm.StartJobs, "runtime:start_jobs")
		c.Results, c.Marks = h.st, h.co
		c.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		runUntil(t, c, func() bool {
			last, _ := h.co.LastID(ctx, "runtime:start_jobs")
			off, _ := h.co.Offset(ctx, "startjobs")
			return off == last && results() >= want
		})
	}
	resend(2)
	if err := h.rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	resend(2)
	if !strings.Contains(logs.String(), "level=INFO msg=\"duplicate job's result lost from redis, published again\"") {
		t.Errorf("no info line on the result published again; logs:\n%s", logs.String())
	}
	// Sent once more, while Redis holds the result: nothing new.
	resend(2)
	// Let the publisher poll the outbox: it must find nothing to publish.
	if n, err := h.st.OutboxBacklog(ctx); err != nil || n != 0 {
		t.Fatalf("outbox backlog %d %v, want 0", n, err)
	}
	es, err := h.rdb.XRange(ctx, "results", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	// r1 and r2 are of different games: their results may stand in either order.
	codes := map[any]any{}
	for _, e := range es {
		codes[e.Values["request_id"]] = e.Values["error_code"]
	}
	if len(es) != 2 || codes["r1"] != "start_config_invalid" || codes["r2"] != "invalid_job" {
		t.Fatalf("results stream after the wipe: %v, want the one result of r1 and of r2", es)
	}
}

// failingOffsets is the consumer's Redis with offsets that cannot be saved.
type failingOffsets struct{ sources.StreamReader }

func (failingOffsets) SetOffset(context.Context, string, string) error {
	return errors.New("redis unavailable")
}

// TestJobConsumer_Run_offsetNotSavedAtStopIsAWarning stops a consumer whose offset cannot be
// saved: it says so at warn and does not claim the offset it reached.
func TestJobConsumer_Run_offsetNotSavedAtStopIsAWarning(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:stop_jobs", Values: []any{"game_id", "g1", "request_id", "s1"}})
	var logs testenv.SyncBuffer
	c := h.consumer(rtm.StopJobs, "runtime:stop_jobs")
	c.Redis = failingOffsets{h.co}
	c.Log = slog.New(slog.NewTextHandler(&logs, nil))
	runUntil(t, c, func() bool { return strings.Contains(logs.String(), "saving offset failed") })
	out := logs.String()
	if strings.Contains(out, "msg=\"worker stopped\"") {
		t.Errorf("the consumer reported a stop with its offset saved; logs:\n%s", out)
	}
	if !strings.Contains(out, "level=WARN msg=\"worker stopped without saving its offset\"") {
		t.Errorf("no warning that the offset was not saved; logs:\n%s", out)
	}
}
