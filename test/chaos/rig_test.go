//go:build chaos

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// Streams RTM reads and writes (the contract's defaults).
const (
	startJobs  = "runtime:start_jobs"
	stopJobs   = "runtime:stop_jobs"
	jobResults = "runtime:job_results"
)

// rig is one test's world: its own database, redis-server, Docker network, state root and game
// id prefix; the RTM processes it runs; the jobs it sent and the results it collected; a watcher
// of the Docker events of its games.
type rig struct {
	t         *testing.T
	tag       string
	prefix    string // every game id of the test starts with it
	net       string
	stateRoot string
	dsn       string
	pg        *pgxpool.Pool
	redis     *testenv.RedisServer
	rdb       *redis.Client
	env       map[string]string
	results   *collector
	watch     *watcher
	ledger    *dockerLedger // every process's mutating Docker calls, through its own proxy
	begin     time.Time

	// burstGap splits a process's mutating calls on a game into bursts of work (see
	// dockerLedger.interleavings); longBursts raises it for the games a test knows run one long
	// operation (a patch waiting on its verification) and nothing else meanwhile.
	burstGap   time.Duration
	longBursts map[string]time.Duration

	mu    sync.Mutex
	seq   int
	sent  map[string]job // by request id
	order []string
	procs []*rtmProc
}

// job is a job entry the test sent.
type job struct {
	stream string
	game   string
	fields []any
}

func newRig(t *testing.T, tag string) *rig {
	t.Helper()
	requireSuite(t)
	ctx := context.Background()
	r := &rig{t: t, tag: tag, prefix: suite.run + "-" + tag, sent: map[string]job{}, begin: time.Now(),
		burstGap: defaultBurstGap, longBursts: map[string]time.Duration{}}

	// Cleanups run last-in first-out: RTM processes (registered later) go first, then the
	// containers, then the network.
	r.net = "rtmchaos-" + suite.run + "-" + tag
	if _, err := suite.docker.NetworkCreate(ctx, r.net, network.CreateOptions{Driver: "bridge",
		Labels: map[string]string{"rtm.chaos.test": t.Name()}}); err != nil {
		t.Fatalf("creating network %s: %v", r.net, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		r.removeContainers(ctx)
		if err := suite.docker.NetworkRemove(ctx, r.net); err != nil {
			t.Logf("removing network %s: %v", r.net, err)
		}
	})

	r.stateRoot = t.TempDir()
	for d := r.stateRoot; d != "/" && d != "/tmp" && d != os.TempDir(); d = filepath.Dir(d) {
		_ = os.Chmod(d, 0o755) // the daemon resolves the bind mounts; engines may run as anyone
	}
	r.dsn = suite.env.NewDatabase(t)
	pool, err := pgxpool.New(ctx, r.dsn)
	if err != nil {
		t.Fatalf("pgx pool: %v", err)
	}
	t.Cleanup(pool.Close)
	r.pg = pool
	r.redis = testenv.StartRedisServer(t)
	r.rdb = r.redis.Client(func(o *redis.Options) {
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 2*time.Second, 3*time.Second, 3*time.Second
	})

	r.env = testenv.RTMTestEnv(r.dsn, r.redis, engineRepo)
	maps.Copy(r.env, map[string]string{
		"RTMANAGER_DOCKER_NETWORK":       r.net,
		"RTMANAGER_GAME_STATE_ROOT":      r.stateRoot,
		"RTMANAGER_LOG_LEVEL":            "info",
		"RTMANAGER_ENGINE_STOP_TIMEOUT":  "3s",
		"RTMANAGER_PATCH_VERIFY_TIMEOUT": "8s",
		"RTMANAGER_REST_WAIT_TIMEOUT":    "20s",
		"RTMANAGER_ENGINE_MEMORY_LIMIT":  "64m",
		"RTMANAGER_ENGINE_CPUS":          "0.5",
		// A lease left by a killed process blocks its games for one TTL: 3s keeps the suite
		// within its time budget (production's 30s changes nothing else).
		"RTMANAGER_GAME_LEASE_TTL": "3s",
	})
	r.watch = startWatcher(t, r.prefix)
	r.ledger = newDockerLedger(r.prefix, r.watch.gameOf)
	r.ledger.lease = func(game string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		v, err := r.rdb.Get(ctx, "rtmanager:game_lease:"+game).Result()
		if err == redis.Nil {
			return "", nil
		}
		return v, err
	}
	r.results = newCollector(r.rdb)
	r.results.start("0-0")
	t.Cleanup(r.results.stop)
	t.Cleanup(func() {
		if t.Failed() {
			r.dumpLogs(60)
		}
	})
	return r
}

// defaultBurstGap: the calls of one operation follow each other within a few PostgreSQL round
// trips; a handover of a game to another process and back takes two lease hand-overs and the
// other process's whole operation.
const defaultBurstGap = time.Second

// gapFor is the burst gap of game.
func (r *rig) gapFor(game string) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g, ok := r.longBursts[game]; ok {
		return g
	}
	return r.burstGap
}

// longBurst declares that game runs one operation with pauses up to gap between its Docker calls
// (a patch verifying a sick engine) and that no other operation on it is expected meanwhile.
func (r *rig) longBurst(game string, gap time.Duration) {
	r.mu.Lock()
	r.longBursts[game] = gap
	r.mu.Unlock()
}

// game returns the test's game id with suffix.
func (r *rig) game(suffix string) string { return r.prefix + "-" + suffix }

// games returns n game ids of the rig: r.game("0"), r.game("1"), ….
func (r *rig) games(n int) []string {
	games := make([]string, n)
	for i := range games {
		games[i] = r.game(fmt.Sprint(i))
	}
	return games
}

// startedGames returns n games of the rig (games), the first started of them started: a start
// job at img(v141) sent for each and the rig settled.
func (r *rig) startedGames(n, started int) []string {
	r.t.Helper()
	games := r.games(n)
	for _, g := range games[:started] {
		r.sendStart(g, img(v141))
	}
	r.settle(60 * time.Second)
	return games
}

func (r *rig) removeContainers(ctx context.Context) {
	if _, err := testenv.RemoveContainers(ctx, suite.docker, filters.NewArgs(filters.Arg("name", "galaxy-game-"+r.prefix))); err != nil {
		r.t.Logf("removing containers: %v", err)
	}
}

// ---- RTM processes ----

// rtmProc is one running rtmanager binary.
type rtmProc struct {
	*testenv.Process
	name    string
	logPath string
	API     string       // http://host:port of its internal listener
	docker  *dockerProxy // its own path to the Docker daemon
}

// backgroundWorkers is how many `worker started` lines a ready RTM has logged.
const backgroundWorkers = 7

// rigWithRTM prepares a rig tagged tag and starts one RTM process, "rtm", on the rig's
// environment.
func rigWithRTM(t *testing.T, tag string) (*rig, *rtmProc) {
	t.Helper()
	r := newRig(t, tag)
	return r, r.startRTM("rtm", nil)
}

// startRTM runs the binary with the rig's environment plus extra, and waits until it is ready:
// its seven workers started (the boot pass is over) and /readyz answers 200. The process reaches
// Docker through its own proxy (p.docker), which records its calls in the rig's ledger.
func (r *rig) startRTM(name string, extra map[string]string) *rtmProc {
	r.t.Helper()
	p := r.spawnRTM(name, extra)
	api, err := p.WaitReady(func() string { return readFile(p.logPath) }, backgroundWorkers, 90*time.Second)
	if err != nil {
		r.t.Fatalf("%s: %v\n%s", name, err, testenv.Tail(p.logPath, 30))
	}
	p.API = api
	return p
}

func (r *rig) spawnRTM(name string, extra map[string]string) *rtmProc {
	r.t.Helper()
	env := maps.Clone(r.env)
	maps.Copy(env, extra)
	dp := r.newDockerProxy(name)
	env["RTMANAGER_DOCKER_HOST"] = dp.host()
	r.mu.Lock()
	n := len(r.procs)
	r.mu.Unlock()
	logPath := filepath.Join(r.t.TempDir(), fmt.Sprintf("%02d-%s.log", n, name))
	proc, err := testenv.StartProcess(suite.bin, testenv.RTMEnviron(env), logPath)
	if err != nil {
		r.t.Fatal(err)
	}
	dp.pid.Store(int64(proc.Cmd.Process.Pid))
	p := &rtmProc{Process: proc, name: name, logPath: logPath, docker: dp}
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	r.t.Cleanup(p.Kill)
	return p
}

// term sends SIGTERM and waits up to 40s for the exit; it returns the exit code.
func (p *rtmProc) term(t *testing.T) int {
	t.Helper()
	if !p.Terminate(40 * time.Second) {
		t.Errorf("%s did not exit within 40s of SIGTERM", p.name)
	}
	return p.Code()
}

var httpClient = &http.Client{Timeout: 60 * time.Second}

// readyz returns /readyz's status and body (status 0 when the listener does not answer).
func (p *rtmProc) readyz() (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(p.API + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// requireAlive fails the test at once when the process has exited; what says when ("round 2").
func (p *rtmProc) requireAlive(t *testing.T, what string) {
	t.Helper()
	if !p.Alive() {
		t.Fatalf("%s: %s exited with %d", what, p.name, p.Code())
	}
}

// waitReadyz waits until /readyz answers 200 again once the fault (what) is over.
func (p *rtmProc) waitReadyz(t *testing.T, what string) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, "/readyz 200 after "+what, func() (bool, string) {
		code, body := p.readyz()
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
}

// outage follows a process's /readyz through an outage of the dependency dep: every answer
// meanwhile must be 503, and at least one must name dep.
type outage struct {
	t      *testing.T
	p      *rtmProc
	dep    string
	what   string   // names the round in errors
	codes  []string // the answers, in order
	saw503 bool
}

// poll asks /readyz once during the outage; it fails the test at once when RTM has exited.
func (o *outage) poll() {
	o.t.Helper()
	code, body := o.p.readyz()
	o.codes = append(o.codes, fmt.Sprint(code))
	if code == http.StatusServiceUnavailable && strings.Contains(body, `"message":"`+o.dep+`: `) {
		o.saw503 = true
	} else if code != http.StatusServiceUnavailable {
		o.t.Errorf("%s: /readyz %d %s while %s is unreachable, want 503 naming %s", o.what, code, body, o.dep, o.dep)
	}
	o.p.requireAlive(o.t, o.what+", "+o.dep+" unreachable")
}

// over, once dep is back, checks that /readyz named it during the outage and waits until it
// answers 200; it returns how long that took.
func (o *outage) over() time.Duration {
	o.t.Helper()
	up := time.Now()
	if !o.saw503 {
		o.t.Errorf("%s: /readyz never answered 503 naming %s", o.what, o.dep)
	}
	o.p.waitReadyz(o.t, o.dep+" returned")
	return time.Since(up)
}

// restorer returns restore, which heals the fault of a proxy (px.Restore) once: see once.
func restorer(t *testing.T, px interface{ Restore() error }) (restore func()) {
	return once(func() {
		if err := px.Restore(); err != nil {
			t.Fatal(err)
		}
	})
}

// once returns f to be called once, by the test when it heals a fault and deferred so that a
// test that stops early does not leave the fault behind; later calls do nothing.
func once(f func()) func() {
	done := false
	return func() {
		if !done {
			done = true
			f()
		}
	}
}

// call sends a REST request to the process's /api/v1/internal<path> as caller admin; body "" sends
// none. It returns the status (0 on a transport error), the body and the X-Request-Id.
func (p *rtmProc) call(method, path, body string) (int, string, string) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, p.API+"/api/v1/internal"+path, rd)
	if err != nil {
		return 0, err.Error(), ""
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-Galaxy-Caller", "admin")
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err.Error(), ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Request-Id")
}

// metric sums the samples of the process's /metrics whose line starts with prefix and contains
// every label in labels (-1 when /metrics does not answer).
func (p *rtmProc) metric(prefix string, labels ...string) float64 {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(p.API + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
next:
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

func (r *rig) dumpLogs(lines int) {
	r.mu.Lock()
	procs := append([]*rtmProc(nil), r.procs...)
	r.mu.Unlock()
	for _, p := range procs {
		r.t.Logf("---- %s (%s) last %d lines ----\n%s", p.name, filepath.Base(p.logPath), lines, testenv.Tail(p.logPath, lines))
	}
}

// logLines returns the process's log lines whose msg is msg and whose game_id is gameID ("" for
// any game).
func (p *rtmProc) logLines(msg, gameID string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(readFile(p.logPath), "\n") {
		if !strings.Contains(line, `"msg":"`+msg+`"`) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if gameID != "" && m["game_id"] != gameID {
			continue
		}
		out = append(out, m)
	}
	return out
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// ---- jobs ----

// sendStart adds a start job for game and image with a fresh request id, which it returns.
func (r *rig) sendStart(game, image string) string {
	return r.send(startJobs, game, "image_ref", image)
}

// sendStop adds a stop job for game with a fresh request id, which it returns.
func (r *rig) sendStop(game string) string {
	return r.send(stopJobs, game, "reason", "chaos")
}

func (r *rig) send(stream, game string, kv ...any) string {
	r.t.Helper()
	r.mu.Lock()
	r.seq++
	id := fmt.Sprintf("%s-%s-%04d", r.prefix, strings.TrimPrefix(stream, "runtime:"), r.seq)
	r.mu.Unlock()
	fields := append([]any{"game_id", game, "request_id", id}, kv...)
	r.xadd(stream, fields)
	r.mu.Lock()
	r.sent[id] = job{stream: stream, game: game, fields: fields}
	r.order = append(r.order, id)
	r.mu.Unlock()
	return id
}

// redeliver adds the entry of an earlier job again (the same request id), as a producer that
// retries would: it must get no second result.
func (r *rig) redeliver(id string) {
	r.t.Helper()
	r.mu.Lock()
	j, ok := r.sent[id]
	r.mu.Unlock()
	if !ok {
		r.t.Fatalf("redelivering unknown job %s", id)
	}
	r.xadd(j.stream, j.fields)
}

func (r *rig) xadd(stream string, fields []any) {
	r.t.Helper()
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err = r.rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: fields}).Err()
		cancel()
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatalf("XADD %s: %v", stream, err)
}

// ---- results ----

// collector follows the results stream from a start id and keeps every entry it reads; after a
// Redis restart the test stops it, drains it and starts it again from 0-0 on the new stream.
type collector struct {
	rdb *redis.Client

	mu      sync.Mutex
	entries []map[string]string
	last    string
	cancel  context.CancelFunc
	done    chan struct{}
}

func newCollector(rdb *redis.Client) *collector { return &collector{rdb: rdb} }

func (c *collector) start(from string) {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.last, c.cancel, c.done = from, cancel, make(chan struct{})
	done := c.done
	c.mu.Unlock()
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := c.read(ctx, 500*time.Millisecond); err != nil && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
}

// read adds the entries after the last one seen; block 0 does not block.
func (c *collector) read(ctx context.Context, block time.Duration) error {
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	var msgs []redis.XMessage
	if block > 0 {
		res, err := c.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{jobResults, last}, Count: 1000, Block: block}).Result()
		if err == redis.Nil {
			return nil
		}
		if err != nil {
			return err
		}
		for _, s := range res {
			msgs = append(msgs, s.Messages...)
		}
	} else {
		res, err := c.rdb.XRange(ctx, jobResults, "("+last, "+").Result()
		if err != nil {
			return err
		}
		msgs = res
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		f := map[string]string{}
		for k, v := range m.Values {
			if s, ok := v.(string); ok {
				f[k] = s
			}
		}
		c.entries = append(c.entries, f)
		c.last = m.ID
	}
	return nil
}

func (c *collector) stop() {
	c.mu.Lock()
	cancel, done := c.cancel, c.done
	c.cancel = nil
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// drain stops the collector and reads whatever is left after its last entry.
func (c *collector) drain(t *testing.T) {
	t.Helper()
	c.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.read(ctx, 0); err != nil {
		t.Fatalf("draining %s: %v", jobResults, err)
	}
}

// byRequest groups the collected results by request id.
func (c *collector) byRequest() map[string][]map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]map[string]string{}
	for _, e := range c.entries {
		out[e["request_id"]] = append(out[e["request_id"]], e)
	}
	return out
}

// counts is the fault report's arithmetic.
type counts struct {
	sent, answered, duplicated, lost int
	missing                          []string // request ids with no result
	problems                         []string // results that do not match their job
}

func (r *rig) counts() counts {
	by := r.results.byRequest()
	r.mu.Lock()
	defer r.mu.Unlock()
	var c counts
	c.sent = len(r.order)
	for _, id := range r.order {
		got := by[id]
		j := r.sent[id]
		switch {
		case len(got) == 0:
			c.lost++
			c.missing = append(c.missing, id)
			continue
		case len(got) > 1:
			c.duplicated += len(got) - 1
		}
		c.answered++
		res := got[0]
		wantJob := "start"
		if j.stream == stopJobs {
			wantJob = "stop"
		}
		if res["job"] != wantJob || res["game_id"] != j.game ||
			(res["outcome"] != "succeeded" && res["outcome"] != "failed") || res["finished_at"] == "" {
			c.problems = append(c.problems, fmt.Sprintf("%s: result %v for a %s of %s", id, res, wantJob, j.game))
		}
	}
	for id, got := range by {
		if _, ok := r.sent[id]; !ok {
			c.duplicated += len(got)
			c.problems = append(c.problems, fmt.Sprintf("result for a request id never sent: %q", id))
		}
	}
	return c
}

// waitAnswered waits until every job sent has a result.
func (r *rig) waitAnswered(timeout time.Duration) {
	r.t.Helper()
	testenv.Eventually(r.t, timeout, "every job answered", func() (bool, string) {
		c := r.counts()
		if c.lost == 0 {
			return true, ""
		}
		return false, fmt.Sprintf("%d of %d jobs without a result, e.g. %v; %s", c.lost, c.sent, head(c.missing, 5), r.pgSummary())
	})
}

// pgSummary describes what PostgreSQL still holds undone, for failure messages.
func (r *rig) pgSummary() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var pending, backlog int
	err := r.pg.QueryRow(ctx, `SELECT (SELECT count(*) FROM requests WHERE answered_at IS NULL),
		(SELECT count(*) FROM outbox WHERE published_at IS NULL)`).Scan(&pending, &backlog)
	if err != nil {
		return "postgres: " + err.Error()
	}
	return fmt.Sprintf("postgres: %d requests unanswered, %d outbox rows unpublished", pending, backlog)
}

// ---- convergence and the invariants ----

type recordRow struct {
	game, status, desired, desiredImage, currentImage, containerID string
	gen, observed                                                  int64
}

func (r *rig) records(ctx context.Context) (map[string]recordRow, error) {
	rows, err := r.pg.Query(ctx, `SELECT game_id, status, desired_state, desired_image_ref, current_image_ref,
		current_container_id, generation, observed_generation FROM runtime_records WHERE game_id LIKE $1 || '%'`, r.prefix)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]recordRow{}
	for rows.Next() {
		var x recordRow
		if err := rows.Scan(&x.game, &x.status, &x.desired, &x.desiredImage, &x.currentImage, &x.containerID, &x.gen, &x.observed); err != nil {
			return nil, err
		}
		out[x.game] = x
	}
	return out, rows.Err()
}

type seenContainer struct {
	id, state, image string
	running          bool
}

// containers lists the containers of the rig's games by game id (all of them, in any state).
func (r *rig) containers(ctx context.Context) (map[string][]seenContainer, error) {
	list, err := suite.docker.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", "com.galaxy.owner=rtmanager"), filters.Arg("name", "galaxy-game-"+r.prefix))})
	if err != nil {
		return nil, err
	}
	out := map[string][]seenContainer{}
	for _, c := range list {
		g := c.Labels["com.galaxy.game_id"]
		out[g] = append(out[g], seenContainer{id: c.ID, state: c.State, image: c.Labels["com.galaxy.image_ref"],
			running: c.State == "running" || c.State == "paused" || c.State == "restarting"})
	}
	return out, nil
}

// mismatches compares every record of the rig's games with Docker and reports what differs, and
// whether RTM still has work pending (unanswered requests, unpublished outbox rows, unsettled
// or transitional records).
func (r *rig) mismatches() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var out []string
	var pending, backlog int
	if err := r.pg.QueryRow(ctx, `SELECT (SELECT count(*) FROM requests WHERE answered_at IS NULL),
		(SELECT count(*) FROM outbox WHERE published_at IS NULL)`).Scan(&pending, &backlog); err != nil {
		return []string{"postgres: " + err.Error()}
	}
	if pending > 0 {
		out = append(out, fmt.Sprintf("%d requests unanswered", pending))
	}
	if backlog > 0 {
		out = append(out, fmt.Sprintf("%d outbox rows unpublished", backlog))
	}
	recs, err := r.records(ctx)
	if err != nil {
		return append(out, "postgres: "+err.Error())
	}
	cs, err := r.containers(ctx)
	if err != nil {
		return append(out, "docker: "+err.Error())
	}
	for g, list := range cs {
		if len(list) > 1 {
			out = append(out, fmt.Sprintf("%s: %d containers", g, len(list)))
		}
		if _, ok := recs[g]; !ok {
			out = append(out, fmt.Sprintf("%s: container %.12s (%s) without a record", g, list[0].id, list[0].state))
		}
	}
	for g, rec := range recs {
		var c *seenContainer
		if list := cs[g]; len(list) > 0 {
			c = &list[0]
		}
		if rec.observed < rec.gen {
			out = append(out, fmt.Sprintf("%s: unsettled (generation %d, observed %d)", g, rec.gen, rec.observed))
			continue
		}
		switch rec.status {
		case "running":
			if c == nil || !c.running || c.id != rec.containerID || c.image != rec.currentImage {
				out = append(out, fmt.Sprintf("%s: record running %.12s %s, docker %s", g, rec.containerID, rec.currentImage, describe(c)))
			}
			if rec.desired != "running" {
				out = append(out, fmt.Sprintf("%s: running but desired %s", g, rec.desired))
			}
		case "stopped", "exited":
			if c == nil || c.running || c.id != rec.containerID {
				out = append(out, fmt.Sprintf("%s: record %s %.12s, docker %s", g, rec.status, rec.containerID, describe(c)))
			}
			if rec.desired != "stopped" {
				out = append(out, fmt.Sprintf("%s: %s but desired %s", g, rec.status, rec.desired))
			}
		case "removed", "failed":
			if c != nil {
				out = append(out, fmt.Sprintf("%s: record %s, docker %s", g, rec.status, describe(c)))
			}
		default:
			out = append(out, fmt.Sprintf("%s: status %s", g, rec.status))
		}
	}
	sort.Strings(out)
	return out
}

func describe(c *seenContainer) string {
	if c == nil {
		return "no container"
	}
	return fmt.Sprintf("%.12s %s %s", c.id, c.state, c.image)
}

// waitConverged waits until RTM has nothing pending and every record equals what Docker shows.
func (r *rig) waitConverged(timeout time.Duration) {
	r.t.Helper()
	testenv.Eventually(r.t, timeout, "records converged with docker", func() (bool, string) {
		m := r.mismatches()
		return len(m) == 0, strings.Join(head(m, 12), "; ")
	})
}

// logOperations logs the game's operation_log, oldest first.
func (r *rig) logOperations(game string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := r.pg.Query(ctx, `SELECT op_kind, op_source, outcome, error_code, request_id, new_image_ref,
		left(container_id, 12), finished_at FROM operation_log WHERE game_id = $1 ORDER BY id`, game)
	if err != nil {
		r.t.Logf("operation_log of %s: %v", game, err)
		return
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var kind, source, outcome, code, req, image, cid string
		var at time.Time
		if err := rows.Scan(&kind, &source, &outcome, &code, &req, &image, &cid, &at); err != nil {
			r.t.Logf("operation_log of %s: %v", game, err)
			return
		}
		lines = append(lines, fmt.Sprintf("%s %s %s/%s %s %s %s %s", at.Format("15:04:05.000"), kind, source, outcome, code, req, image, cid))
	}
	r.t.Logf("operation_log of %s:\n  %s", game, strings.Join(lines, "\n  "))
}

// checkExactlyOnce checks the exactly-once properties PostgreSQL can show: one job result row
// in the outbox per job, at most one operation_log row per request id, every request answered.
func (r *rig) checkExactlyOnce() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, q := range []struct{ sql, what string }{
		{`SELECT fields[array_position(fields, 'request_id') + 1], count(*) FROM outbox
		WHERE stream = 'job_results' GROUP BY 1 HAVING count(*) > 1`, "job results in the outbox"},
		{`SELECT request_id, count(*) FROM operation_log WHERE request_id <> ''
		GROUP BY 1 HAVING count(*) > 1`, "operation_log rows (a double operation)"},
	} {
		rows, err := r.pg.Query(ctx, q.sql)
		if err != nil {
			r.t.Fatal(err)
		}
		for rows.Next() {
			var id string
			var n int
			_ = rows.Scan(&id, &n)
			r.t.Errorf("request %s has %d %s", id, n, q.what)
		}
		rows.Close()
	}
	var outboxResults int
	if err := r.pg.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE stream = 'job_results'`).Scan(&outboxResults); err != nil {
		r.t.Fatal(err)
	}
	if c := r.counts(); outboxResults != c.sent {
		r.t.Errorf("%d job results in the outbox for %d jobs sent", outboxResults, c.sent)
	}
}

// settle waits for every job sent so far to be answered and for convergence, then fails the
// test on a duplicated result or a broken Docker invariant so far. It returns the counts.
func (r *rig) settle(timeout time.Duration) counts {
	r.t.Helper()
	r.waitAnswered(timeout)
	r.waitConverged(timeout)
	c := r.counts()
	if c.duplicated != 0 {
		r.t.Errorf("%d duplicated results so far: %v", c.duplicated, head(c.problems, 5))
	}
	for _, v := range r.watch.violations() {
		r.t.Errorf("docker: %s", v)
	}
	return c
}

// finish ends a fault test: it waits for every job to be answered and for convergence, checks
// every invariant, and prints the fault's report line.
func (r *rig) finish(fault string, timeout time.Duration) {
	r.t.Helper()
	r.waitAnswered(timeout)
	r.waitConverged(timeout)
	// Nothing is left to publish: whatever reached the stream is all there will be.
	r.results.drain(r.t)
	c := r.counts()
	r.checkExactlyOnce()
	for _, p := range head(c.problems, 10) {
		r.t.Errorf("result problem: %s", p)
	}
	for _, v := range r.watch.violations() {
		r.t.Errorf("docker: %s", v)
	}
	inter, mutating := r.ledger.interleavings(r.gapFor)
	report(r.t, fmt.Sprintf("fault %s: jobs sent %d / answered %d / duplicated %d / lost %d; interleaved mutations %d",
		fault, c.sent, c.answered, c.duplicated, c.lost, len(inter)))
	r.t.Logf("fault %s took %s; docker saw %s; docker calls by process: %s; %d mutating calls checked for interleaving",
		fault, time.Since(r.begin).Round(100*time.Millisecond), r.watch.summary(), r.ledger.summary(), mutating)
	if c.duplicated != 0 || c.lost != 0 {
		r.t.Errorf("fault %s: %d duplicated, %d lost (missing %v)", fault, c.duplicated, c.lost, head(c.missing, 10))
	}
	if len(inter) > 0 {
		r.t.Errorf("fault %s: %d interleaved mutations: a process changed a game's container while another was in the middle of "+
			"its own work on it (two processes acting on one game at once: the lease did not exclude them):\n  %s",
			fault, len(inter), strings.Join(head(inter, 20), "\n  "))
	}
}

func head(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
