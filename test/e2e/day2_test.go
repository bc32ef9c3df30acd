//go:build integration

package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// Day two for operators (issue 18): what a signal, a wiped Redis, a typo or a hand-started
// engine does to a running RTM, each driven from outside as an operator would, with the docker
// CLI, kill, redis-server and the environment.

// dockerCLI runs the docker CLI as the runbook's operator does and returns its trimmed output.
func dockerCLI(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// handRun starts an engine for gameID by hand with the docker CLI, the way docs/runbook.md
// (Reconcile Drift After Docker Daemon Restart, step 3) says an operator does: RTM's two labels,
// the network, the alias galaxy-game-<game_id>, the engine's environment and its state dir, and
// a name of the operator's choosing. It returns the container id; the container is removed when
// the test ends (before any network registered earlier).
func (r *rig) handRun(name, network, gameID string) string {
	r.t.Helper()
	dir := filepath.Join(r.StateRoot, gameID)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		r.t.Fatal(err)
	}
	mount := r.Config().EngineStateMount
	id := dockerCLI(r.t, "run", "-d", "--name", name,
		"--network", network, "--network-alias", "galaxy-game-"+gameID,
		"--label", "com.galaxy.owner=rtmanager", "--label", "com.galaxy.game_id="+gameID,
		"--label", "com.galaxy.image_ref="+img(v141),
		"-e", "GALAXY_GAME_ID="+gameID, "-e", "GALAXY_STATE_DIR="+mount, "-v", dir+":"+mount,
		img(v141))
	r.t.Cleanup(func() {
		_ = exec.Command("docker", "rm", "-f", "-v", id).Run()
	})
	return id
}

// pid is the running RTM process's id, or 0 when it has exited.
func (r *rig) pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil || !r.proc.Alive() {
		return 0
	}
	return r.proc.Cmd.Process.Pid
}

// signal sends sig to the running RTM process.
func (r *rig) signal(sig syscall.Signal) {
	r.t.Helper()
	pid := r.pid()
	if pid == 0 {
		r.t.Fatalf("rtmanager is not running:\n%s", testenv.Tail(r.logPath, 30))
	}
	if err := syscall.Kill(pid, sig); err != nil {
		r.t.Fatalf("kill -%d %d: %v", sig, pid, err)
	}
}

// logged returns the current process's log lines with that msg.
func (r *rig) logged(msg string) []logLine {
	var out []logLine
	for _, l := range r.LogLines() {
		if l.str("msg") == msg {
			out = append(out, l)
		}
	}
	return out
}

// outboxBacklog counts the outbox rows not yet published to Redis (the runbook's query).
func (r *rig) outboxBacklog() int {
	r.t.Helper()
	var n int
	if err := r.PG.QueryRow(context.Background(),
		`SELECT count(*) FROM rtmanager.outbox WHERE published_at IS NULL`).Scan(&n); err != nil {
		r.t.Fatalf("counting the outbox backlog: %v", err)
	}
	return n
}

// SIGHUP runs a full reconcile pass at once and nothing else: the process keeps its pid and
// answers /healthz, logs `manual reconcile pass` with the number of games it enqueued, and the
// pass reconciles a drift that no other trigger reports. The drift: an operator connects a
// labelled engine, started by hand on another network (so not RTM's), to RTM's network. Docker
// reports a network connection as a network event, which RTM does not follow, and the periodic
// pass and inspect sweep are an hour away, so only the SIGHUP's pass adopts it.
func TestDay2_SIGHUP_RunsAManualReconcilePass(t *testing.T) {
	r := newRig(t, "hup")
	r.Env["RTMANAGER_RECONCILE_INTERVAL"] = "1h"
	r.Env["RTMANAGER_INSPECT_INTERVAL"] = "1h"
	g, h := r.game("a"), r.game("hand")
	var hand string
	var pid int
	if onKube() {
		// Kubernetes: the informer reports every change of RTM's Pods, so no drift is left for
		// the manual pass alone: the Pod started by hand is adopted live, and the pass counts it.
		r.Start()
		pid = r.pid()
		r.StartGame(g, img(v141))
		hand = r.W.handStart(r.prefix+"-by-hand", h)
		r.WaitStatus(h, "running", 30*time.Second)
	} else {
		elsewhere := r.prefix + "-elsewhere"
		dockerCLI(t, "network", "create", "--label", "rtm.e2e.test="+t.Name(), elsewhere)
		t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", elsewhere).Run() })
		// Started before RTM, on a network that is not RTM's: neither the boot pass nor any
		// event of RTM's lifetime makes it RTM's.
		hand = r.handRun(r.prefix+"-by-hand", elsewhere, h)

		r.Start()
		pid = r.pid()
		r.StartGame(g, img(v141))
		dockerCLI(t, "network", "connect", "--alias", "galaxy-game-"+h, r.Net, hand)
		expect(t, !r.Record(h).Exists, "the hand-started engine was recorded before the SIGHUP: %+v", r.Record(h))
	}

	t0 := time.Now()
	r.signal(syscall.SIGHUP)
	var pass logLine
	testenv.Eventually(t, 30*time.Second, "manual reconcile pass logged", func() (bool, string) {
		lines := r.logged("manual reconcile pass")
		if len(lines) == 0 {
			return false, "no such line"
		}
		pass = lines[0]
		return true, ""
	})
	// The pass enqueues every game with an active record (g) or an owned engine RTM sees (g
	// and, since the connect or the live adoption, h).
	expect(t, pass.str("level") == "INFO" && pass.str("worker") == "reconcile_ticker" && pass["games"] == float64(2),
		"manual pass line %v, want INFO, worker reconcile_ticker, games 2", pass)
	rec := r.WaitStatus(h, "running", 30*time.Second)
	t.Logf("adopted by the manual pass %s after the SIGHUP", time.Since(t0).Round(time.Millisecond))
	expect(t, rec.ContainerID == hand, "record %+v, want the hand-started container %s", rec, short(hand))
	expect(t, r.Ops(h, "reconcile_adopt", "op_source = 'reconciler' AND outcome = 'succeeded'") == 1,
		"operation log of %s %q", h, r.OpKinds(h))
	expect(t, r.Record(g).Status == "running" && r.Ops(g, "start", "") == 1 && r.Boots(g) == "1",
		"the pass touched the game that had no drift: %+v %q", r.Record(g), r.OpKinds(g))

	// Still the same process, still serving; a second SIGHUP runs a second pass.
	expect(t, r.pid() == pid, "rtmanager is not the same process after SIGHUP: pid %d, was %d", r.pid(), pid)
	code, body := httpGet(r.API + "/healthz")
	expect(t, code == http.StatusOK, "/healthz after SIGHUP: %d %s", code, body)
	r.signal(syscall.SIGHUP)
	testenv.Eventually(t, 30*time.Second, "second manual reconcile pass logged", func() (bool, string) {
		n := len(r.logged("manual reconcile pass"))
		return n == 2, fmt.Sprintf("%d such lines", n)
	})
	expect(t, r.pid() == pid, "rtmanager exited after the second SIGHUP")
	expect(t, len(r.logged("shutting down")) == 0, "SIGHUP started a shutdown")

	// SIGTERM keeps its meaning.
	r.StopClean()
}

// Redis restarts empty (no persistence), losing the job results stream and the publication
// markers. Lobby, not finding its result, resends the start job with the same request_id: RTM
// publishes the stored result again, once, logged at info, and neither starts the game again nor
// adds a second result when the job comes once more.
func TestDay2_RedisWipe_ResentJobAnsweredAgainOnce(t *testing.T) {
	r := newRig(t, "wipe")
	r.Start()
	ctx := context.Background()
	g := r.game("a")
	req := "req-" + g + "-start"
	first := r.StartGame(g, img(v141))
	cid := r.ContainerID(g)

	r.Redis.Restart()
	n, err := r.RDB.Exists(ctx, r.cfg.JobResultsStream).Result()
	expect(t, err == nil && n == 0, "the job results stream survived the restart (%d, %v)", n, err)

	r.StartJob(g, img(v141), req)
	again := r.WaitResult(req, 60*time.Second)
	expect(t, maps.Equal(again.F, first.F), "the result published again differs:\n got %v\nwant %v", again.F, first.F)
	var info []logLine
	testenv.Eventually(t, 10*time.Second, "info line on the result published again", func() (bool, string) {
		info = r.logged("duplicate job's result lost from redis, published again")
		return len(info) > 0, "none"
	})
	expect(t, len(info) == 1 && info[0].str("level") == "INFO" && info[0].str("request_id") == req &&
		info[0].str("game_id") == g && info[0].str("outcome") == "succeeded", "log lines %v", info)

	// Once more, now that Redis holds the result again: nothing is added.
	last := r.StartJob(g, img(v141), req)
	testenv.Eventually(t, 30*time.Second, "the resent job handled and the outbox drained", func() (bool, string) {
		off, _ := r.RDB.Get(ctx, "rtmanager:stream_offsets:startjobs").Result()
		backlog := r.outboxBacklog()
		return off == last && backlog == 0, fmt.Sprintf("offset %s (want %s), outbox backlog %d", off, last, backlog)
	})
	results := r.Results(req)
	expect(t, len(results) == 1, "%d results for %s in the stream, want 1: %v", len(results), req, results)
	expect(t, len(r.logged("duplicate job's result lost from redis, published again")) == 1,
		"the result was published again a second time")
	expect(t, r.ContainerID(g) == cid && r.Boots(g) == "1" && r.Ops(g, "start", "") == 1,
		"a resent job started the game again: container %s (was %s), boots %s, operations %q",
		short(r.ContainerID(g)), short(cid), r.Boots(g), r.OpKinds(g))
}

// With RTMANAGER_STREAM_RETENTION=50, every output stream keeps about 50 entries: MAXLEN ~
// trims whole nodes of the stream (stream-node-max-entries, 100 by default), so it holds at
// least 50 and at most 50 plus one node, the newest, however many RTM published.
func TestDay2_StreamRetention_BoundsOutputStreams(t *testing.T) {
	const retention, jobs = 50, 400
	r := newRig(t, "trim")
	r.Env["RTMANAGER_STREAM_RETENTION"] = strconv.Itoa(retention)
	r.Start()
	ctx := context.Background()
	cfgNode, err := r.RDB.ConfigGet(ctx, "stream-node-max-entries").Result()
	if err != nil {
		t.Fatal(err)
	}
	node, err := strconv.Atoi(cfgNode["stream-node-max-entries"])
	if err != nil {
		t.Fatalf("stream-node-max-entries %v: %v", cfgNode, err)
	}

	// Starts refused at once (the image is outside the allow-list): each publishes one job
	// result and one notification intent without touching Docker.
	req := func(i int) string { return fmt.Sprintf("req-%s-%d", r.prefix, i) }
	for i := 0; i < jobs; i++ {
		r.StartJob(r.game(strconv.Itoa(i)), "busybox:1.36.0", req(i))
	}
	lastRes := r.WaitResult(req(jobs-1), 120*time.Second)
	expect(t, lastRes.F["error_code"] == "start_config_invalid", "the last result %v", lastRes)
	testenv.Eventually(t, 30*time.Second, "outbox drained", func() (bool, string) {
		n := r.outboxBacklog()
		return n == 0, fmt.Sprintf("%d rows unpublished", n)
	})
	var published int
	if err := r.PG.QueryRow(ctx, `SELECT count(*) FROM rtmanager.outbox WHERE stream = 'job_results'`).Scan(&published); err != nil {
		t.Fatal(err)
	}
	expect(t, published >= jobs, "%d job results published, want %d", published, jobs)

	for _, stream := range []string{r.cfg.JobResultsStream, r.cfg.NotificationIntentsStream} {
		n, err := r.RDB.XLen(ctx, stream).Result()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d entries after %d published (retention %d, nodes of %d)", stream, n, jobs, retention, node)
		expect(t, n >= retention && n <= int64(retention+node),
			"%s holds %d entries, want %d to %d", stream, n, retention, retention+node)
	}
	expect(t, len(r.Results(req(0))) == 0, "the oldest result is still in the stream")
	expect(t, len(r.Results(req(jobs-1))) == 1, "the newest result is not in the stream")
}

// A misspelled RTMANAGER_* variable is reported with the closest known name. By default that is
// a warning and RTM runs; with RTMANAGER_STRICT_ENV=true the real binary, with every dependency
// reachable, exits 2 before it opens anything (no migration ran), and with
// RTMANAGER_LOG_FORMAT=text both lines are text. (cmd/manager's TestRun_unknownVariable covers
// the lines themselves; this is the built binary in a real environment.)
func TestDay2_ConfigTypo_WarnedOrRefusedWhenStrict(t *testing.T) {
	r := newRig(t, "typo")
	const typo, closest = "RTMANAGER_PROBE_INTERVALL", "RTMANAGER_PROBE_INTERVAL"
	r.Env[typo] = "1s"

	strict := maps.Clone(r.Env)
	strict["RTMANAGER_STRICT_ENV"] = "true"
	strict["RTMANAGER_LOG_FORMAT"] = "text"
	out, code := runOnce(t, strict)
	expect(t, code == 2, "strict env with a typo: exit %d, want 2:\n%s", code, out)
	for _, want := range []string{
		`level=WARN msg="unknown configuration variable" variable=` + typo + ` closest=` + closest,
		`level=ERROR msg="invalid configuration" variable=` + typo,
	} {
		expect(t, strings.Contains(out, want), "no line with %s:\n%s", want, out)
	}
	expect(t, !strings.Contains(out, "{") && !strings.Contains(out, "migrations applied"),
		"a JSON line, or start-up went on:\n%s", out)
	var migrated bool
	if err := r.PG.QueryRow(context.Background(), `SELECT to_regclass('rtmanager.runtime_records') IS NOT NULL`).Scan(&migrated); err != nil {
		t.Fatal(err)
	}
	expect(t, !migrated, "the strict refusal came after the migrations: rtmanager.runtime_records exists")

	// Not strict: the same typo is a warning (JSON, the rig's format) and RTM runs.
	r.Start()
	warn := r.logged("unknown configuration variable")
	expect(t, len(warn) == 1 && warn[0].str("level") == "WARN" && warn[0].str("variable") == typo &&
		warn[0].str("closest") == closest, "warning lines %v", warn)
	r.StopClean()
}

// A labelled engine started by hand with a name of the operator's choosing (not
// galaxy-game-<game_id>) on RTM's network is adopted, by the boot pass and live, found by its
// labels; once adopted it is the game's like any other: probed, and replaced by a container
// named galaxy-game-<game_id> on a restart. (Kubernetes: a Pod of any name in RTM's namespace.)
func TestDay2_AdoptByLabel_AnyName(t *testing.T) {
	r := newRig(t, "label")
	boot, live := r.game("boot"), r.game("live")
	idBoot := r.W.handStart(r.prefix+"-mine-1", boot)
	r.Start()
	rec := r.Record(boot)
	expect(t, rec.Status == "running" && rec.ContainerID == idBoot && rec.CurrentImage == img(v141) &&
		rec.Endpoint == "http://galaxy-game-"+boot+":8080",
		"boot pass: record %+v, want running with %s", rec, short(idBoot))
	expect(t, r.Ops(boot, "reconcile_adopt", "op_source = 'reconciler' AND outcome = 'succeeded'") == 1,
		"operation log %q", r.OpKinds(boot))

	idLive := r.W.handStart(r.prefix+"-mine-2", live)
	rec = r.WaitStatus(live, "running", 30*time.Second)
	expect(t, rec.ContainerID == idLive, "live adopt: record %+v, want %s", rec, short(idLive))
	expect(t, r.Ops(live, "reconcile_adopt", "") == 1, "operation log %q", r.OpKinds(live))
	testenv.Eventually(t, 15*time.Second, "adopted engine probed healthy", func() (bool, string) {
		s := r.Snapshot(live)
		return s.LastProbeAt != nil && s.Status == "healthy", pretty(s)
	})

	rec2 := r.Admin(http.StatusOK, http.MethodPost, gamePath(live, "/restart"), map[string]any{})
	c := r.Inspect(live) // by the name galaxy-game-<game_id>
	expect(t, c.running() && c.ID != idLive && rec2["current_container_id"] == c.ID,
		"after restart: %v, want a running galaxy-game-%s", rec2, live)
	expect(t, r.W.byName(r.prefix+"-mine-2") == nil, "the hand-started engine is still there after the restart")
	other := r.W.byName(r.prefix + "-mine-1")
	expect(t, other.running() && other.ID == idBoot && r.Record(boot).ContainerID == idBoot,
		"the other adopted engine was touched: %+v, record %+v", other, r.Record(boot))
}
