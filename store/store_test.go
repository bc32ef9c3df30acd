package store_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// open migrates a fresh database and opens a store on it.
func open(t testing.TB) (*store.Store, string) {
	t.Helper()
	return env.MustStore(t)
}

func TestMigrate_fromEmptyTwiceInParallelAndAgain(t *testing.T) {
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = store.Migrate(ctx, dsn) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("parallel Migrate %d: %v", i, err)
		}
	}
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatalf("Migrate on an up-to-date schema: %v", err)
	}
	conn := testenv.MustConn(t, dsn)
	for _, table := range []string{"runtime_records", "operation_log", "health_snapshots", "requests", "outbox", "schema_migrations"} {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = 'rtmanager' AND table_name = $1`, table).Scan(&n); err != nil || n != 1 {
			t.Errorf("table rtmanager.%s: n=%d err=%v", table, n, err)
		}
	}
	// The enums are enforced by the database itself.
	if _, err := conn.Exec(ctx, `INSERT INTO runtime_records (game_id, status, desired_state) VALUES ('g', 'dancing', 'running')`); err == nil {
		t.Error("a status outside the contract was accepted")
	}
}

func TestOpen_libpqOptionsDSN(t *testing.T) {
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	libpq := dsn[:len(dsn)-len("search_path=rtmanager&sslmode=disable")] + "options=-csearch_path%3Drtmanager&sslmode=disable"
	if err := store.Migrate(ctx, libpq); err != nil {
		t.Fatalf("Migrate with the libpq DSN: %v", err)
	}
	s, err := store.Open(ctx, libpq, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func settings() rtm.Settings {
	return rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/state/" + id }}
}

func submit(t *testing.T, s *store.Store, req rtm.Request) rtm.Submission {
	t.Helper()
	if req.ReceivedAt.IsZero() {
		req.ReceivedAt = time.Now().UTC()
	}
	sub, err := s.Submit(context.Background(), req, func(rec *rtm.Record, busy bool) rtm.Admission {
		return rtm.Admit(rec, req, busy, settings())
	})
	if err != nil {
		t.Fatalf("Submit %s: %v", req.RequestID, err)
	}
	return sub
}

func startJob(id, game, image string) rtm.Request {
	return rtm.Request{Channel: rtm.ChannelStartJobs, RequestID: id, GameID: game, Kind: rtm.OpStart,
		Source: rtm.SourceStartJobs, ImageRef: image}
}

func stopJob(id, game string) rtm.Request {
	return rtm.Request{Channel: rtm.ChannelStopJobs, RequestID: id, GameID: game, Kind: rtm.OpStop, Source: rtm.SourceStopJobs}
}

func outbox(t *testing.T, s *store.Store) []rtm.OutboxEntry {
	t.Helper()
	var got []rtm.OutboxEntry
	_, err := s.RelayOutbox(context.Background(), 1000, func(_ context.Context, es []rtm.OutboxEntry) (int, error) {
		got = append(got, es...)
		return len(es), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func fields(e rtm.OutboxEntry) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(e.Fields); i += 2 {
		m[e.Fields[i]] = e.Fields[i+1]
	}
	return m
}

func TestStore_Submit_startThenSettleAnswersOnce(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	sub := submit(t, s, startJob("r1", "g1", "galaxy/game:1.4.1"))
	if sub.Duplicate || sub.Answer != nil || sub.Record == nil || sub.Record.DesiredState != rtm.DesiredRunning {
		t.Fatalf("first start: %+v", sub)
	}
	if dup := submit(t, s, startJob("r1", "g1", "galaxy/game:1.4.1")); !dup.Duplicate {
		t.Fatal("the same request id was not recognised")
	}
	rec, err := s.Commit(ctx, rtm.Change{GameID: "g1", Gen: sub.Record.Generation, Answer: &rtm.Succeeded, ContainerID: "c1",
		Apply: func(r *rtm.Record, _ bool) {
			r.Status, r.CurrentContainerID, r.CurrentImageRef, r.ObservedGeneration = rtm.StatusRunning, "c1", "galaxy/game:1.4.1", r.Generation
		},
		Events: []rtm.HealthEvent{{GameID: "g1", Type: rtm.EventContainerStarted, ContainerID: "c1"}}})
	if err != nil || rec.Status != rtm.StatusRunning {
		t.Fatalf("Commit: %v %+v", err, rec)
	}
	entries := outbox(t, s)
	var results, events int
	for _, e := range entries {
		f := fields(e)
		switch e.Stream {
		case rtm.StreamJobResults:
			results++
			if f["request_id"] != "r1" || f["outcome"] != "succeeded" || f["container_id"] != "c1" ||
				f["engine_endpoint"] != "http://galaxy-game-g1:8080" || f["job"] != "start" {
				t.Errorf("job result: %v", f)
			}
		case rtm.StreamHealthEvents:
			events++
		}
	}
	if results != 1 || events != 1 {
		t.Fatalf("outbox: %d results, %d events, want 1 and 1", results, events)
	}
	if again := outbox(t, s); len(again) != 0 {
		t.Fatalf("relayed rows were handed out again: %d", len(again))
	}
	// A second start of the same image for the running game is answered at once.
	sub = submit(t, s, startJob("r2", "g1", "galaxy/game:1.4.1"))
	if sub.Answer == nil || sub.Answer.Outcome != rtm.OutcomeSucceeded {
		t.Fatalf("repeated start: %+v", sub.Answer)
	}
	// Another image for the running game is a conflict.
	sub = submit(t, s, startJob("r3", "g1", "galaxy/game:1.4.2"))
	if sub.Answer == nil || sub.Answer.Code != rtm.CodeConflict {
		t.Fatalf("start of another image: %+v", sub.Answer)
	}
	ops, err := s.Operations(ctx, "g1", 10)
	if err != nil || len(ops) != 3 {
		t.Fatalf("operations: %v %d", err, len(ops))
	}
	if ops[0].RequestID != "r3" || ops[2].RequestID != "r1" {
		t.Errorf("operations are not newest first: %+v", ops)
	}
}

func TestStore_Submit_stopOfUnknownGameIsRuntimeNotFound(t *testing.T) {
	s, _ := open(t)
	sub := submit(t, s, stopJob("s1", "nobody"))
	if sub.Answer == nil || sub.Answer.Code != rtm.CodeRuntimeNotFound {
		t.Fatalf("stop of an unknown game: %+v", sub.Answer)
	}
	if got := outbox(t, s); len(got) != 1 || fields(got[0])["error_code"] != "runtime_not_found" {
		t.Fatalf("outbox: %+v", got)
	}
}

func TestStore_AnswerInvalid_onceWithNoIntent(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	req := rtm.Request{Channel: rtm.ChannelStartJobs, RequestID: "bad", GameID: "../../etc", Kind: rtm.OpStart, Source: rtm.SourceStartJobs, ReceivedAt: time.Now()}
	a := rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeInvalidJob, Message: "bad game id"}
	for i := 0; i < 2; i++ {
		if _, err := s.AnswerInvalid(ctx, req, a); err != nil {
			t.Fatal(err)
		}
	}
	got := outbox(t, s)
	if len(got) != 1 || got[0].Stream != rtm.StreamJobResults || fields(got[0])["error_code"] != "invalid_job" {
		t.Fatalf("outbox: %+v", got)
	}
}

func TestStore_Commit_failedStartQueuesOneIntent(t *testing.T) {
	s, _ := open(t)
	sub := submit(t, s, startJob("r1", "g1", "galaxy/game:9.9.9"))
	submit(t, s, startJob("r2", "g1", "galaxy/game:9.9.9")) // joins the pending start
	a := rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeImagePullFailed, Message: "no such image"}
	if _, err := s.Commit(context.Background(), rtm.Change{GameID: "g1", Gen: sub.Record.Generation, Answer: &a,
		Apply: func(r *rtm.Record, _ bool) { r.Status, r.ObservedGeneration = rtm.StatusFailed, r.Generation }}); err != nil {
		t.Fatal(err)
	}
	var intents, results int
	for _, e := range outbox(t, s) {
		switch e.Stream {
		case rtm.StreamNotificationIntents:
			intents++
			if f := fields(e); f["intent"] != "runtime.image_pull_failed" {
				t.Errorf("intent: %v", f)
			}
		case rtm.StreamJobResults:
			results++
		}
	}
	if intents != 2 || results != 2 {
		t.Fatalf("%d intents and %d results for two failing start requests, want 2 and 2", intents, results)
	}
}

func TestStore_RelayOutbox_skipsRowsAnotherPublisherHolds(t *testing.T) {
	s, dsn := open(t)
	ctx := context.Background()
	submit(t, s, stopJob("s1", "a"))
	submit(t, s, stopJob("s2", "b"))
	other, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	hold := make(chan struct{})
	held := make(chan int)
	go func() {
		_, _ = s.RelayOutbox(ctx, 1, func(_ context.Context, es []rtm.OutboxEntry) (int, error) {
			held <- len(es)
			<-hold
			return len(es), nil
		})
	}()
	if n := <-held; n != 1 {
		t.Fatalf("first publisher got %d rows", n)
	}
	var second []rtm.OutboxEntry
	if _, err := other.RelayOutbox(ctx, 10, func(_ context.Context, es []rtm.OutboxEntry) (int, error) {
		second = es
		return len(es), nil
	}); err != nil {
		t.Fatal(err)
	}
	close(hold)
	if len(second) != 1 {
		t.Fatalf("second publisher got %d rows, want the 1 not held", len(second))
	}
	time.Sleep(100 * time.Millisecond)
	if n, err := s.OutboxBacklog(ctx); err != nil || n != 0 {
		t.Fatalf("backlog %d %v", n, err)
	}
}

func TestStore_Get_unknownIsNotFound(t *testing.T) {
	s, _ := open(t)
	if _, err := s.Get(context.Background(), "nobody"); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("Get: %v", err)
	}
}

func TestStore_CommitHealth_updatesSnapshot(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CommitHealth(ctx, []rtm.HealthEvent{{GameID: "g", Type: rtm.EventContainerExited, ContainerID: "c", ExitCode: rtm.IntPtr(3), DockerState: "exited"}}); err != nil {
		t.Fatal(err)
	}
	h, err := s.Health(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if h.Status != rtm.HealthUnhealthy || h.ExitCode == nil || *h.ExitCode != 3 || h.DockerState != "exited" {
		t.Fatalf("snapshot: %+v", h)
	}
	if err := s.CommitHealth(ctx, []rtm.HealthEvent{{GameID: "g", Type: rtm.EventContainerStarted, ContainerID: "c2"}}); err != nil {
		t.Fatal(err)
	}
	if h, _ = s.Health(ctx, "g"); h.Status != rtm.HealthHealthy || h.ExitCode != nil || h.ConsecutiveProbeFailures != 0 {
		t.Fatalf("snapshot after start: %+v", h)
	}
}

func TestStore_PruneOutbox_keepsRecentRows(t *testing.T) {
	s, _ := open(t)
	submit(t, s, stopJob("s1", "a"))
	outbox(t, s)
	n, err := s.PruneOutbox(context.Background())
	if err != nil || n != 0 {
		t.Fatalf("PruneOutbox: %d %v", n, err)
	}
	if dup := submit(t, s, stopJob("s1", "a")); !dup.Duplicate {
		t.Fatal("a recent request was forgotten")
	}
}

func TestStore_CommitHealth_publishesEachProbeTransitionOnce(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	ev := func(typ rtm.HealthEventType) []rtm.HealthEvent {
		return []rtm.HealthEvent{{GameID: "g", Type: typ, ContainerID: "c"}}
	}
	for _, typ := range []rtm.HealthEventType{rtm.EventContainerStarted, rtm.EventProbeRecovered, rtm.EventProbeFailed,
		rtm.EventProbeFailed, rtm.EventProbeRecovered, rtm.EventProbeRecovered, rtm.EventInspectUnhealthy, rtm.EventInspectUnhealthy} {
		if err := s.CommitHealth(ctx, ev(typ)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, e := range outbox(t, s) {
		got = append(got, fields(e)["event_type"])
	}
	want := "container_started probe_failed probe_recovered inspect_unhealthy"
	if strings.Join(got, " ") != want {
		t.Fatalf("published %v, want %s", got, want)
	}
}

// A REST call waiting for its answer is told of the commit that answered it: OnAnswered runs once
// per answered request after the commit, with its channel.
func TestStore_OnAnswered_toldOfEachAnswerAfterItsCommit(t *testing.T) {
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var told []string
	s, err := store.Open(ctx, dsn, store.Options{OnAnswered: func(ch rtm.Channel, id string) {
		mu.Lock()
		told = append(told, string(ch)+"/"+id)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	req := rtm.Request{Channel: rtm.ChannelREST, RequestID: "rest-1", GameID: "nobody", Kind: rtm.OpStop,
		Source: rtm.SourceAdminREST, ReceivedAt: time.Now().UTC()}
	sub, err := s.Submit(ctx, req, func(rec *rtm.Record, busy bool) rtm.Admission {
		return rtm.Admit(rec, req, busy, rtm.Settings{EnginePort: 8080, StateRootJoin: func(string) string { return "/s" }})
	})
	if err != nil || sub.Answer == nil {
		t.Fatalf("Submit of a stop for an unknown game: %+v, %v; want answered at once", sub, err)
	}
	if ans, err := s.RequestAnswer(ctx, rtm.ChannelREST, "rest-1"); err != nil || ans == nil {
		t.Fatalf("RequestAnswer after the report: %+v, %v", ans, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 1 || told[0] != "rest/rest-1" {
		t.Fatalf("OnAnswered told %v, want [rest/rest-1]", told)
	}
}
