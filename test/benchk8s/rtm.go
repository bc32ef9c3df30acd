package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// rtmEnv is RTM's environment on the Kubernetes runtime for one database and namespace: the
// harness's (addresses, allow-list, JSON logs at info, pprof) without the Docker settings, the
// cluster, the readiness probe target (no stand-in engine answers at this scale), the claims'
// class when they are bound before the runs, then extra. The work queue keeps its defaults on
// Kubernetes (RTMANAGER_RECONCILE_WORKERS 256): a start holds its worker for the Pod's creation,
// not until the Pod runs (kube.BeginStart).
func (w *world) rtmEnv(dsn, ns string, extra map[string]string) map[string]string {
	env := w.RTMEnv(dsn, map[string]string{
		"RTMANAGER_RUNTIME":                    "kubernetes",
		"KUBECONFIG":                           w.kube.Kubeconfig(),
		"RTMANAGER_KUBE_NAMESPACE":             ns,
		"RTMANAGER_PROBE_TARGET":               "readiness",
		"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": engineRepo,
	})
	if w.prebind {
		env["RTMANAGER_KUBE_STORAGE_CLASS"] = prebindClass
	}
	delete(env, "RTMANAGER_DOCKER_NETWORK")
	delete(env, "RTMANAGER_GAME_STATE_ROOT")
	maps.Copy(env, extra)
	return env
}

// rtmResult is one run of RTM.
type rtmResult struct {
	n   int
	dur time.Duration // first XADD → the last job's result readable
	// Answers: results per request id, over the whole run (burst, rest, passes, restart).
	answered, missing, duplicates, foreign int
	outcomes                               map[string]int
	failures                               []string // the first few failed results
	lo, hi                                 int      // Pods per node
	running                                int      // Pods running after the burst
	burstReqs                              map[string]float64
	burstPeakRSS                           float64 // MB
	burstCPU                               float64 // cores (CPU seconds per second) over the burst
	rest                                   *restResult
	pass                                   *passResult
	boot                                   *bootResult
}

// restResult is RTM at rest after every game runs.
type restResult struct {
	window time.Duration
	reqs   map[string]float64
	rssMB  harness.Sample
	cpuPct float64 // of one core
}

// passResult is a manual reconcile pass (SIGHUP).
type passResult struct {
	games      int           // the games the pass enqueued (its log line)
	dur        time.Duration // SIGHUP → every reconcile done, queue empty and idle
	enqueued   time.Duration // SIGHUP → its log line "manual reconcile pass"
	reconciles float64
	reqs       map[string]float64
}

// bootResult is a restart of RTM over the running games.
type bootResult struct {
	games  int
	list   time.Duration // "kubernetes ping ok" → "kubernetes pods listed" (the informer's first list)
	pass   time.Duration // "internal http listening" → "reconciler initial pass completed"
	reqs   map[string]float64
	answer int // results published by the restarted RTM (none expected)
}

// logged are the log lines the run waits for or reads.
var logged = map[string]bool{"manual reconcile pass": true, "reconciler initial pass completed": true,
	"kubernetes ping ok": true, "kubernetes pods listed": true}

func keepLine(l harness.LogLine) bool { return logged[l.Msg] || l.Level == "ERROR" }

// rtmRun starts n games through RTM in a fresh namespace, database and Redis, and measures; when
// full, also RTM at rest, a manual pass and a restart. The namespace is emptied afterwards.
func (w *world) rtmRun(ctx context.Context, p params, n, round int, full bool) (*rtmResult, error) {
	ns, release, err := w.useNamespace(ctx, fmt.Sprintf("rtm-%d-%d", n, round))
	if err != nil {
		return nil, err
	}
	defer release()
	dsn, err := w.NewDatabase(fmt.Sprintf("benchk8s_%d_%d", n, round))
	if err != nil {
		return nil, err
	}
	if err := w.RDB.FlushAll(ctx).Err(); err != nil {
		return nil, err
	}
	env := w.rtmEnv(dsn, ns, p.rtmEnv)
	res := &rtmResult{n: n}
	games := make([]string, n)
	reqs := make([]string, n)
	for i := range games {
		games[i] = fmt.Sprintf("%s-g%d-%d-%05d", w.Run, n, round, i)
		reqs[i] = fmt.Sprintf("%s-r%d-%d-%05d", w.Run, n, round, i)
	}
	b, err := newBare(w, ns)
	if err != nil {
		return nil, err
	}
	if err := w.provision(ctx, b, games); err != nil {
		return nil, err
	}
	answers := newAnswers(reqs)
	stopFollow := harness.Go(ctx, func(ctx context.Context) {
		harness.Follow(ctx, w.RDB, func(e harness.Entry) { answers.note(e) }, harness.JobResults)
	})
	defer stopFollow()
	defer func() { res.tally(answers) }()

	logName := fmt.Sprintf("rtmanager-%d-%d.log", n, round)
	harness.Logf("  RTM: %d start jobs in %s (log %s)", n, ns, logName)
	proc, err := w.StartRTM(ctx, env, logName, keepLine)
	if err != nil {
		return res, err
	}
	defer func() {
		if proc != nil {
			proc.Terminate(30 * time.Second)
		}
	}()
	proc.WaitIdle(ctx, time.Minute, 50*time.Millisecond)
	m0, err := proc.Metrics(ctx)
	if err != nil {
		return res, err
	}

	// The burst: every job in pipelines of 1,000, as fast as Redis takes them.
	sampler := startSampler(proc, time.Second)
	stopTimeline := w.timeline(proc, fmt.Sprintf("timeline-%d-%d.txt", n, round), p.goroutines)
	defer stopTimeline()
	stopAPI := w.apiProfile(ctx, fmt.Sprintf("rtm-%d-%d", n, round), n)
	var prof *profiler
	if p.profile > 0 {
		if prof, err = w.startProfile(ctx, proc, fmt.Sprintf("%d-%d", n, round), p.profile); err != nil {
			return res, err
		}
	}
	t0 := time.Now()
	for lo := 0; lo < n; lo += 1000 {
		pipe := w.RDB.Pipeline()
		for i := lo; i < min(lo+1000, n); i++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: harness.StartJobs, Values: []string{
				"game_id", games[i], "image_ref", engineImage, "request_id", reqs[i]}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			sampler.stop()
			return res, err
		}
	}
	last, err := answers.wait(ctx, 2*time.Minute+time.Duration(n)*100*time.Millisecond)
	peak, cores := sampler.stop()
	stopTimeline()
	stopAPI()
	if prof != nil {
		prof.stop(ctx, n)
	}
	if err != nil {
		return res, fmt.Errorf("RTM, %d games: %w (log %s)", n, err, proc.LogPath)
	}
	res.dur, res.burstPeakRSS, res.burstCPU = last.Sub(t0), peak, cores
	m1, err := proc.Metrics(ctx)
	if err != nil {
		return res, err
	}
	res.burstReqs = diffReqs(m0, m1)
	if res.lo, res.hi, res.running, err = w.perNode(ctx, ns); err != nil {
		return res, err
	}
	o := answers.snapshot()
	harness.Logf("  RTM: %d answered in %s (%.0f/s), outcomes %v; pods per node %d–%d, %d running; API requests %s (%.2f per game); peak RSS %.0f MB, CPU %.2f cores",
		o.answered, res.dur.Round(10*time.Millisecond), float64(n)/res.dur.Seconds(), o.outcomes, res.lo, res.hi, res.running,
		formatReqs(res.burstReqs), sumReqs(res.burstReqs)/float64(n), res.burstPeakRSS, res.burstCPU)
	for _, f := range o.failures {
		harness.Logf("    not succeeded: %s", f)
	}
	if !full {
		return res, nil
	}

	proc.WaitIdle(ctx, time.Minute, 50*time.Millisecond)
	if res.rest, err = measureRest(ctx, proc, p.rest); err != nil {
		return res, err
	}
	harness.Logf("  RTM at rest for %s: API requests %s; RSS %.0f MB; CPU %.2f%% of a core",
		res.rest.window.Round(time.Second), formatReqs(res.rest.reqs), res.rest.rssMB.Median(), res.rest.cpuPct)
	if res.pass, err = w.manualPass(ctx, proc); err != nil {
		return res, err
	}
	harness.Logf("  manual reconcile pass over %d games: %s (enqueued after %s), %.0f reconciles, API requests %s",
		res.pass.games, res.pass.dur.Round(time.Millisecond), res.pass.enqueued.Round(time.Millisecond), res.pass.reconciles, formatReqs(res.pass.reqs))

	// A restart over the running games: the boot pass, and no job answered again.
	before := answers.snapshot().total
	proc.Terminate(30 * time.Second)
	bootLog := fmt.Sprintf("rtmanager-%d-%d-restart.log", n, round)
	if proc, err = w.StartRTM(ctx, env, bootLog, keepLine); err != nil {
		return res, err
	}
	if res.boot, err = bootPass(ctx, proc); err != nil {
		return res, err
	}
	proc.WaitIdle(ctx, time.Minute, 50*time.Millisecond)
	harness.SleepCtx(ctx, 2*time.Second)
	res.boot.answer = answers.snapshot().total - before
	harness.Logf("  restart: informer list of %d pods %s, boot pass %s, API requests since the start %s, results published again %d",
		res.boot.games, res.boot.list.Round(time.Millisecond), res.boot.pass.Round(time.Millisecond), formatReqs(res.boot.reqs), res.boot.answer)
	return res, nil
}

// measureRest samples RTM every 10 s over window: its API requests, RSS and CPU.
func measureRest(ctx context.Context, proc *harness.Proc, window time.Duration) (*restResult, error) {
	m0, err := proc.Metrics(ctx)
	if err != nil {
		return nil, err
	}
	first, err := proc.Stat()
	if err != nil {
		return nil, err
	}
	r := &restResult{}
	prev := first
	for elapsed := time.Duration(0); elapsed < window; elapsed += 10 * time.Second {
		harness.SleepCtx(ctx, min(10*time.Second, window-elapsed))
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if prev, err = proc.Stat(); err != nil {
			return nil, err
		}
		r.rssMB = append(r.rssMB, float64(prev.RSSKB)/1024)
	}
	m1, err := proc.Metrics(ctx)
	if err != nil {
		return nil, err
	}
	r.window = prev.At.Sub(first.At)
	r.cpuPct = 100 * (prev.CPU - first.CPU).Seconds() / r.window.Seconds()
	r.reqs = diffReqs(m0, m1)
	return r, nil
}

// manualPass sends RTM a SIGHUP and measures the pass it runs: until the reconcile count has
// grown by the games the pass enqueued and the workqueue is empty and idle.
func (w *world) manualPass(ctx context.Context, proc *harness.Proc) (*passResult, error) {
	m0, err := proc.Metrics(ctx)
	if err != nil {
		return nil, err
	}
	r0 := reconciles(m0)
	t0 := time.Now()
	if err := proc.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	line, err := proc.WaitLog(lctx, 0, func(l harness.LogLine) bool { return l.Msg == "manual reconcile pass" })
	if err != nil {
		return nil, fmt.Errorf("manual pass: %w", err)
	}
	r := &passResult{enqueued: line.Time.Sub(t0)}
	g, _ := line.Attrs["games"].(float64)
	r.games = int(g)
	for lctx.Err() == nil {
		m, err := proc.Metrics(lctx)
		at := time.Now()
		if err == nil && reconciles(m)-r0 >= float64(r.games) && m.Sum("workqueue_depth", `name="game"`) == 0 &&
			m.Sum("controller_runtime_active_workers", `controller="game"`) == 0 {
			r.dur, r.reconciles, r.reqs = at.Sub(t0), reconciles(m)-r0, diffReqs(m0, m)
			return r, nil
		}
		harness.SleepCtx(lctx, 50*time.Millisecond)
	}
	return nil, fmt.Errorf("manual pass over %d games not done in 10 minutes", r.games)
}

func reconciles(m harness.PromText) float64 {
	return m.Sum("controller_runtime_reconcile_total", `controller="game"`)
}

// bootPass reads a new RTM's start-up from its log: the informer's first list and the boot pass.
func bootPass(ctx context.Context, proc *harness.Proc) (*bootResult, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	// The informer's first list, the listener and the boot pass, in the order RTM logs them.
	var ping, listed, listen, done harness.LogLine
	for _, l := range []struct {
		msg  string
		line *harness.LogLine
	}{{"kubernetes ping ok", &ping}, {"kubernetes pods listed", &listed},
		{"internal http listening", &listen}, {"reconciler initial pass completed", &done}} {
		var err error
		if *l.line, err = proc.WaitLog(lctx, 0, func(x harness.LogLine) bool { return x.Msg == l.msg }); err != nil {
			return nil, fmt.Errorf("%s: %w", l.msg, err)
		}
	}
	m, err := proc.Metrics(ctx)
	if err != nil {
		return nil, err
	}
	g, _ := done.Attrs["games"].(float64)
	return &bootResult{games: int(g), list: listed.Time.Sub(ping.Time), pass: done.Time.Sub(listen.Time), reqs: kubeReqs(m)}, nil
}

// answers counts the results on runtime:job_results per request id.
type answers struct {
	mu       sync.Mutex
	want     map[string]bool
	seen     map[string]int
	outcomes map[string]int
	failures []string
	total    int // every result entry
	got      int // wanted request ids answered at least once
	last     time.Time
	done     chan struct{}
}

func newAnswers(reqs []string) *answers {
	a := &answers{want: make(map[string]bool, len(reqs)), seen: make(map[string]int, len(reqs)),
		outcomes: map[string]int{}, done: make(chan struct{})}
	for _, r := range reqs {
		a.want[r] = true
	}
	return a
}

func (a *answers) note(e harness.Entry) {
	id := e.Fields["request_id"]
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total++
	a.seen[id]++
	if !a.want[id] || a.seen[id] > 1 {
		return
	}
	a.got++
	a.last = e.At
	a.outcomes[e.Fields["outcome"]]++
	if e.Fields["outcome"] != "succeeded" && len(a.failures) < 5 {
		a.failures = append(a.failures, fmt.Sprintf("%s: %s %s: %s", e.Fields["game_id"], e.Fields["outcome"], e.Fields["error_code"], e.Fields["error_message"]))
	}
	if a.got == len(a.want) {
		close(a.done)
	}
}

// wait returns when every wanted request has a result: when the last one was read.
func (a *answers) wait(ctx context.Context, timeout time.Duration) (time.Time, error) {
	if err := closedWithin(ctx, a.done, timeout); errors.Is(err, errTimeout) {
		return time.Time{}, fmt.Errorf("%d of %d jobs answered after %s", a.snapshot().answered, len(a.want), timeout)
	} else if err != nil {
		return time.Time{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last, nil
}

// tally is a copy of the counts.
type tally struct {
	answered, missing, duplicates, foreign, total int
	outcomes                                      map[string]int
	failures                                      []string
}

func (a *answers) snapshot() tally {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := tally{outcomes: maps.Clone(a.outcomes), failures: slices.Clone(a.failures), total: a.total}
	for id := range a.want {
		switch c := a.seen[id]; {
		case c == 0:
			t.missing++
		case c > 1:
			t.duplicates++
			t.answered++
		default:
			t.answered++
		}
	}
	for id, c := range a.seen {
		if !a.want[id] {
			t.foreign += c
		}
	}
	return t
}

func (r *rtmResult) tally(a *answers) {
	t := a.snapshot()
	r.answered, r.missing, r.duplicates, r.foreign, r.outcomes, r.failures = t.answered, t.missing, t.duplicates, t.foreign, t.outcomes, t.failures
}

// exactlyOnce reports every job answered once, succeeded, nothing else answered.
func (r *rtmResult) exactlyOnce() bool {
	return r.answered == r.n && r.missing == 0 && r.duplicates == 0 && r.foreign == 0 && r.outcomes["succeeded"] == r.n
}

// sampler reads RTM's /proc entry every step while a burst runs.
type sampler struct {
	stopFn func()
	mu     sync.Mutex
	first  harness.ProcStat
	last   harness.ProcStat
	peakKB int64
}

func startSampler(proc *harness.Proc, step time.Duration) *sampler {
	s := &sampler{}
	s.first, _ = proc.Stat()
	s.last, s.peakKB = s.first, s.first.RSSKB
	s.stopFn = harness.Go(context.Background(), func(ctx context.Context) {
		for ctx.Err() == nil {
			harness.SleepCtx(ctx, step)
			if st, err := proc.Stat(); err == nil {
				s.mu.Lock()
				s.last, s.peakKB = st, max(s.peakKB, st.RSSKB)
				s.mu.Unlock()
			}
		}
	})
	return s
}

// stop ends the sampling and returns the peak RSS (MB) and the CPU used per second (cores).
func (s *sampler) stop() (peakMB, cores float64) {
	s.stopFn()
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.last.At.Sub(s.first.At); d > 0 {
		cores = (s.last.CPU - s.first.CPU).Seconds() / d.Seconds()
	}
	return float64(s.peakKB) / 1024, cores
}

// kubeReqs reads RTM's API request counter by verb.
func kubeReqs(m harness.PromText) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(string(m), "\n") {
		if !strings.HasPrefix(line, "rtmanager_kube_api_requests") {
			continue
		}
		verb := "?"
		if _, rest, ok := strings.Cut(line, `verb="`); ok {
			verb, _, _ = strings.Cut(rest, `"`)
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			out[verb] += v
		}
	}
	return out
}

// diffReqs is the API requests between two scrapes, by verb (verbs with none left out).
func diffReqs(a, b harness.PromText) map[string]float64 {
	before, after := kubeReqs(a), kubeReqs(b)
	out := map[string]float64{}
	for verb, v := range after {
		if d := v - before[verb]; d != 0 {
			out[verb] = d
		}
	}
	return out
}

func sumReqs(m map[string]float64) float64 {
	var n float64
	for _, v := range m {
		n += v
	}
	return n
}

// restless is the requests of a window that are not the informer's watch.
func restless(m map[string]float64) float64 { return sumReqs(m) - m["watch"] }

// formatReqs prints requests by verb, sorted: "none" for none.
func formatReqs(m map[string]float64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.0f", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// timelined are the metrics the timeline keeps: where the jobs of a burst wait.
var timelined = []string{"rtmanager_stream_lag", "rtmanager_runtime_records_by_status", "rtmanager_jobs_answered",
	"rtmanager_docker_op_latency_seconds_count", "rtmanager_docker_op_latency_seconds_sum", `workqueue_depth{name="game"`,
	`controller_runtime_active_workers{controller="game"`, `workqueue_queue_duration_seconds_sum{name="game"`,
	`controller_runtime_reconcile_time_seconds_sum{controller="game"`, `controller_runtime_reconcile_total{controller="game"`,
	"rtmanager_publisher_backlog", "go_goroutines"}

// timeline scrapes RTM's /metrics every second into name in the work dir, the lines of
// timelined only, for a diagnosis; with goroutines also RTM's goroutine profile (debug=1) into
// name's goroutines- twin. stop ends it (once).
func (w *world) timeline(proc *harness.Proc, name string, goroutines bool) (stop func()) {
	f, err := os.Create(filepath.Join(w.Work, name))
	if err != nil {
		return func() {}
	}
	var g *os.File
	if goroutines {
		if g, err = os.Create(filepath.Join(w.Work, "goroutines-"+name)); err != nil {
			f.Close()
			return func() {}
		}
	}
	end := harness.Go(context.Background(), func(ctx context.Context) {
		for ctx.Err() == nil {
			if g != nil {
				if body, _, err := proc.GoroutineProfile(ctx); err == nil {
					fmt.Fprintf(g, "# %s\n%s\n", time.Now().Format("15:04:05.000"), body)
				}
			}
			m, err := proc.Metrics(ctx)
			if err == nil {
				fmt.Fprintf(f, "# %s\n", time.Now().Format("15:04:05.000"))
				for _, line := range strings.Split(string(m), "\n") {
					for _, p := range timelined {
						if strings.HasPrefix(line, p) {
							fmt.Fprintln(f, line)
							break
						}
					}
				}
			}
			harness.SleepCtx(ctx, time.Second)
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			end()
			f.Close()
			if g != nil {
				g.Close()
			}
		})
	}
}
