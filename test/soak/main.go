// Command soak is Runtime Manager's soak test (`make soak`, issue 10 item 5): it runs the real
// rtmanager binary against a throwaway PostgreSQL and Redis (test/testenv) and the real Docker
// daemon, brings up -engines engines through start jobs, probes them every second and, for
// -duration, keeps steady traffic on it: start and stop jobs on a separate pool of games, REST
// reads, and now and then a REST patch or restart. Every -sample it reads RTM's RSS, open file
// descriptors, goroutines and CPU; at the end it checks that every job got exactly one result,
// computes each series' trend and prints PASS or MISS against the stability criteria. A run at
// the sizes writes docs/soak.md.
//
// Everything it starts (RTM, containers, network, servers) is removed at the end and on Ctrl-C.
// docs/soak.md describes the method.
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// params are the sizes of one run.
type params struct {
	engines     int
	duration    time.Duration
	sample      time.Duration
	warmup      time.Duration
	churn       int
	jobRate     float64
	restRate    float64
	mutateEvery time.Duration
	startConc   int
	out         string
	profiles    string
	keep        bool
}

// The sizes: a run at these (or larger) writes docs/soak.md by default.
const (
	fullEngines  = 200
	fullDuration = 10 * time.Minute
)

func main() {
	var p params
	flag.IntVar(&p.engines, "engines", fullEngines, "engines started through start jobs and probed throughout")
	flag.DurationVar(&p.duration, "duration", fullDuration, "length of the steady-traffic window")
	flag.DurationVar(&p.sample, "sample", 30*time.Second, "interval between readings of RTM")
	flag.DurationVar(&p.warmup, "warmup", 2*time.Minute, "start of the window left out of the RSS slope (at most a third of -duration)")
	flag.IntVar(&p.churn, "churn", 20, "games of the start/stop pool")
	flag.Float64Var(&p.jobRate, "job-rate", 2, "start and stop jobs per second on the pool")
	flag.Float64Var(&p.restRate, "rest-rate", 50, "REST reads per second")
	flag.DurationVar(&p.mutateEvery, "mutate-every", 20*time.Second, "interval between REST mutations (patch and restart alternate)")
	flag.IntVar(&p.startConc, "start-concurrency", 32, "start jobs in flight while the engines come up")
	flag.StringVar(&p.out, "out", "", "where to write the report (default docs/soak.md at the issue's sizes, none below them)")
	flag.StringVar(&p.profiles, "profiles", "", "directory for RTM's goroutine and heap profiles after the warm-up and at the end")
	flag.BoolVar(&p.keep, "keep", false, "keep the work dir (RTM's log)")
	flag.Parse()
	if p.engines < 2 || p.churn < 1 || p.duration <= 0 || p.sample <= 0 || p.jobRate <= 0 || p.restRate <= 0 ||
		p.mutateEvery <= 0 || p.startConc < 1 {
		fmt.Fprintln(os.Stderr, "soak: -engines must be ≥ 2, -churn and -start-concurrency ≥ 1, durations and rates > 0")
		os.Exit(2)
	}
	p.warmup = min(p.warmup, p.duration/3)
	if p.out == "" && p.engines >= fullEngines && p.duration >= fullDuration {
		p.out = "docs/soak.md"
	}

	ctx, stop := harness.SignalContext()
	defer stop()
	os.Exit(run(ctx, p))
}

func run(ctx context.Context, p params) int {
	r := &report{p: p, began: time.Now()}
	w := &world{}
	defer w.close()
	if err := setUp(ctx, w, p.keep); err != nil {
		harness.Logf("set-up failed: %v", err)
		return 1
	}
	// The binary was built from the tree as it is now.
	r.dockerVer, r.commit = w.DockerVer, harness.Commit(w.Root)
	var ok bool
	if r.cleanup, ok = harness.Finish(soak(ctx, w, p, r), "soak", w.close); !ok {
		return 1
	}
	r.elapsed = time.Since(r.began)
	r.machine, r.goVer = harness.Machine(), harness.GoVersion()
	r.evaluate()
	fmt.Println(r.terminal())
	if p.out != "" && !harness.WriteDoc(w.Root, p.out, r.markdown()) {
		return 1
	}
	if r.missed() > 0 {
		harness.Logf("%d criteria missed", r.missed())
		return 1
	}
	return 0
}

// soak runs RTM, brings the engines up, keeps the traffic going for the window while sampling,
// and checks the results. It fills r.
func soak(ctx context.Context, w *world, p params, r *report) error {
	dsn, err := w.NewDatabase("soak")
	if err != nil {
		return err
	}
	harness.Logf("starting rtmanager")
	rtm, err := w.startRTM(ctx, w.rtmEnv(dsn, nil))
	if err != nil {
		return err
	}
	watch := newWatcher(w.RDB)
	stopWatch := harness.Go(ctx, watch.run)
	defer stopWatch()
	tr := newTraffic(w, rtm, watch)

	engines := make([]string, p.engines)
	for i := range engines {
		engines[i] = fmt.Sprintf("%s-e%03d", w.Run, i)
	}
	pool := make([]string, p.churn)
	for i := range pool {
		pool[i] = fmt.Sprintf("%s-c%02d", w.Run, i)
	}

	harness.Logf("starting %d engines through start jobs, %d in flight", p.engines, p.startConc)
	t0 := time.Now()
	if err := tr.startEngines(ctx, engines, p.startConc); err != nil {
		return err
	}
	r.startup = time.Since(t0)
	harness.Logf("  %d engines up in %s", p.engines, r.startup.Round(100*time.Millisecond))
	rtm.WaitIdle(ctx, time.Minute, 200*time.Millisecond)
	if ctx.Err() != nil {
		return ctx.Err()
	}

	harness.Logf("steady traffic for %s: %d-game start/stop pool at %g jobs/s, REST reads at %g/s, a REST patch or restart every %s; a reading every %s",
		p.duration, p.churn, p.jobRate, p.restRate, p.mutateEvery, p.sample)
	healthBefore, problemsBefore := watch.healthCounts(), rtm.logProblems()
	stopCtx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	done := make(chan struct{}, 3)
	go func() { tr.churn(ctx, stopCtx, pool, p.jobRate); done <- struct{}{} }()
	go func() { tr.reads(stopCtx, engines, p.restRate); done <- struct{}{} }()
	go func() { tr.mutate(ctx, stopCtx, engines[0], engines[1], p.mutateEvery); done <- struct{}{} }()

	// The window starts with the traffic: its first reading is taken as the traffic begins.
	s := &sampler{p: rtm, tr: tr, watch: watch, began: time.Now()}
	end := s.began.Add(p.duration)
	var baseProfile, lastProfile string
	for next := s.began; !next.After(end.Add(time.Second)); next = next.Add(p.sample) {
		harness.SleepCtx(ctx, time.Until(next))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !rtm.Alive() {
			return fmt.Errorf("rtmanager exited during the soak (log %s)", rtm.LogPath)
		}
		pt, prof, err := s.read(ctx)
		if err != nil {
			return fmt.Errorf("reading RTM: %w", err)
		}
		r.points = append(r.points, pt)
		lastProfile = prof
		harness.Logf("  %s", pt.line())
		// The goroutine baseline is the first reading after the warm-up: what RTM holds once
		// the traffic's connections and the probes' keep-alives are established.
		if baseProfile == "" && pt.t >= p.warmup {
			baseProfile, r.baseAt = prof, pt.t
			if err := saveProfiles(ctx, rtm, p.profiles, "warm", prof); err != nil {
				harness.Logf("saving profiles: %v", err)
			}
		}
	}
	r.window = time.Since(s.began)
	if err := saveProfiles(ctx, rtm, p.profiles, "end", lastProfile); err != nil {
		harness.Logf("saving profiles: %v", err)
	}
	r.growth = goroutineDiff(baseProfile, lastProfile)

	harness.Logf("stopping the traffic; waiting for the jobs in flight")
	stopTraffic()
	for i := 0; i < 3; i++ {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	rtm.WaitIdle(ctx, time.Minute, 200*time.Millisecond)
	// The last results may still be on their way through the outbox (relayed every 250 ms).
	harness.SleepCtx(ctx, 3*time.Second)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.once = watch.check(tr.sentIDs())
	healthAfter := watch.healthCounts()
	r.health = map[string]int{}
	for k, v := range healthAfter {
		if d := v - healthBefore[k]; d > 0 {
			r.health[k] = d
		}
	}
	r.problems = map[string][2]int{}
	for k, n := range rtm.logProblems() {
		r.problems[k] = [2]int{problemsBefore[k], n - problemsBefore[k]}
	}
	r.mutations, r.failures, r.codes, r.restAll = tr.summary()
	r.churnSent, r.delivered2, r.churnSkipped = tr.churnSent.Load(), tr.delivered2.Load(), tr.churnSkipped.Load()
	r.jobsFailed, r.jobsLost = tr.jobsFailed.Load(), tr.jobsLost.Load()
	r.restOK, r.restErr, r.restDropped = tr.restOK.Load(), tr.restErr.Load(), tr.restDropped.Load()
	return nil
}

// line is a progress line of one reading.
func (pt point) line() string {
	cpu := "–"
	if !math.IsNaN(pt.cpuPct) {
		cpu = fmt.Sprintf("%.0f%%", pt.cpuPct)
	}
	return fmt.Sprintf("t=%-6s rss %.1f MB, heap %.1f MB, fds %d, goroutines %d, threads %d, cpu %s, probes %.0f/s (%.1f/s failed), running %.0f, load %.2f",
		fmtDur(pt.t), pt.rssMB, pt.heapMB, pt.fds, pt.goroutines, pt.threads, cpu, pt.probeOK, pt.probeFail, pt.running, pt.load1)
}

// fmtDur prints a duration as m:ss.
func fmtDur(d time.Duration) string {
	s := int(d.Round(time.Second).Seconds())
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}
