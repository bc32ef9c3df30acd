package sources_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
	dsn  string
	rdb  *redis.Client
	co   *coord.Coord
	mu   sync.Mutex
	woke []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	st, dsn := env.MustStore(t)
	rdb := redis.NewClient(env.RedisOptions(env.NewRedisDB(t)))
	t.Cleanup(func() { rdb.Close() })
	return &harness{st: st, dsn: dsn, rdb: rdb, co: coord.New(rdb, "test", 10*time.Second)}
}

// consumer returns a consumer of stream with the default parallelism; the tests of concurrent
// handling set Parallel.
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

// hookedIntake is the consumer's intake with hooks around each job it takes: before may hold the
// job or fail it, as a store that is slow or down would; after sees every job taken. It counts
// the jobs in flight, the most at once, and each request's attempts.
type hookedIntake struct {
	sources.Intake
	before func(ctx context.Context, req rtm.Request) error
	after  func(req rtm.Request, sub rtm.Submission)

	mu             sync.Mutex
	inFlight, most int
	attempts       map[string]int
	taken          []string // request ids, in the order they were taken
}

func (in *hookedIntake) Take(ctx context.Context, req rtm.Request, guard rtm.Guard) (rtm.Submission, error) {
	in.mu.Lock()
	in.inFlight++
	in.most = max(in.most, in.inFlight)
	if in.attempts == nil {
		in.attempts = map[string]int{}
	}
	in.attempts[req.RequestID]++
	in.mu.Unlock()
	defer func() { in.mu.Lock(); in.inFlight--; in.mu.Unlock() }()
	if in.before != nil {
		if err := in.before(ctx, req); err != nil {
			return rtm.Submission{}, err
		}
	}
	sub, err := in.Intake.Take(ctx, req, guard)
	if err != nil {
		return sub, err
	}
	in.mu.Lock()
	in.taken = append(in.taken, req.RequestID)
	in.mu.Unlock()
	if in.after != nil {
		in.after(req, sub)
	}
	return sub, nil
}

// state returns the jobs in flight, the most at once, the attempts of id and the jobs taken.
func (in *hookedIntake) state(id string) (inFlight, most, attempts int, taken []string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.inFlight, in.most, in.attempts[id], append([]string(nil), in.taken...)
}

// requestRow is a row of requests.
type requestRow struct {
	RequestID, GameID string
	Generation        int64
}

// requests returns the recorded requests in the order they were received, by request id.
func (h *harness) requests(t *testing.T) ([]requestRow, map[string]requestRow) {
	t.Helper()
	rows, err := testenv.MustConn(t, h.dsn).Query(context.Background(),
		`SELECT request_id, game_id, generation FROM requests ORDER BY received_at`)
	if err != nil {
		t.Fatal(err)
	}
	list, err := pgx.CollectRows(rows, pgx.RowToStructByPos[requestRow])
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]requestRow{}
	for _, r := range list {
		byID[r.RequestID] = r
	}
	return list, byID
}

// only returns the elements of s that are in keep, in order.
func only(s []string, keep ...string) []string {
	var out []string
	for _, x := range s {
		if slices.Contains(keep, x) {
			out = append(out, x)
		}
	}
	return out
}

func (h *harness) start(gameID, image, requestID string) string {
	return h.add("runtime:start_jobs", "game_id", gameID, "image_ref", image, "request_id", requestID)
}

func TestJobConsumer_Run_handlesEachGamesJobsInStreamOrder(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	// One batch: g1's start, a start of another image (conflict if it comes second, recorded if
	// first) and a start of the first image again (joins the first); a start of Twin, then of
	// twin (one game to PostgreSQL: the second is conflict); and eight other games between.
	h.start("g1", "galaxy/game:1.4.1", "g1-first")
	h.start("Twin", "galaxy/game:1.4.1", "twin-upper")
	var others []string
	for i := range 8 {
		id := fmt.Sprintf("o%d", i)
		others = append(others, id)
		h.start(id, "galaxy/game:1.4.1", id)
	}
	h.start("g1", "galaxy/game:1.4.2", "g1-other-image")
	h.start("twin", "galaxy/game:1.4.1", "twin-lower")
	last := h.start("g1", "galaxy/game:1.4.1", "g1-same-image")

	c := h.consumer(rtm.StartJobs, "runtime:start_jobs")
	c.Parallel = 0 // the default
	// The first jobs of g1 and Twin are held until every other game's job is recorded: the
	// later jobs of g1 and twin have all that time to overtake them.
	othersDone := make(chan struct{})
	var othersTaken atomic.Int32
	in := &hookedIntake{Intake: c.Intake,
		before: func(ctx context.Context, req rtm.Request) error {
			if req.RequestID != "g1-first" && req.RequestID != "twin-upper" {
				return nil
			}
			select {
			case <-othersDone:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		after: func(req rtm.Request, _ rtm.Submission) {
			if slices.Contains(others, req.RequestID) && othersTaken.Add(1) == int32(len(others)) {
				close(othersDone)
			}
		}}
	c.Intake = in
	h.runTo(t, c, last)

	_, _, _, taken := in.state("")
	if got := only(taken, "g1-first", "g1-other-image", "g1-same-image"); !slices.Equal(got, []string{"g1-first", "g1-other-image", "g1-same-image"}) {
		t.Errorf("g1's jobs taken in the order %v, want stream order", got)
	}
	if got := only(taken, "twin-upper", "twin-lower"); !slices.Equal(got, []string{"twin-upper", "twin-lower"}) {
		t.Errorf("Twin's and twin's jobs taken in the order %v, want stream order", got)
	}
	list, rows := h.requests(t)
	var g1 []string
	for _, r := range list {
		if r.GameID == "g1" {
			g1 = append(g1, r.RequestID)
		}
	}
	if want := []string{"g1-first", "g1-other-image", "g1-same-image"}; !slices.Equal(g1, want) {
		t.Errorf("g1's requests recorded in the order %v, want %v", g1, want)
	}
	for _, id := range append([]string{"g1-first", "g1-other-image", "g1-same-image"}, others...) {
		if rows[id].Generation != 1 {
			t.Errorf("request %s: generation %d, want 1", id, rows[id].Generation)
		}
	}
	if rec, err := h.st.Get(ctx, "g1"); err != nil || rec.DesiredImageRef != "galaxy/game:1.4.1" || rec.Generation != 1 {
		t.Errorf("g1's record: %+v %v, want the first start's image at generation 1", rec, err)
	}
	if _, err := h.st.Get(ctx, "Twin"); err != nil {
		t.Errorf("Twin's record: %v, want the first start recorded", err)
	}
	got := h.answers(t)
	if len(got) != 2 || got["g1-other-image"].Code != rtm.CodeConflict || got["twin-lower"].Code != rtm.CodeConflict {
		t.Errorf("answers %+v, want conflict for g1-other-image and twin-lower only", got)
	}
}

func TestJobConsumer_Run_recordsEveryGameOfABatchOnce(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	// 64 entries, one read: 62 games, and one request id sent for two games.
	var games []string
	for i := range 62 {
		games = append(games, fmt.Sprintf("m%d", i))
		h.start(games[i], "galaxy/game:1.4.1", "r-"+games[i])
	}
	h.start("d1", "galaxy/game:1.4.1", "shared")
	last := h.start("d2", "galaxy/game:1.4.1", "shared")
	c := h.consumer(rtm.StartJobs, "runtime:start_jobs")
	c.Parallel = 0
	in := &hookedIntake{Intake: c.Intake}
	c.Intake = in
	h.runTo(t, c, last)

	list, rows := h.requests(t)
	if len(list) != 63 {
		t.Errorf("%d requests recorded, want 63", len(list))
	}
	for _, g := range games {
		if r := rows["r-"+g]; r.GameID != g || r.Generation != 1 {
			t.Errorf("request r-%s: %+v, want recorded for %s at generation 1", g, r, g)
		}
		if rec, err := h.st.Get(ctx, g); err != nil || rec.Generation != 1 {
			t.Errorf("record of %s: %+v %v, want generation 1", g, rec, err)
		}
	}
	// Whichever of d1 and d2 came first has the request; the other's job is its duplicate.
	winner, loser := rows["shared"].GameID, "d1"
	if winner == "d1" {
		loser = "d2"
	}
	if _, err := h.st.Get(ctx, winner); winner != "d1" && winner != "d2" || err != nil {
		t.Errorf("request shared recorded for %q (record: %v), want d1 or d2", winner, err)
	}
	if rec, err := h.st.Get(ctx, loser); err == nil {
		t.Errorf("%s has a record, %+v: its job was the other's duplicate", loser, rec)
	}
	if _, _, n, _ := in.state("shared"); n != 2 {
		t.Errorf("request shared taken %d times, want once per entry", n)
	}
	h.mu.Lock()
	woke := append([]string(nil), h.woke...)
	h.mu.Unlock()
	for _, g := range games {
		if n := len(only(woke, g)); n != 1 {
			t.Errorf("%s enqueued %d times, want once", g, n)
		}
	}
	if got := h.answers(t); len(got) != 0 {
		t.Errorf("answers %+v, want none: every start is pending", got)
	}
}

func TestJobConsumer_Run_aJobFailingToRecordHoldsItsGameAndTheOffset(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	first := h.start("g4", "galaxy/game:1.4.1", "x")
	h.runTo(t, h.consumer(rtm.StartJobs, "runtime:start_jobs"), first)
	h.start("g1", "galaxy/game:1.4.1", "a1")
	h.start("g2", "galaxy/game:1.4.1", "b")
	h.start("g1", "galaxy/game:1.4.2", "a2") // conflict after a1; recorded, were it first
	last := h.start("g3", "galaxy/game:1.4.1", "c")
	offset := func() string { off, _ := h.co.Offset(ctx, "startjobs"); return off }

	// The store fails a1 until the consumer is stopped.
	c := h.consumer(rtm.StartJobs, "runtime:start_jobs")
	c.Parallel = 0
	in := &hookedIntake{Intake: c.Intake, before: func(_ context.Context, req rtm.Request) error {
		if req.RequestID == "a1" {
			return errors.New("store down")
		}
		return nil
	}}
	c.Intake = in
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = c.Run(runCtx); close(done) }()
	waitFor(t, "a1 tried again, b and c recorded", func() bool {
		_, _, attempts, taken := in.state("a1")
		return attempts >= 2 && len(only(taken, "b", "c")) == 2
	})
	if _, _, n, _ := in.state("a2"); n != 0 {
		t.Errorf("a2 tried %d times while a1 failed, want 0: it must wait for a1", n)
	}
	if off := offset(); off != first {
		t.Errorf("offset %s while a1 fails, want %s", off, first)
	}
	stop()
	<-done
	if inFlight, _, _, _ := in.state(""); inFlight != 0 {
		t.Errorf("%d jobs still in flight after Run returned", inFlight)
	}
	if off := offset(); off != first {
		t.Errorf("offset %s after a stop mid-batch, want %s kept", off, first)
	}

	// The store is back: the batch is read again; b and c are duplicates, a1 then a2 recorded.
	c = h.consumer(rtm.StartJobs, "runtime:start_jobs")
	c.Parallel = 0
	dups := map[string]bool{}
	var mu sync.Mutex
	in = &hookedIntake{Intake: c.Intake, after: func(req rtm.Request, sub rtm.Submission) {
		mu.Lock()
		dups[req.RequestID] = sub.Duplicate
		mu.Unlock()
	}}
	c.Intake = in
	h.runTo(t, c, last)
	_, _, _, taken := in.state("")
	if got := only(taken, "a1", "a2"); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("g1's jobs taken in the order %v, want [a1 a2]", got)
	}
	mu.Lock()
	if !dups["b"] || !dups["c"] || dups["a1"] || dups["a2"] {
		t.Errorf("duplicates %v, want b and c only", dups)
	}
	mu.Unlock()
	list, rows := h.requests(t)
	if len(list) != 5 {
		t.Errorf("%d requests recorded, want 5", len(list))
	}
	for _, id := range []string{"a1", "b", "c"} {
		if rows[id].Generation != 1 {
			t.Errorf("request %s: %+v, want generation 1", id, rows[id])
		}
	}
	if rec, err := h.st.Get(ctx, "g1"); err != nil || rec.DesiredImageRef != "galaxy/game:1.4.1" {
		t.Errorf("g1's record: %+v %v, want a1's image", rec, err)
	}
	if got := h.answers(t); len(got) != 1 || got["a2"].Code != rtm.CodeConflict {
		t.Errorf("answers %+v, want conflict for a2 only", got)
	}
}

func TestJobConsumer_Run_boundsTheGamesInFlight(t *testing.T) {
	for _, tc := range []struct {
		name           string
		parallel, want int
	}{
		{"one", 1, 1},
		{"four", 4, 4},
		{"default", 0, sources.DefaultJobParallel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			var last string
			for i := range 40 {
				last = h.start(fmt.Sprintf("g%d", i), "galaxy/game:1.4.1", fmt.Sprintf("r%d", i))
			}
			c := h.consumer(rtm.StartJobs, "runtime:start_jobs")
			c.Parallel = tc.parallel
			// Every job waits until tc.want jobs have been in flight at once.
			full := make(chan struct{})
			var once sync.Once
			in := &hookedIntake{Intake: c.Intake}
			in.before = func(ctx context.Context, _ rtm.Request) error {
				if inFlight, _, _, _ := in.state(""); inFlight >= tc.want {
					once.Do(func() { close(full) })
				}
				select {
				case <-full:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			c.Intake = in
			h.runTo(t, c, last)
			if _, most, _, taken := in.state(""); most != tc.want || len(taken) != 40 {
				t.Errorf("at most %d jobs in flight, %d taken; want %d and 40", most, len(taken), tc.want)
			}
		})
	}
}

// TestStore_Submit_sameRequestIDForTwoGamesAtOnce submits one request id for two games in two
// transactions at once, as the consumer does with two entries of one request id and different
// games. (It lives here because the consumer's concurrency is what makes the race.) The second
// transaction's insert of the request waits for the first's: when the first commits, the second
// is a duplicate; when the first fails, the second records the request and the first, tried
// again, is a duplicate. Never two records, never an error but the first's own.
func TestStore_Submit_sameRequestIDForTwoGamesAtOnce(t *testing.T) {
	settings := rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/state/" + id }}
	startOf := func(gameID, requestID string) (rtm.Request, rtm.Admitter) {
		req := rtm.Request{Channel: rtm.ChannelStartJobs, RequestID: requestID, GameID: gameID, Kind: rtm.OpStart,
			Source: rtm.SourceStartJobs, ImageRef: "galaxy/game:1.4.2", ReceivedAt: time.Now().UTC()}
		return req, func(rec *rtm.Record, busy bool) rtm.Admission { return rtm.Admit(rec, req, busy, settings) }
	}
	type result struct {
		sub rtm.Submission
		err error
	}
	for _, tc := range []struct {
		name       string
		firstFails bool
	}{
		{"the first commits", false},
		{"the first fails", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			second, dsn := env.MustStore(t)
			// The first's lock timeout is short, to fail it while the second waits for it.
			firstOpts := store.Options{}
			if tc.firstFails {
				firstOpts.Timeouts.Lock = 300 * time.Millisecond
			}
			first, err := store.Open(ctx, dsn, firstOpts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(first.Close)
			seed, admitSeed := startOf("ga", "seed")
			if _, err := second.Submit(ctx, seed, admitSeed); err != nil {
				t.Fatal(err)
			}
			// Someone holds ga's record: the first transaction records the request, then waits.
			holder, err := testenv.MustConn(t, dsn).Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = holder.Rollback(ctx) }()
			if _, err := holder.Exec(ctx, `SELECT 1 FROM runtime_records WHERE game_id = 'ga' FOR UPDATE`); err != nil {
				t.Fatal(err)
			}
			watch := testenv.MustConn(t, dsn)
			waiting := func(n int) func() bool {
				return func() bool {
					var got int
					err := watch.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
						WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got)
					return err == nil && got >= n
				}
			}
			submit := func(st *store.Store, gameID string) chan result {
				out := make(chan result, 1)
				go func() {
					req, admit := startOf(gameID, "same")
					sub, err := st.Submit(ctx, req, admit)
					out <- result{sub, err}
				}()
				return out
			}
			a := submit(first, "ga")
			waitFor(t, "the first submission waiting for ga's record", waiting(1))
			b := submit(second, "gb")
			waitFor(t, "the second submission waiting for the first", waiting(2))

			winner := "ga"
			if !tc.firstFails {
				_ = holder.Rollback(ctx)
				ra, rb := <-a, <-b
				if ra.err != nil || ra.sub.Duplicate {
					t.Fatalf("first: %+v %v, want recorded", ra.sub, ra.err)
				}
				if rb.err != nil || !rb.sub.Duplicate {
					t.Fatalf("second: %+v %v, want a duplicate", rb.sub, rb.err)
				}
			} else {
				winner = "gb"
				ra := <-a
				if ra.err == nil {
					t.Fatalf("first: %+v, want its lock timeout", ra.sub)
				}
				rb := <-b
				if rb.err != nil || rb.sub.Duplicate {
					t.Fatalf("second: %+v %v, want recorded once the first failed", rb.sub, rb.err)
				}
				_ = holder.Rollback(ctx)
				// The consumer tries the first again.
				req, admit := startOf("ga", "same")
				if sub, err := first.Submit(ctx, req, admit); err != nil || !sub.Duplicate {
					t.Fatalf("first, tried again: %+v %v, want a duplicate", sub, err)
				}
			}
			var games []string
			rows, err := watch.Query(ctx, `SELECT game_id FROM requests WHERE request_id = 'same'`)
			if err == nil {
				games, err = pgx.CollectRows(rows, pgx.RowTo[string])
			}
			if err != nil || !slices.Equal(games, []string{winner}) {
				t.Fatalf("request same recorded for %v (%v), want [%s]", games, err, winner)
			}
		})
	}
}
