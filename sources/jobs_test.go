package sources_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/sources"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

type harness struct {
	st   *store.Store
	rdb  *redis.Client
	co   *coord.Coord
	mu   sync.Mutex
	woke []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	rdb := redis.NewClient(env.RedisOptions(env.NewRedisDB(t)))
	t.Cleanup(func() { rdb.Close() })
	return &harness{st: st, rdb: rdb, co: coord.New(rdb, "test", 10*time.Second)}
}

func (h *harness) consumer(kind sources.JobKind, stream string) *sources.JobConsumer {
	return &sources.JobConsumer{Kind: kind, Stream: stream, Store: h.st, Redis: h.co,
		Enqueue: func(id string) { h.mu.Lock(); h.woke = append(h.woke, id); h.mu.Unlock() },
		Allowed: []string{"galaxy/game"}, Block: 50 * time.Millisecond,
		Settings: rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/state/" + id }},
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)), Tracer: tracenoop.NewTracerProvider().Tracer("")}
}

// runUntil runs c until cond holds (or 10s pass), then stops it and waits for it to return.
func runUntil(t *testing.T, c *sources.JobConsumer, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	if !cond() {
		t.Fatal("condition not reached in 10s")
	}
}

func (h *harness) answers(t *testing.T) map[string]rtm.Answer {
	t.Helper()
	out := map[string]rtm.Answer{}
	_, err := h.st.RelayOutbox(context.Background(), 1000, func(_ context.Context, es []store.OutboxEntry) (int, error) {
		for _, e := range es {
			if e.Stream != store.StreamJobResults {
				continue
			}
			f := map[string]string{}
			for i := 0; i+1 < len(e.Fields); i += 2 {
				f[e.Fields[i]] = e.Fields[i+1]
			}
			if _, dup := out[f["request_id"]]; dup {
				t.Errorf("two results for %s", f["request_id"])
			}
			out[f["request_id"]] = rtm.Answer{Outcome: rtm.Outcome(f["outcome"]), Code: rtm.ErrorCode(f["error_code"])}
		}
		return len(es), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestJobConsumer_Run_badJobsAreAnsweredAndNeverStall(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	add := func(vals ...any) string {
		return h.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:start_jobs", Values: vals}).Val()
	}
	add("game_id", "../../etc", "image_ref", "galaxy/game:1.4.1", "request_id", "traversal")
	add("image_ref", "galaxy/game:1.4.1", "request_id", "no-game")
	add("game_id", "g1", "request_id", "no-image")
	add("game_id", "g1", "image_ref", "galaxy/game:1.4.1", "request_id", "huge", "junk", strings.Repeat("x", 10<<10))
	add("game_id", "g1", "image_ref", "busybox:1.36.0", "request_id", "not-allowed")
	add("game_id", "g1", "image_ref", "galaxy/game:latest", "request_id", "not-semver")
	last := add("game_id", "g1", "image_ref", "galaxy/game:1.4.1", "request_id", "good")
	c := h.consumer(sources.StartJobs, "runtime:start_jobs")
	runUntil(t, c, func() bool { off, _ := h.co.Offset(ctx, "startjobs"); return off == last })

	got := h.answers(t)
	want := map[string]rtm.ErrorCode{"traversal": rtm.CodeInvalidJob, "no-game": rtm.CodeInvalidJob, "no-image": rtm.CodeInvalidJob,
		"huge": rtm.CodeInvalidJob, "not-allowed": rtm.CodeStartConfigInvalid, "not-semver": rtm.CodeStartConfigInvalid}
	for id, code := range want {
		if got[id].Outcome != rtm.OutcomeFailed || got[id].Code != code {
			t.Errorf("%s: %+v, want failed %s", id, got[id], code)
		}
	}
	if _, answered := got["good"]; answered {
		t.Error("a good start job was answered before the reconciler ran")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.woke) != 1 || h.woke[0] != "g1" {
		t.Errorf("enqueued %v, want [g1]", h.woke)
	}
	if rec, err := h.st.Get(ctx, "g1"); err != nil || rec.DesiredState != rtm.DesiredRunning || rec.DesiredImageRef != "galaxy/game:1.4.1" {
		t.Errorf("record: %+v %v", rec, err)
	}
}

func TestJobConsumer_Run_resumesFromOffsetAndHandlesNothingTwice(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, h.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:stop_jobs",
			Values: []any{"game_id", fmt.Sprintf("g%d", i), "request_id", fmt.Sprintf("s%d", i)}}).Val())
	}
	c := h.consumer(sources.StopJobs, "runtime:stop_jobs")
	runUntil(t, c, func() bool { off, _ := h.co.Offset(ctx, "stopjobs"); return off == ids[2] })
	if got := h.answers(t); len(got) != 3 || got["s1"].Code != rtm.CodeRuntimeNotFound {
		t.Fatalf("first run: %+v", got)
	}
	// Redelivery (an offset lost, a second RTM): the same entries again change nothing.
	if err := h.co.SetOffset(ctx, "stopjobs", "0-0"); err != nil {
		t.Fatal(err)
	}
	runUntil(t, c, func() bool { off, _ := h.co.Offset(ctx, "stopjobs"); return off == ids[2] })
	if got := h.answers(t); len(got) != 0 {
		t.Fatalf("redelivered jobs were answered again: %+v", got)
	}
	// Redis emptied: the offset lies past the new stream, which is read from its start.
	if err := h.rdb.Del(ctx, "runtime:stop_jobs").Err(); err != nil {
		t.Fatal(err)
	}
	fresh := h.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:stop_jobs", ID: "1-1",
		Values: []any{"game_id", "g9", "request_id", "after-reset"}}).Val()
	runUntil(t, c, func() bool { off, _ := h.co.Offset(ctx, "stopjobs"); return off == fresh })
	if got := h.answers(t); len(got) != 1 || got["after-reset"].Outcome != rtm.OutcomeFailed {
		t.Fatalf("after the stream reset: %+v", got)
	}
}

func TestJobConsumer_Run_continuesTheJobsTrace(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	last := h.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:stop_jobs", Values: []any{"game_id", "g1", "request_id", "traced",
		"traceparent", "00-" + traceID + "-00f067aa0ba902b7-01"}}).Val()
	c := h.consumer(sources.StopJobs, "runtime:stop_jobs")
	c.Tracer = tp.Tracer("test")
	runUntil(t, c, func() bool { off, _ := h.co.Offset(ctx, "stopjobs"); return off == last })

	spans := rec.Ended()
	if len(spans) == 0 || spans[0].SpanContext().TraceID().String() != traceID {
		t.Fatalf("the job's span is not in the job's trace: %+v", spans)
	}
	var result map[string]string
	_, err := h.st.RelayOutbox(ctx, 10, func(_ context.Context, es []store.OutboxEntry) (int, error) {
		for _, e := range es {
			if e.Stream == store.StreamJobResults {
				result = map[string]string{}
				for i := 0; i+1 < len(e.Fields); i += 2 {
					result[e.Fields[i]] = e.Fields[i+1]
				}
			}
		}
		return len(es), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if tp := result["traceparent"]; !strings.HasPrefix(tp, "00-"+traceID+"-") || tp == "00-"+traceID+"-00f067aa0ba902b7-01" {
		t.Fatalf("result traceparent %q: want the job span's, in trace %s", tp, traceID)
	}
}
