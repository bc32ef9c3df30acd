package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// redisURL returns a redis:// URL with password for a fresh logical database, and a client of it.
func redisURL(tb testing.TB) (string, *redis.Client) {
	tb.Helper()
	db := env.NewRedisDB(tb)
	c := redis.NewClient(env.RedisOptions(db))
	tb.Cleanup(func() { c.Close() })
	return fmt.Sprintf("redis://:%s@%s/%d", env.RedisPassword, env.RedisAddr, db), c
}

// fakeConsumer stands in for RTM: it reads the next job from stream and answers it on results
// with answer's fields (request_id, job and game_id are filled in from the job). It first
// publishes an unrelated result, which the waiting command must skip. The job's fields are sent
// on the returned channel.
func fakeConsumer(tb testing.TB, c *redis.Client, stream, results, job string, answer map[string]any) <-chan map[string]any {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	jobs := make(chan map[string]any, 1)
	done := make(chan struct{})
	tb.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		defer close(jobs)
		res, err := c.XRead(ctx, &redis.XReadArgs{Streams: []string{stream, "0"}, Count: 1, Block: 15 * time.Second}).Result()
		if err != nil {
			return
		}
		fields := res[0].Messages[0].Values
		jobs <- fields
		other := map[string]any{"request_id": "someone-else", "job": job, "game_id": fields["game_id"], "outcome": "failed",
			"error_code": "conflict", "finished_at": time.Now().UTC().Format(time.RFC3339)}
		c.XAdd(ctx, &redis.XAddArgs{Stream: results, Values: other})
		values := map[string]any{"request_id": fields["request_id"], "job": job, "game_id": fields["game_id"],
			"finished_at": time.Now().UTC().Format(time.RFC3339Nano)}
		for k, v := range answer {
			values[k] = v
		}
		c.XAdd(ctx, &redis.XAddArgs{Stream: results, Values: values})
	}()
	return jobs
}

func TestRun_jobsStart_waitPrintsResult(t *testing.T) {
	url, c := redisURL(t)
	jobs := fakeConsumer(t, c, "runtime:start_jobs", "runtime:job_results", "start", map[string]any{
		"outcome": "succeeded", "error_code": "", "error_message": "",
		"container_id": "4f1c2a9b8e7d6c5b4a3f", "engine_endpoint": "http://galaxy-game-g1:8080", "image_ref": "galaxy/game:1.4.2"})

	r := rtmctl(t, nil, "jobs", "start", "g1", "--image", "galaxy/game:1.4.2", "--redis", url, "--timeout", "15s")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	job := <-jobs
	rid, _ := job["request_id"].(string)
	if job["game_id"] != "g1" || job["image_ref"] != "galaxy/game:1.4.2" || !strings.HasPrefix(rid, "rtmctl-") || len(rid) != len("rtmctl-")+16 {
		t.Fatalf("job fields %v", job)
	}
	ls := lines(r.stdout)
	if len(ls) != 2 || strings.Join(strings.Fields(ls[0]), " ") != "REQUEST ID JOB GAME ID OUTCOME ERROR CONTAINER IMAGE FINISHED" {
		t.Fatalf("result table:\n%s", r.stdout)
	}
	want := rid + " start g1 succeeded - 4f1c2a9b8e7d galaxy/game:1.4.2"
	if got := strings.Join(strings.Fields(ls[1]), " "); !strings.HasPrefix(got, want+" ") {
		t.Fatalf("row %q, want it to start with %q", got, want)
	}
}

func TestRun_jobsStart_failedOutcomeExitsOne(t *testing.T) {
	url, c := redisURL(t)
	fakeConsumer(t, c, "runtime:start_jobs", "runtime:job_results", "start", map[string]any{
		"outcome": "failed", "error_code": "start_config_invalid", "error_message": `image repository "evil/game" is not in the allow-list`})

	r := rtmctl(t, nil, "jobs", "start", "g1", "--image", "evil/game:1.0.0", "--redis", url, "--timeout", "15s", "-o", "json")
	if r.code != 1 {
		t.Fatalf("%v", r)
	}
	var res map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res["outcome"] != "failed" || res["entry_id"] == "" {
		t.Fatalf("json result %v:\n%s", err, r.stdout)
	}
	if !strings.Contains(r.stderr, `error: start_config_invalid: image repository "evil/game" is not in the allow-list`) {
		t.Fatalf("stderr:\n%s", r.stderr)
	}
}

func TestRun_jobsStop_hostPortPasswordAndStreamFlags(t *testing.T) {
	// Database 0 through host:port: streams of this test's own keep it apart from the others.
	c := redis.NewClient(env.RedisOptions(0))
	defer c.Close()
	suffix := fmt.Sprint(time.Now().UnixNano())
	stops, results := "test:stop_jobs:"+suffix, "test:job_results:"+suffix
	defer c.Del(context.Background(), stops, results)
	jobs := fakeConsumer(t, c, stops, results, "stop", map[string]any{"outcome": "succeeded"})

	r := rtmctl(t, map[string]string{"RTMANAGER_REDIS_PASSWORD": "wrong"},
		"jobs", "stop", "g1", "--redis", env.RedisAddr, "--redis-password", env.RedisPassword,
		"--stop-stream", stops, "--results-stream", results, "--request-id", "lobby-7", "--timeout", "15s")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	job := <-jobs
	if job["game_id"] != "g1" || job["reason"] != "admin_request" || job["request_id"] != "lobby-7" {
		t.Fatalf("job fields %v", job)
	}
	if !strings.Contains(r.stdout, "lobby-7") || !strings.Contains(r.stdout, "succeeded") {
		t.Fatalf("result:\n%s", r.stdout)
	}
}

func TestRun_jobsStart_passwordFromEnvironment(t *testing.T) {
	c := redis.NewClient(env.RedisOptions(0))
	defer c.Close()
	stream := fmt.Sprintf("test:start_jobs:%d", time.Now().UnixNano())
	defer c.Del(context.Background(), stream)
	r := rtmctl(t, map[string]string{"RTMANAGER_REDIS_MASTER_ADDR": env.RedisAddr, "RTMANAGER_REDIS_PASSWORD": env.RedisPassword,
		"RTMANAGER_REDIS_START_JOBS_STREAM": stream},
		"jobs", "start", "g1", "--image", "galaxy/game:1.4.2", "--wait=false")
	if r.code != 0 || !strings.Contains(r.stdout, "queued on "+stream) {
		t.Fatalf("%v", r)
	}
	msgs, err := c.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil || len(msgs) != 1 || msgs[0].Values["image_ref"] != "galaxy/game:1.4.2" {
		t.Fatalf("stream %v: %v", err, msgs)
	}
}

func TestRun_jobsStart_repeatedRequestIDGetsEarlierResult(t *testing.T) {
	url, c := redisURL(t)
	ctx := context.Background()
	c.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:job_results", Values: []any{"request_id", "r-1", "job", "stop", "game_id", "g1", "outcome", "failed"}})
	c.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:job_results", Values: []any{"request_id", "r-1", "job", "start", "game_id", "g1",
		"outcome", "succeeded", "finished_at", time.Now().UTC().Format(time.RFC3339)}})

	r := rtmctl(t, nil, "jobs", "start", "g1", "--image", "galaxy/game:1.4.2", "--request-id", "r-1", "--redis", url, "--timeout", "5s")
	if r.code != 0 || !strings.Contains(r.stdout, "succeeded") || !strings.Contains(r.stderr, "already had a result") {
		t.Fatalf("%v", r)
	}
	if n, _ := c.XLen(ctx, "runtime:start_jobs").Result(); n != 1 {
		t.Fatalf("want the job queued once, got %d entries", n)
	}
}

func TestRun_jobsStart_noResultTimesOut(t *testing.T) {
	url, _ := redisURL(t)
	start := time.Now()
	r := rtmctl(t, nil, "jobs", "start", "g1", "--image", "galaxy/game:1.4.2", "--redis", url, "--timeout", "1500ms")
	r.wantError(t, "error: timeout: no result for request_id rtmctl-", "queued on runtime:start_jobs")
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %s for a 1.5s timeout", took)
	}
}

func TestRun_jobs_wrongPasswordExitsOne(t *testing.T) {
	r := rtmctl(t, nil, "jobs", "stop", "g1", "--redis", env.RedisAddr, "--redis-password", "nope", "--timeout", "5s")
	r.wantError(t, "error: redis at "+env.RedisAddr)
}

func TestRun_watchHealth_replaysFiltersAndAligns(t *testing.T) {
	url, c := redisURL(t)
	ctx := context.Background()
	add := func(game, event, exit, msg string) {
		c.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:health_events", Values: []any{"game_id", game, "event_type", event,
			"container_id", "4f1c2a9b8e7d6c5b4a3f", "exit_code", exit, "message", msg, "observed_at", "2026-03-01T10:00:00.123Z"}})
	}
	add("g1", "container_started", "", "started")
	add("g2", "container_started", "", "started")
	add("g1", "container_oom", "137", "killed by the kernel's OOM killer")

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out, errOut testenv.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runContext(wctx, []string{"watch", "health", "--game", "g1", "--from", "0", "--redis", url}, &out, &errOut,
			func(string) string { return "" })
	}()
	waitFor(t, func() bool { return len(lines(out.String())) >= 3 })
	add("g1", "probe_failed", "", "engine did not answer GET /healthz")
	waitFor(t, func() bool { return len(lines(out.String())) >= 4 })
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d after Ctrl-C, stderr %s", code, errOut.String())
	}
	ls := lines(out.String())
	if len(ls) != 4 {
		t.Fatalf("want header + 3 events of g1:\n%s", out.String())
	}
	starts := columnStarts(ls[0], "TIME", "GAME ID", "EVENT", "CONTAINER", "EXIT", "MESSAGE")
	for _, l := range ls[1:] {
		if !strings.HasPrefix(l, "2026-03-01T10:00:00Z") || l[starts[1]:starts[1]+3] != "g1 " || l[starts[3]:starts[3]+12] != "4f1c2a9b8e7d" {
			t.Fatalf("line not aligned with %q: %q", ls[0], l)
		}
	}
	if !strings.Contains(ls[2], "container_oom") || !strings.Contains(ls[2], "137") || !strings.Contains(ls[3], "probe_failed") {
		t.Fatalf("events:\n%s", out.String())
	}
}

func TestRun_watchResults_newEntriesOnlyAsJSON(t *testing.T) {
	url, c := redisURL(t)
	ctx := context.Background()
	c.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:job_results", Values: []any{"request_id", "old", "job", "start", "game_id", "g1", "outcome", "succeeded"}})

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out, errOut testenv.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runContext(wctx, []string{"watch", "results", "-o", "json", "--redis", url}, &out, &errOut, func(string) string { return "" })
	}()
	// Entries added after the watch started are shown; which ones came before it is known only
	// once it polls, so keep adding until one shows.
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; !strings.Contains(out.String(), `"request_id":"new-`); n++ {
		if time.Now().After(deadline) {
			t.Fatalf("no new entry shown: %s / %s", out.String(), errOut.String())
		}
		c.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:job_results", Values: []any{"request_id", fmt.Sprintf("new-%d", n), "job", "stop", "game_id", "g2", "outcome", "failed", "error_code", "runtime_not_found"}})
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, l := range lines(out.String()) {
		var m map[string]string
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not one JSON object per line: %q", l)
		}
		if m["request_id"] == "old" {
			t.Fatalf("an entry from before the watch was shown: %s", l)
		}
		if m["entry_id"] == "" || m["error_code"] != "runtime_not_found" {
			t.Fatalf("entry %v", m)
		}
	}
}

func waitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
