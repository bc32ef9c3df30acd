package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// start runs rtmctl in the background with ctx; the exit code comes on the returned channel.
func start(ctx context.Context, out, errOut *testenv.SyncBuffer, args ...string) <-chan int {
	done := make(chan int, 1)
	go func() { done <- runContext(ctx, args, out, errOut, func(string) string { return "" }) }()
	return done
}

// exitOf waits for a background rtmctl to end, failing the test after 20 s.
func exitOf(t *testing.T, done <-chan int) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(20 * time.Second):
		t.Fatal("rtmctl did not end within 20 s")
		return -1
	}
}

// count returns how many requests the fake received for paths ending with suffix.
func (f *fakeRTM) count(suffix string) int {
	n := 0
	for _, q := range f.requests() {
		if strings.HasSuffix(q.path, suffix) {
			n++
		}
	}
	return n
}

// healthColumn returns the HEALTH cell of each row of a runtime table, by game id.
func healthColumn(t *testing.T, table string) map[string]string {
	t.Helper()
	ls := lines(table)
	if len(ls) == 0 {
		t.Fatal("no table")
	}
	at := columnStarts(ls[0], "GAME ID", "STATUS", "HEALTH")[2]
	out := map[string]string{}
	for _, l := range ls[1:] {
		out[strings.Fields(l)[0]] = strings.Fields(l[at:])[0]
	}
	return out
}

func TestRun_getRuntimes_healthColumn(t *testing.T) {
	f := newFakeRTM(t)
	stopped := running("g5", "galaxy/game:1.4.2", time.Hour)
	stopped.Status, stopped.DesiredState = rtm.StatusStopped, rtm.DesiredStopped
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour), running("g2", "galaxy/game:1.4.2", time.Hour),
		running("g3", "galaxy/game:1.4.2", time.Hour), running("g4", "galaxy/game:1.4.2", time.Hour), stopped)
	f.setHealth(rtm.HealthSnapshot{GameID: "g1", Status: rtm.HealthHealthy, LastEventType: rtm.EventContainerStarted})
	f.setHealth(rtm.HealthSnapshot{GameID: "g2", Status: rtm.HealthHealthy, LastEventType: rtm.EventContainerStarted, ConsecutiveProbeFailures: 1})
	f.setHealth(rtm.HealthSnapshot{GameID: "g3", Status: rtm.HealthUnhealthy, LastEventType: rtm.EventProbeFailed, ConsecutiveProbeFailures: 3})
	// g4: nothing observed yet. g5 is not meant to run: its exited container is no alarm.
	f.setHealth(rtm.HealthSnapshot{GameID: "g5", Status: rtm.HealthUnhealthy, LastEventType: rtm.EventContainerExited})

	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	want := map[string]string{"g1": "healthy", "g2": "probe_failing", "g3": "unhealthy", "g4": "-", "g5": "-"}
	got := healthColumn(t, r.stdout)
	for id, w := range want {
		if got[id] != w {
			t.Errorf("HEALTH of %s = %q, want %q\n%s", id, got[id], w, r.stdout)
		}
	}
	if n := f.count("/g5/health"); n != 0 {
		t.Errorf("the health of a game not meant to run was read %d times", n)
	}

	r = rtmctl(t, nil, "--server", f.srv.URL, "get", "runtime", "g3", "-o", "wide")
	if r.code != 0 || healthColumn(t, r.stdout)["g3"] != "unhealthy" || !strings.Contains(lines(r.stdout)[0], "ENDPOINT") {
		t.Fatalf("wide: %v", r)
	}
}

func TestRun_getRuntimes_unreadableHealthIsQuestionMark(t *testing.T) {
	f := newFakeRTM(t)
	f.healthDown = true
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes")
	if r.code != 0 || healthColumn(t, r.stdout)["g1"] != "?" {
		t.Fatalf("%v", r)
	}
}

func TestRun_output_nameJSONPathNoHeaders(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour), running("g2", "galaxy/game:1.4.1", time.Hour))
	f.setHealth(rtm.HealthSnapshot{GameID: "g1", Status: rtm.HealthHealthy, ConsecutiveProbeFailures: 0})
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"list as names", []string{"get", "runtimes", "-o", "name"}, "runtime/g1\nruntime/g2\n"},
		{"one as name", []string{"get", "runtime", "g1", "-o", "name"}, "runtime/g1\n"},
		{"jsonpath of one", []string{"get", "runtime", "g1", "-o", "jsonpath={.current_image_ref}"}, "galaxy/game:1.4.2"},
		{"relaxed jsonpath", []string{"get", "runtime", "g1", "-o", "jsonpath=.status"}, "running"},
		{"jsonpath without the dot", []string{"get", "runtime", "g1", "-o", "jsonpath=game_id"}, "g1"},
		{"jsonpath over a list", []string{"get", "runtimes", "-o", `jsonpath={range .runtimes[*]}{.game_id}={.generation}{"\n"}{end}`}, "g1=1\ng2=1\n"},
		{"jsonpath of a missing key", []string{"get", "runtime", "g1", "-o", "jsonpath={.nothing}"}, ""},
		{"mutation as name", []string{"restart", "g1", "-o", "name"}, "runtime/g1\n"},
		{"mutation as jsonpath", []string{"restart", "g1", "-o", "jsonpath={.status}"}, "running"},
		{"health as jsonpath", []string{"health", "g1", "-o", "jsonpath={.status}/{.consecutive_probe_failures}"}, "healthy/0"},
		{"ops as jsonpath", []string{"ops", "g1", "-o", "jsonpath={.operations}"}, "[]"},
		{"wait as name", []string{"wait", "g1", "--for=status=running", "-o", "name"}, "runtime/g1\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rtmctl(t, nil, append([]string{"--server", f.srv.URL}, tt.args...)...)
			if r.code != 0 || r.stdout != tt.want {
				t.Fatalf("stdout %q, want %q\n%v", r.stdout, tt.want, r)
			}
		})
	}

	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes", "--no-headers")
	if ls := lines(r.stdout); r.code != 0 || len(ls) != 2 || !strings.HasPrefix(ls[0], "g1 ") || !strings.HasPrefix(ls[1], "g2 ") {
		t.Fatalf("--no-headers: %v", r)
	}
	f.addOp(rtm.Operation{ID: 7, GameID: "g1", Kind: rtm.OpStart, Source: rtm.SourceAdminREST, Outcome: rtm.OutcomeSucceeded})
	r = rtmctl(t, nil, "--server", f.srv.URL, "ops", "g1", "--no-headers")
	if ls := lines(r.stdout); r.code != 0 || len(ls) != 1 || !strings.HasPrefix(ls[0], "7 ") {
		t.Fatalf("ops --no-headers: %v", r)
	}
}

func TestRun_describe_recordHealthOperationsEvents(t *testing.T) {
	url, c := redisURL(t)
	ctx := context.Background()
	add := func(game, event, msg string) {
		c.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:health_events", Values: []any{"game_id", game, "event_type", event,
			"container_id", "4f1c2a9b8e7d6c5b4a3f", "exit_code", "", "message", msg,
			"observed_at", time.Now().UTC().Add(-time.Minute).Format(time.RFC3339Nano)}})
	}
	add("g1", "container_started", "started")
	add("g2", "container_exited", "someone else's")
	add("g1", "probe_failed", "engine did not answer GET /healthz")

	f := newFakeRTM(t)
	rec := running("g1", "galaxy/game:1.4.2", time.Hour)
	f.add(rec)
	probe := time.Now().UTC().Add(-3 * time.Second)
	f.setHealth(rtm.HealthSnapshot{GameID: "g1", Status: rtm.HealthHealthy, LastEventType: rtm.EventProbeRecovered,
		ConsecutiveProbeFailures: 2, LastProbeAt: &probe, DockerState: "running", UpdatedAt: probe})
	now := time.Now().UTC()
	f.addOp(rtm.Operation{ID: 1, GameID: "g1", Kind: rtm.OpStart, Source: rtm.SourceAdminREST, Outcome: rtm.OutcomeSucceeded,
		RequestID: "rest-aa", StartedAt: now.Add(-time.Hour)})
	f.addOp(rtm.Operation{ID: 2, GameID: "g1", Kind: rtm.OpPatch, Source: rtm.SourceGMREST, Outcome: rtm.OutcomeFailed,
		ErrorCode: rtm.CodePatchRolledBack, ErrorMessage: "probe failed", RequestID: "rest-bb", StartedAt: now.Add(-time.Minute)})

	r := rtmctl(t, nil, "--server", f.srv.URL, "describe", "g1", "--redis", url)
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	for _, want := range []string{"Name:", "g1", "Status:", "Desired State:", "galaxy/game:1.4.2 (running)",
		"probe_failing (2 probes failed in a row", "Health Snapshot:", "  Probe Failures:", "2 in a row", "  Docker State:",
		"Operations (newest first, up to 10):", "patch_rolled_back: probe failed", "rest-bb", "rest-aa",
		"Events (runtime:health_events, oldest first):", "container_started", "probe_failed"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("describe lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "someone else's") || strings.Index(r.stdout, "container_started") > strings.Index(r.stdout, "probe_failed   ") {
		t.Errorf("events not the game's, oldest first:\n%s", r.stdout)
	}
	if strings.Index(r.stdout, "rest-bb") > strings.Index(r.stdout, "rest-aa") {
		t.Errorf("operations not newest first:\n%s", r.stdout)
	}
	if q := f.requests(); q[len(q)-1].query["limit"] != "10" {
		t.Errorf("operations asked with %v", q[len(q)-1].query)
	}

	r = rtmctl(t, nil, "--server", f.srv.URL, "describe", "g1", "--redis", url, "-o", "json")
	var d struct {
		Runtime    rtm.Record          `json:"runtime"`
		Health     rtm.HealthSnapshot  `json:"health"`
		Operations []rtm.Operation     `json:"operations"`
		Events     []map[string]string `json:"events"`
		Errors     map[string]string   `json:"errors"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || r.code != 0 {
		t.Fatalf("json %v: %v", err, r)
	}
	if d.Runtime.GameID != "g1" || d.Health.ConsecutiveProbeFailures != 2 || len(d.Operations) != 2 || len(d.Events) != 2 ||
		d.Events[1]["event_type"] != "probe_failed" || d.Errors != nil {
		t.Fatalf("json view %+v", d)
	}

	// Redis out of reach: the rest is shown, and the command succeeds.
	r = rtmctl(t, nil, "--server", f.srv.URL, "describe", "g1", "--redis", "127.0.0.1:1")
	if r.code != 0 || !strings.Contains(r.stdout, "Events:  <unavailable: redis at 127.0.0.1:1") || !strings.Contains(r.stdout, "Name:") {
		t.Fatalf("without Redis: %v", r)
	}
	// --events 0 does not ask Redis; --ops 0 shows no operations.
	r = rtmctl(t, nil, "--server", f.srv.URL, "describe", "g1", "--redis", "127.0.0.1:1", "--events", "0", "--ops", "0")
	if r.code != 0 || strings.Contains(r.stdout, "Events") || strings.Contains(r.stdout, "Operations") {
		t.Fatalf("--events 0 --ops 0: %v", r)
	}
	// A game without a record fails, as get does.
	r = rtmctl(t, nil, "--server", f.srv.URL, "describe", "nope", "--events", "0")
	r.wantError(t, "error: runtime_not_found")
}

func TestRun_logs_printsAndFollows(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour), running("g2", "galaxy/game:1.4.2", time.Hour))
	f.logs["g1"] = "engine: serving on :8080\nengine: second line\n"

	r := rtmctl(t, nil, "--server", f.srv.URL, "logs", "g1")
	if r.code != 0 || r.stdout != f.logs["g1"] {
		t.Fatalf("%v", r)
	}
	if q := f.requests()[0]; q.path != "/api/v1/internal/runtimes/g1/logs" || len(q.query) != 0 {
		t.Fatalf("request %+v; the server's defaults apply unless flags are given", q)
	}
	r = rtmctl(t, nil, "--server", f.srv.URL, "logs", "g1", "--tail", "5", "--timestamps")
	if q := f.requests()[1]; r.code != 0 || q.query["tail"] != "5" || q.query["timestamps"] != "true" || q.query["follow"] != "" {
		t.Fatalf("query %v: %v", q.query, r)
	}

	// -f prints what comes until the stream ends (the container stopped): exit 0.
	f.follow = make(chan string)
	var out, errOut testenv.SyncBuffer
	done := start(context.Background(), &out, &errOut, "--server", f.srv.URL, "logs", "g1", "-f", "--tail", "0")
	waitFor(t, func() bool { return out.String() == f.logs["g1"] })
	f.follow <- "engine: later\n"
	waitFor(t, func() bool { return strings.HasSuffix(out.String(), "engine: later\n") })
	close(f.follow)
	if code := exitOf(t, done); code != 0 {
		t.Fatalf("exit %d when the stream ended: %s", code, errOut.String())
	}
	if q := f.requests()[2].query; q["follow"] != "true" || q["tail"] != "0" {
		t.Fatalf("query %v", q)
	}
	// Ctrl-C ends a follow with 0 too, even past --timeout (the stream has no deadline).
	f.follow = make(chan string)
	ctx, cancel := context.WithCancel(context.Background())
	var out2, errOut2 testenv.SyncBuffer
	done = start(ctx, &out2, &errOut2, "--server", f.srv.URL, "--timeout", "100ms", "logs", "g1", "-f")
	waitFor(t, func() bool { return out2.String() == f.logs["g1"] })
	time.Sleep(300 * time.Millisecond) // past --timeout: only the answer's headers are bounded by it
	f.follow <- "engine: still here\n"
	waitFor(t, func() bool { return strings.HasSuffix(out2.String(), "still here\n") })
	cancel()
	if code := exitOf(t, done); code != 0 {
		t.Fatalf("exit %d after Ctrl-C: %s", code, errOut2.String())
	}

	r = rtmctl(t, nil, "--server", f.srv.URL, "logs", "g2")
	r.wantError(t, "error: runtime_not_found: game g2 has no container")
	r = rtmctl(t, nil, "--server", f.srv.URL, "logs", "nope")
	r.wantError(t, "error: runtime_not_found")
}

func TestRun_logs_noAnswerTimesOut(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer srv.Close()
	r := rtmctl(t, nil, "--server", srv.URL, "--timeout", "200ms", "logs", "g1", "-f")
	r.wantError(t, "error: timeout: no answer from RTM")
}

func TestRun_wait_forStatus(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))

	r := rtmctl(t, nil, "--server", f.srv.URL, "wait", "g1", "--for=status=running")
	if r.code != 0 || r.stdout != "runtime/g1 condition met\n" {
		t.Fatalf("already there: %v", r)
	}

	// Reached later: the game stops while rtmctl waits.
	var out, errOut testenv.SyncBuffer
	done := start(context.Background(), &out, &errOut, "--server", f.srv.URL, "wait", "g1", "--for", "status=stopped", "--interval", "20ms", "-o", "json")
	before := f.count("/runtimes/g1")
	waitFor(t, func() bool { return f.count("/runtimes/g1") >= before+2 })
	stopped := f.get("g1")
	stopped.Status, stopped.DesiredState = rtm.StatusStopped, rtm.DesiredStopped
	f.add(stopped)
	if code := exitOf(t, done); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var rec rtm.Record
	if err := json.Unmarshal([]byte(out.String()), &rec); err != nil || rec.Status != rtm.StatusStopped {
		t.Fatalf("-o json prints the record: %v %s", err, out.String())
	}

	// A game without a record yet is waited for (a start job may still be queued).
	var out2, errOut2 testenv.SyncBuffer
	done = start(context.Background(), &out2, &errOut2, "--server", f.srv.URL, "wait", "g9", "--for=status=running", "--interval", "20ms")
	waitFor(t, func() bool { return f.count("/runtimes/g9") >= 2 })
	f.add(running("g9", "galaxy/game:1.4.2", time.Second))
	if code := exitOf(t, done); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut2.String())
	}

	// Not reached within --timeout: exit 3, saying what was seen.
	r = rtmctl(t, nil, "--server", f.srv.URL, "--timeout", "300ms", "wait", "g9", "--for=status=removed", "--interval", "50ms")
	if r.code != 3 || !strings.Contains(r.stderr, "error: timed out after 300ms (--timeout) waiting for game g9 to be removed (it is running)") {
		t.Fatalf("timeout: %v", r)
	}
	r = rtmctl(t, nil, "--server", f.srv.URL, "--timeout", "300ms", "wait", "nobody", "--for=status=running", "--interval", "50ms")
	if r.code != 3 || !strings.Contains(r.stderr, "(it has no runtime record)") {
		t.Fatalf("timeout without a record: %v", r)
	}

	// Ctrl-C: exit 1.
	ctx, cancel := context.WithCancel(context.Background())
	var out3, errOut3 testenv.SyncBuffer
	done = start(ctx, &out3, &errOut3, "--server", f.srv.URL, "wait", "g9", "--for=status=removed", "--interval", "20ms")
	waitFor(t, func() bool { return f.count("/runtimes/g9") >= 6 })
	cancel()
	if code := exitOf(t, done); code != 1 || !strings.Contains(errOut3.String(), "interrupted") {
		t.Fatalf("exit %d after Ctrl-C: %s", code, errOut3.String())
	}
}

func TestRun_wait_refusedExitsOne(t *testing.T) {
	f := newFakeRTM(t)
	f.token = "s3cret"
	r := rtmctl(t, nil, "--server", f.srv.URL, "wait", "g1", "--for=status=running")
	r.wantError(t, "error: unauthenticated", "RTMANAGER_INTERNAL_TOKEN")
}

func TestRun_getWatch_printsChangedRows(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour), running("g2", "galaxy/game:1.4.2", time.Hour))
	f.setHealth(rtm.HealthSnapshot{GameID: "g1", Status: rtm.HealthHealthy})
	f.setHealth(rtm.HealthSnapshot{GameID: "g2", Status: rtm.HealthHealthy})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut testenv.SyncBuffer
	done := start(ctx, &out, &errOut, "--server", f.srv.URL, "get", "runtimes", "-w", "--interval", "20ms")
	waitFor(t, func() bool { return len(lines(out.String())) == 3 })

	g2 := f.get("g2")
	g2.Status, g2.DesiredState = rtm.StatusStopped, rtm.DesiredStopped
	f.add(g2)
	waitFor(t, func() bool { return len(lines(out.String())) == 4 })
	f.setHealth(rtm.HealthSnapshot{GameID: "g1", Status: rtm.HealthHealthy, ConsecutiveProbeFailures: 1})
	waitFor(t, func() bool { return len(lines(out.String())) == 5 })
	// Nothing changes for a few more polls: nothing more is printed.
	polls := f.count("/runtimes")
	waitFor(t, func() bool { return f.count("/runtimes") >= polls+3 })
	cancel()
	if code := exitOf(t, done); code != 0 {
		t.Fatalf("exit %d after Ctrl-C: %s", code, errOut.String())
	}
	ls := lines(out.String())
	if len(ls) != 5 {
		t.Fatalf("want header, 2 rows, 2 changes:\n%s", out.String())
	}
	starts := columnStarts(ls[0], "GAME ID", "STATUS", "HEALTH", "DESIRED")
	for _, l := range ls[1:] {
		if l[starts[1]-1] != ' ' || l[starts[1]] == ' ' || l[starts[3]-1] != ' ' {
			t.Errorf("row %q not aligned with %q", l, ls[0])
		}
	}
	if f := strings.Fields(ls[3]); f[0] != "g2" || f[1] != "stopped" || f[2] != "-" {
		t.Errorf("change 1 %q", ls[3])
	}
	if f := strings.Fields(ls[4]); f[0] != "g1" || f[2] != "probe_failing" {
		t.Errorf("change 2 %q", ls[4])
	}
}

func TestRun_getWatch_oneGameAsJSONLines(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut testenv.SyncBuffer
	done := start(ctx, &out, &errOut, "--server", f.srv.URL, "get", "runtime", "g1", "-w", "--interval", "20ms", "-o", "json")
	waitFor(t, func() bool { return len(lines(out.String())) == 1 })
	g1 := f.get("g1")
	g1.Status, g1.Generation = rtm.StatusStarting, 2
	f.add(g1)
	waitFor(t, func() bool { return len(lines(out.String())) == 2 })
	cancel()
	if code := exitOf(t, done); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var recs []rtm.Record
	for _, l := range lines(out.String()) {
		var r rtm.Record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("not one record per line: %q", l)
		}
		recs = append(recs, r)
	}
	if recs[0].Status != rtm.StatusRunning || recs[1].Status != rtm.StatusStarting || recs[1].Generation != 2 {
		t.Fatalf("records %+v", recs)
	}

	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtime", "nope", "-w")
	r.wantError(t, "runtime_not_found")
}

func TestRun_version_clientAndServer(t *testing.T) {
	f := newFakeRTM(t)
	f.version = map[string]string{"version": "v1.2.3", "go_version": "go1.26.8", "platform": "linux/amd64", "api": "v1"}
	r := rtmctl(t, nil, "--server", f.srv.URL, "version")
	client := "Client Version: " + versionString() + " (" + goVersion() + ", " + platform() + ")\n"
	if r.code != 0 || r.stdout != client+"Server Version: v1.2.3 (go1.26.8, linux/amd64, API v1)\n" {
		t.Fatalf("%v", r)
	}
	if q := f.requests()[0]; q.path != "/api/v1/internal/version" {
		t.Fatalf("asked %s", q.path)
	}

	r = rtmctl(t, nil, "--server", f.srv.URL, "version", "-o", "json")
	var v struct {
		Client map[string]string `json:"client"`
		Server map[string]string `json:"server"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Client["version"] != versionString() || v.Server["version"] != "v1.2.3" {
		t.Fatalf("json %v: %v", err, r)
	}

	before := len(f.requests())
	r = rtmctl(t, nil, "--server", f.srv.URL, "version", "--client")
	if r.code != 0 || r.stdout != client || len(f.requests()) != before {
		t.Fatalf("--client: %v", r)
	}

	f.version = nil
	r = rtmctl(t, nil, "--server", f.srv.URL, "version")
	if r.code != 1 || r.stdout != client || !strings.Contains(r.stderr, "predates GET /version") {
		t.Fatalf("old server: %v", r)
	}

	url := f.srv.URL
	f.srv.Close()
	r = rtmctl(t, nil, "--server", url, "version")
	if r.code != 1 || r.stdout != client || !strings.Contains(r.stderr, "error: cannot reach RTM at "+url) {
		t.Fatalf("unreachable: %v", r)
	}
}

// accepted makes the fake answer every mutation 202 with the record, starting.
func accepted(f *fakeRTM) {
	f.mutate = func(action, gameID string, body map[string]any) (int, any) {
		rec := f.get(gameID)
		rec.Status, rec.Generation = rtm.StatusStarting, rec.Generation+1
		if img, ok := body["image_ref"].(string); ok {
			rec.DesiredImageRef = img
		}
		f.add(rec)
		return http.StatusAccepted, rec
	}
}

func TestRun_mutation_acceptedKeepsWaitingUntilConverged(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	accepted(f)
	var out, errOut testenv.SyncBuffer
	done := start(context.Background(), &out, &errOut, "--server", f.srv.URL, "patch", "g1", "--image", "galaxy/game:1.4.3", "-o", "json")
	waitFor(t, func() bool { return f.count("/g1/operations") >= 2 })
	rec := f.get("g1")
	rec.Status, rec.CurrentImageRef, rec.ObservedGeneration = rtm.StatusRunning, "galaxy/game:1.4.3", rec.Generation
	f.add(rec)
	f.addOp(rtm.Operation{ID: 1, GameID: "g1", Kind: rtm.OpPatch, Outcome: rtm.OutcomeSucceeded, RequestID: "rest-other"})
	f.addOp(rtm.Operation{ID: 2, GameID: "g1", Kind: rtm.OpPatch, Outcome: rtm.OutcomeSucceeded, RequestID: "rest-0123456789abcdef"})
	if code := exitOf(t, done); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var got rtm.Record
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil || got.CurrentImageRef != "galaxy/game:1.4.3" || got.Status != rtm.StatusRunning {
		t.Fatalf("the converged record: %v %s", err, out.String())
	}
	if !strings.Contains(errOut.String(), "waiting for request rest-0123456789abcdef") {
		t.Fatalf("stderr %s", errOut.String())
	}
}

func TestRun_mutation_acceptedThenFailedExitsOneWithCode(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	accepted(f)
	var out, errOut testenv.SyncBuffer
	done := start(context.Background(), &out, &errOut, "--server", f.srv.URL, "patch", "g1", "--image", "galaxy/game:1.4.3")
	waitFor(t, func() bool { return f.count("/g1/operations") >= 1 })
	f.addOp(rtm.Operation{ID: 2, GameID: "g1", Kind: rtm.OpPatch, Outcome: rtm.OutcomeFailed, RequestID: "rest-0123456789abcdef",
		ErrorCode: rtm.CodePatchRolledBack, ErrorMessage: "the patched engine failed its probe; galaxy/game:1.4.2 runs again"})
	if code := exitOf(t, done); code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, errOut.String())
	}
	stderr := errOut.String()
	if !strings.Contains(stderr, "error: patch_rolled_back: the patched engine failed its probe") ||
		!strings.Contains(stderr, "the previous image runs again") || !strings.Contains(stderr, "request id: rest-0123456789abcdef") || out.String() != "" {
		t.Fatalf("stdout %q stderr %s", out.String(), stderr)
	}
}

func TestRun_mutation_notConvergedExitsThree(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	accepted(f)
	r := rtmctl(t, nil, "--server", f.srv.URL, "--timeout", "400ms", "patch", "g1", "--image", "galaxy/game:1.4.3", "-o", "json")
	if r.code != 3 {
		t.Fatalf("exit %d, want 3: %v", r.code, r)
	}
	var rec rtm.Record
	if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil || rec.Status != rtm.StatusStarting || rec.DesiredImageRef != "galaxy/game:1.4.3" {
		t.Fatalf("the record as it stands: %v %s", err, r.stdout)
	}
	for _, want := range []string{"error: not converged within 400ms (--timeout): game g1 is starting, desired running; RTM keeps working on it",
		"rtmctl wait g1 --for=status=running", "request id: rest-0123456789abcdef"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if f.count("/g1/operations") == 0 {
		t.Error("rtmctl did not read the operation log before giving up")
	}

	// A stop that does not converge says which status to wait for.
	r = rtmctl(t, nil, "--server", f.srv.URL, "--timeout", "200ms", "stop", "g1", "-o", "name")
	if r.code != 3 || r.stdout != "runtime/g1\n" {
		t.Fatalf("stop: %v", r)
	}
}

func TestRun_help_rootListsVerbsAndExitCodes(t *testing.T) {
	r := rtmctl(t, nil, "--help")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	for _, want := range []string{"describe", "logs", "wait", "version", "0  done", "1  failed", "2  usage error", "3  not reached in time",
		"rtmctl get runtimes -w", "rtmctl logs game-42", "--no-headers", "jsonpath="} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rtmctl --help lacks %q", want)
		}
	}
	for _, verb := range [][]string{{"describe"}, {"logs"}, {"wait"}, {"version"}, {"get", "runtimes"}} {
		r := rtmctl(t, nil, append(verb, "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") {
			t.Errorf("%v --help has no examples: %v", verb, r)
		}
	}
}
