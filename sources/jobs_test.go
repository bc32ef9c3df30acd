package sources_test

import (
	"context"
	"fmt"
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
	"github.com/galaxy-platform/rtmanager/migrations"
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
	st, _ := env.MustStore(t)
	rdb := redis.NewClient(env.RedisOptions(env.NewRedisDB(t)))
	t.Cleanup(func() { rdb.Close() })
	return &harness{st: st, rdb: rdb, co: coord.New(rdb, "test", 10*time.Second)}
}

func (h *harness) consumer(kind rtm.JobKind, stream string) *sources.JobConsumer {
	enqueue := func(id string) { h.mu.Lock(); h.woke = append(h.woke, id); h.mu.Unlock() }
	return &sources.JobConsumer{Kind: kind, Stream: stream, Store: h.st, Redis: h.co, Enqueue: enqueue,
		Intake: &rtm.Intake{Store: h.st, Enqueue: enqueue, Allowed: []string{"galaxy/game"},
			Settings: rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/state/" + id }}},
		Block: 50 * time.Millisecond,
		Log:   slog.New(slog.DiscardHandler), Tracer: tracenoop.NewTracerProvider().Tracer("")}
}

// add adds an entry of vals to stream and returns its id.
func (h *harness) add(stream string, vals ...any) string {
	return h.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: vals}).Val()
}

// addStops adds n stop jobs to runtime:stop_jobs, of games g0… with request ids s0…, and returns
// their entry ids.
func (h *harness) addStops(n int) []string {
	var ids []string
	for i := range n {
		ids = append(ids, h.add("runtime:stop_jobs", "game_id", fmt.Sprintf("g%d", i), "request_id", fmt.Sprintf("s%d", i)))
	}
	return ids
}

// runTo runs c until it has saved id as its offset.
func (h *harness) runTo(t *testing.T, c *sources.JobConsumer, id string) {
	t.Helper()
	runUntil(t, c, func() bool { off, _ := h.co.Offset(context.Background(), string(c.Kind)); return off == id })
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
	_, err := h.st.RelayOutbox(context.Background(), 1000, func(_ context.Context, es []rtm.OutboxEntry) (int, error) {
		for _, e := range es {
			if e.Stream != rtm.StreamJobResults {
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
	add := func(vals ...any) string { return h.add("runtime:start_jobs", vals...) }
	add("game_id", "../../etc", "image_ref", "galaxy/game:1.4.1", "request_id", "traversal")
	add("image_ref", "galaxy/game:1.4.1", "request_id", "no-game")
	add("game_id", "g1", "request_id", "no-image")
	add("game_id", "g1", "image_ref", "galaxy/game:1.4.1", "request_id", "huge", "junk", strings.Repeat("x", 10<<10))
	add("game_id", "g1", "image_ref", "busybox:1.36.0", "request_id", "not-allowed")
	add("game_id", "g1", "image_ref", "galaxy/game:latest", "request_id", "not-semver")
	last := add("game_id", "g1", "image_ref", "galaxy/game:1.4.1", "request_id", "good")
	c := h.consumer(rtm.StartJobs, "runtime:start_jobs")
	h.runTo(t, c, last)

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
	ids := h.addStops(3)
	c := h.consumer(rtm.StopJobs, "runtime:stop_jobs")
	h.runTo(t, c, ids[2])
	if got := h.answers(t); len(got) != 3 || got["s1"].Code != rtm.CodeRuntimeNotFound {
		t.Fatalf("first run: %+v", got)
	}
	// Redelivery (an offset lost, a second RTM): the same entries again change nothing.
	if err := h.co.SetOffset(ctx, "stopjobs", "0-0"); err != nil {
		t.Fatal(err)
	}
	h.runTo(t, c, ids[2])
	if got := h.answers(t); len(got) != 0 {
		t.Fatalf("redelivered jobs were answered again: %+v", got)
	}
	// Redis emptied: the offset lies past the new stream, which is read from its start.
	if err := h.rdb.Del(ctx, "runtime:stop_jobs").Err(); err != nil {
		t.Fatal(err)
	}
	fresh := h.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:stop_jobs", ID: "1-1",
		Values: []any{"game_id", "g9", "request_id", "after-reset"}}).Val()
	h.runTo(t, c, fresh)
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
	c := h.consumer(rtm.StopJobs, "runtime:stop_jobs")
	c.Tracer = tp.Tracer("test")
	h.runTo(t, c, last)

	spans := rec.Ended()
	if len(spans) == 0 || spans[0].SpanContext().TraceID().String() != traceID {
		t.Fatalf("the job's span is not in the job's trace: %+v", spans)
	}
	var result map[string]string
	_, err := h.st.RelayOutbox(ctx, 10, func(_ context.Context, es []rtm.OutboxEntry) (int, error) {
		for _, e := range es {
			if e.Stream == rtm.StreamJobResults {
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

// converge settles gameID as a reconciler reaching its desired state would: running its desired
// image, every pending request answered succeeded.
func (h *harness) converge(t *testing.T, gameID string) {
	t.Helper()
	ctx := context.Background()
	rec, err := h.st.Get(ctx, gameID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.st.Commit(ctx, rtm.Change{GameID: gameID, Gen: rec.Generation, Answer: &rtm.Succeeded,
		Apply: func(r *rtm.Record, _ bool) {
			r.Status, r.CurrentImageRef, r.CurrentContainerID = rtm.StatusRunning, r.DesiredImageRef, "c-"+gameID
			r.ObservedGeneration = rec.Generation
		}})
	if err != nil {
		t.Fatal(err)
	}
}

// consume adds entries to stream and runs a consumer of kind until it has handled them all.
func (h *harness) consume(t *testing.T, kind rtm.JobKind, stream string, entries ...[]any) {
	t.Helper()
	var last string
	for _, vals := range entries {
		last = h.add(stream, vals...)
	}
	h.runTo(t, h.consumer(kind, stream), last)
}

func TestJobConsumer_Run_anotherSpellingOfTheRunningImageIsTheSameImage(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.consume(t, rtm.StartJobs, "runtime:start_jobs",
		[]any{"game_id", "g1", "image_ref", "docker.io/galaxy/game:1.4.2", "request_id", "first"})
	if rec, err := h.st.Get(ctx, "g1"); err != nil || rec.DesiredImageRef != "galaxy/game:1.4.2" {
		t.Fatalf("record after a start in the long spelling: %+v %v; want the image as galaxy/game:1.4.2", rec, err)
	}
	h.converge(t, "g1")
	if got := h.answers(t); got["first"].Outcome != rtm.OutcomeSucceeded {
		t.Fatalf("first start: %+v", got)
	}
	h.consume(t, rtm.StartJobs, "runtime:start_jobs",
		[]any{"game_id", "g1", "image_ref", "index.docker.io/galaxy/game:1.4.2", "request_id", "same"},
		[]any{"game_id", "g1", "image_ref", "galaxy/game:1.4.2", "request_id", "short"},
		[]any{"game_id", "g1", "image_ref", "docker.io/galaxy/game:1.4.3", "request_id", "other"})
	got := h.answers(t)
	for _, id := range []string{"same", "short"} {
		if got[id].Outcome != rtm.OutcomeSucceeded {
			t.Errorf("%s: %+v, want succeeded: another spelling of the image the game runs", id, got[id])
		}
	}
	if got["other"].Code != rtm.CodeConflict {
		t.Errorf("other: %+v, want conflict", got["other"])
	}
}

func TestJobConsumer_Run_gameIDEqualButForCaseIsConflict(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.consume(t, rtm.StartJobs, "runtime:start_jobs",
		[]any{"game_id", "foo", "image_ref", "galaxy/game:1.4.2", "request_id", "lower"})
	before, err := h.st.Get(ctx, "foo")
	if err != nil {
		t.Fatal(err)
	}
	h.consume(t, rtm.StartJobs, "runtime:start_jobs",
		[]any{"game_id", "Foo", "image_ref", "galaxy/game:1.4.3", "request_id", "upper"})
	got := h.answers(t)
	if a := got["upper"]; a.Outcome != rtm.OutcomeFailed || a.Code != rtm.CodeConflict {
		t.Fatalf("start of Foo while foo exists: %+v, want failed conflict", a)
	}
	if _, answered := got["lower"]; answered {
		t.Fatal("the start of foo was answered")
	}
	if rec, err := h.st.Get(ctx, "Foo"); err == nil {
		t.Fatalf("a record for Foo was written: %+v", rec)
	}
	after, err := h.st.Get(ctx, "foo")
	if err != nil || after.Generation != before.Generation || after.DesiredImageRef != before.DesiredImageRef {
		t.Fatalf("foo changed: %+v %v, was %+v", after, err, before)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.woke) != 1 || h.woke[0] != "foo" {
		t.Fatalf("enqueued %v, want [foo]", h.woke)
	}
}

func TestMigrate_gameIDCase_failsNamingExistingTwins(t *testing.T) {
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	conn := testenv.MustConn(t, dsn)
	// A database from before migration 4 holding two game ids equal but for case.
	down, err := migrations.FS.ReadFile("000004_game_id_case.down.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{string(down), `UPDATE schema_migrations SET version = 3, dirty = false`,
		`INSERT INTO runtime_records (game_id, status, desired_state) VALUES
			('Foo', 'running', 'running'), ('foo', 'stopped', 'stopped'), ('bar', 'running', 'running')`} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	err = store.Migrate(ctx, dsn)
	if err == nil || !strings.Contains(err.Error(), "equal but for case: Foo, foo") {
		t.Fatalf("migrating: %v, want a failure naming Foo and foo", err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM runtime_records`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("records after the failed migration: %d %v, want all 3 kept", n, err)
	}
}

// countingIntake counts the jobs handed to the intake.
type countingIntake struct {
	sources.Intake
	mu      sync.Mutex
	submits []string
}

func (s *countingIntake) Take(ctx context.Context, req rtm.Request, guard rtm.Guard) (rtm.Submission, error) {
	s.mu.Lock()
	s.submits = append(s.submits, req.RequestID)
	s.mu.Unlock()
	return s.Intake.Take(ctx, req, guard)
}

// checkCounter counts the consumer's checks of its offset against the stream.
type checkCounter struct {
	*coord.Coord
	mu     sync.Mutex
	checks int
}

func (r *checkCounter) LastGeneratedID(ctx context.Context, stream string) (string, error) {
	r.mu.Lock()
	r.checks++
	r.mu.Unlock()
	return r.Coord.LastGeneratedID(ctx, stream)
}

func (r *checkCounter) count() int { r.mu.Lock(); defer r.mu.Unlock(); return r.checks }

func TestJobConsumer_Run_keepsItsOffsetWhenTheNewestEntriesAreDeleted(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	ids := h.addStops(3)
	h.runTo(t, h.consumer(rtm.StopJobs, "runtime:stop_jobs"), ids[2])
	// Someone trims the stream's newest entries: the offset now lies past the newest entry, but
	// not past the stream's last-generated-id.
	if err := h.rdb.XDel(ctx, "runtime:stop_jobs", ids[1], ids[2]).Err(); err != nil {
		t.Fatal(err)
	}
	c := h.consumer(rtm.StopJobs, "runtime:stop_jobs")
	st := &countingIntake{Intake: c.Intake}
	rd := &checkCounter{Coord: h.co}
	c.Intake, c.Redis = st, rd
	// The first check runs before the first read, the second after a read found nothing new: by
	// then a wrongly reset consumer has read the old entries again.
	runUntil(t, c, func() bool { return rd.count() >= 2 })
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.submits) != 0 {
		t.Fatalf("jobs handled again after the newest entries were deleted: %v", st.submits)
	}
	if off, err := h.co.Offset(ctx, "stopjobs"); err != nil || off != ids[2] {
		t.Fatalf("offset %q %v, want %s kept", off, err, ids[2])
	}
}

func TestJobConsumer_Run_enqueuesAJobRecordedButNeverEnqueued(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	// The first attempt's COMMIT reached PostgreSQL, its reply was lost: the job is recorded,
	// pending, and nobody enqueued its game.
	lost := rtm.Request{Channel: rtm.ChannelStartJobs, RequestID: "lost-reply", GameID: "g1", Kind: rtm.OpStart,
		Source: rtm.SourceStartJobs, ImageRef: "galaxy/game:1.4.2", ReceivedAt: time.Now().UTC()}
	settings := h.consumer(rtm.StartJobs, "").Intake.(*rtm.Intake).Settings
	if _, err := h.st.Submit(ctx, lost, func(rec *rtm.Record, busy bool) rtm.Admission {
		return rtm.Admit(rec, lost, busy, settings)
	}); err != nil {
		t.Fatal(err)
	}
	// An answered job delivered again needs nothing.
	answered := rtm.Request{Channel: rtm.ChannelStartJobs, RequestID: "answered", GameID: "g2", Kind: rtm.OpStart,
		Source: rtm.SourceStartJobs, ImageRef: "galaxy/game:1.4.2", ReceivedAt: time.Now().UTC()}
	if _, err := h.st.Submit(ctx, answered, func(*rtm.Record, bool) rtm.Admission {
		return rtm.Admission{Answer: &rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeStartConfigInvalid, Message: "refused"}}
	}); err != nil {
		t.Fatal(err)
	}
	h.consume(t, rtm.StartJobs, "runtime:start_jobs",
		[]any{"game_id", "g2", "image_ref", "galaxy/game:1.4.2", "request_id", "answered"},
		[]any{"game_id", "g1", "image_ref", "galaxy/game:1.4.2", "request_id", "lost-reply"})
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.woke) != 1 || h.woke[0] != "g1" {
		t.Fatalf("enqueued %v, want [g1]: the pending job's game, once", h.woke)
	}
}
