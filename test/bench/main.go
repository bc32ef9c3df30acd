// Command bench is Runtime Manager's benchmark (`make bench`): it runs the real rtmanager binary
// against a throwaway PostgreSQL and Redis (test/testenv) and the real Docker daemon, measures
// RTM against Docker's own cost of the same work, prints one table with each target's pass or
// miss, and writes docs/benchmarks.md.
//
// Every comparison is measured in one run, alternating RTM and the raw baseline, so that the
// machine's noise falls on both. What is measured and how is described in docs/benchmarks.md.
//
// Flags: -quick runs small sizes for development (and writes no document unless -out is given);
// -scale (or BENCH_SCALE) lists the numbers of real engines; -only runs some phases.
package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// params are the sizes of one run.
type params struct {
	quick        bool
	rounds       int
	burstN       int
	burstRounds  int
	calibN       int
	calibLevels  []int
	restRate     int
	restWarm     time.Duration
	restDur      time.Duration
	standin      []int
	standinPass  int
	scale        []int
	restarts     int
	settle       time.Duration
	window       time.Duration
	startBatch   int
	only         map[string]bool
	keep         bool
	restProfile  string // where to write RTM's CPU profile of the last scale's rest window
	logLevel     string
	rtmEnv       map[string]string
	out          string
	writeDocFile bool
}

func (p params) runs(phase string) bool { return len(p.only) == 0 || p.only[phase] }

func main() {
	quick := flag.Bool("quick", false, "small sizes, for development")
	scale := flag.String("scale", "", "numbers of real running engines, comma-separated (default 10,100,1000; env BENCH_SCALE)")
	only := flag.String("only", "", "run only these phases: latency,burst,rest,standin,scale")
	out := flag.String("out", "", "where to write the report (default docs/benchmarks.md; none with -quick)")
	keep := flag.Bool("keep", false, "keep the work dir (RTM's logs) for inspection")
	logLevel := flag.String("rtm-log-level", "info", "RTMANAGER_LOG_LEVEL of the RTM processes")
	rtmEnv := flag.String("rtm-env", "", "extra RTM environment, K=V,K=V (for profiling runs)")
	rounds := flag.Int("rounds", 0, "rounds of single start/stop/exit (default 30, 5 with -quick)")
	burstN := flag.Int("burst", 0, "jobs per burst (default 50, 10 with -quick)")
	burstRounds := flag.Int("burst-rounds", 0, "burst rounds (default 5, 1 with -quick)")
	cpuProfile := flag.String("cpuprofile", "", "write the benchmark process's CPU profile here (the stand-in passes run in it)")
	restWindow := flag.Duration("rest-window", 0, "length of each scale's rest window (default 2m, 20s with -quick); a longer one averages more sweeps, or leaves time to profile RTM by hand")
	restProfile := flag.String("rest-profile", "", "write RTM's CPU profile of the largest scale's rest window here (profiling costs RTM a little CPU: not for the document's figures)")
	flag.Parse()

	p := params{rounds: 30, burstN: 50, burstRounds: 5, calibN: 16, calibLevels: []int{4, 8, 16},
		restRate: 1000, restWarm: 2 * time.Second, restDur: 10 * time.Second,
		standin: []int{1000, 10000}, standinPass: 5, scale: []int{10, 100, 1000}, restarts: 3,
		settle: 8 * time.Second, startBatch: 250, out: "docs/benchmarks.md", writeDocFile: true,
		// 2 minutes hold exactly four inspector sweeps (RTMANAGER_INSPECT_INTERVAL) and 24 probe
		// rounds, wherever they start; the CPU of one 30-s window varies by a quarter.
		window: 2 * time.Minute}
	if *quick {
		p.quick = true
		p.rounds, p.burstN, p.burstRounds, p.calibN, p.calibLevels = 5, 10, 1, 10, []int{4, 16}
		p.restWarm, p.restDur = time.Second, 3*time.Second
		p.standin, p.standinPass = []int{1000, 2000}, 3
		p.scale, p.restarts, p.settle = []int{10, 50}, 2, 8*time.Second
		p.window = 20 * time.Second
		p.writeDocFile = false
	}
	if s := os.Getenv("BENCH_SCALE"); s != "" && *scale == "" {
		*scale = s
	}
	if *scale != "" {
		var err error
		if p.scale, err = harness.Counts(*scale); err != nil {
			fmt.Fprintf(os.Stderr, "bench: -scale: %v\n", err)
			os.Exit(2)
		}
	}
	if *only != "" {
		p.writeDocFile = false // a partial run does not replace the document
		p.only = map[string]bool{}
		for _, f := range strings.Split(*only, ",") {
			p.only[strings.TrimSpace(f)] = true
		}
	}
	p.keep, p.logLevel, p.restProfile = *keep, *logLevel, *restProfile
	if *restWindow > 0 {
		p.window = *restWindow
	}
	if *rounds > 0 {
		p.rounds = *rounds
	}
	if *burstN > 0 {
		p.burstN, p.calibN = *burstN, *burstN/2
	}
	if *burstRounds > 0 {
		p.burstRounds = *burstRounds
	}
	if *rtmEnv != "" {
		p.rtmEnv = harness.EnvList(*rtmEnv)
	}
	if len(p.rtmEnv) > 0 || p.logLevel != "info" {
		p.writeDocFile = false // a profiling run is not the product's figures
	}
	if *out != "" {
		p.out, p.writeDocFile = *out, true
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: cpu profile: %v\n", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := harness.SignalContext()
	defer stop()
	code := run(ctx, p)
	pprof.StopCPUProfile()
	os.Exit(code)
}

func run(ctx context.Context, p params) int {
	r := &report{Run: harness.Run{Began: time.Now()}, params: p}
	w := &world{logLevel: p.logLevel, extraEnv: p.rtmEnv}
	defer w.close()
	if err := setUp(ctx, w, p.keep); err != nil {
		harness.Logf("set-up failed: %v", err)
		return 1
	}
	r.dockerVer = w.DockerVer
	var ok bool
	if r.Cleanup, ok = harness.Finish(measure(ctx, w, p, r), "benchmark", w.close); !ok {
		return 1
	}
	r.Done(w.Root)
	return r.Report(r.rows(), spreadTitle, p.writeDocFile, func() bool { return harness.WriteDoc(w.Root, p.out, r.markdown()) })
}

// measure runs the phases in order and fills r.
func measure(ctx context.Context, w *world, p params, r *report) error {
	dsn, err := w.NewDatabase("bench_rtm")
	if err != nil {
		return err
	}
	env := w.rtmEnv(dsn)
	cfg, err := rtmConfig(env)
	if err != nil {
		return err
	}
	watch := newWatcher(w.RDB)
	stopWatch := harness.Go(ctx, watch.run)
	defer stopWatch()

	d := &driver{w: w, watch: watch, raw: newRawStarter(w.Docker, cfg)}
	if p.runs("latency") || p.runs("burst") || p.runs("rest") {
		harness.Logf("starting rtmanager")
		if d.rtm, err = w.StartRTM(ctx, env, "rtmanager-1.log", nil); err != nil {
			return err
		}
	}
	if p.runs("latency") {
		harness.Logf("single start, stop and exit detection: %d rounds, RTM and raw alternating", p.rounds)
		if err := r.Phases.Run("single start, stop, exit", func() (err error) {
			r.lat, err = d.measureLatency(ctx, p.rounds)
			return err
		}); err != nil {
			return err
		}
	}
	if p.runs("burst") {
		harness.Logf("burst: %d start jobs at once versus %d raw create+starts", p.burstN, p.burstN)
		if err := r.Phases.Run("burst", func() (err error) {
			r.burst, err = d.measureBurst(ctx, p.burstN, p.burstRounds, p.calibN, p.calibLevels)
			return err
		}); err != nil {
			return err
		}
	}
	if p.runs("rest") {
		games := []string{}
		if r.lat != nil {
			games = r.lat.rtmGames
		} else {
			for i := 0; i < 5; i++ {
				g := fmt.Sprintf("%s-t%02d", w.Run, i)
				if _, _, err := d.rtmStart(ctx, g); err != nil {
					return err
				}
				games = append(games, g)
			}
		}
		d.quiesce(ctx)
		harness.Logf("REST: GET /api/v1/internal/runtimes/{id} at %d requests/s for %s", p.restRate, p.restDur)
		if err := r.Phases.Run("REST", func() (err error) {
			r.rest, err = measureREST(ctx, d.rtm.API, games, p.restRate, p.restWarm, p.restDur)
			return err
		}); err != nil {
			return err
		}
	}
	if d.rtm != nil {
		d.rtm.Terminate(30 * time.Second)
	}

	if p.runs("standin") {
		sdsn, err := w.NewDatabase("bench_standin")
		if err != nil {
			return err
		}
		if err := r.Phases.Run("stand-in passes", func() error {
			for _, n := range p.standin {
				harness.Logf("stand-in runtime: full pass over %d games (%d passes)", n, p.standinPass)
				pt, err := measureStandin(ctx, sdsn, w.Run, n, p.standinPass)
				if err != nil {
					return fmt.Errorf("stand-in pass over %d games: %w", n, err)
				}
				r.standin = append(r.standin, pt)
			}
			return nil
		}); err != nil {
			return err
		}
	}

	if p.runs("scale") {
		if err := measureScale(ctx, w, d, p, r); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// measureScale brings up each number of real engines through RTM, measures its boot pass over
// them and its cost at rest.
func measureScale(ctx context.Context, w *world, d *driver, p params, r *report) error {
	// A clean slate: no containers, empty Redis, a fresh database, RTM behind the counting proxy.
	if _, err := w.RemoveContainers(ctx, w.Net); err != nil {
		return err
	}
	if err := w.RDB.FlushAll(ctx).Err(); err != nil {
		return err
	}
	d.watch.reset()
	dsn, err := w.NewDatabase("bench_scale")
	if err != nil {
		return err
	}
	proxy, err := startDockerProxy(filepath.Join(w.Work, "docker.sock"), w.Run)
	if err != nil {
		return err
	}
	defer proxy.close()
	env := w.rtmEnv(dsn)
	env["RTMANAGER_DOCKER_HOST"] = "unix://" + proxy.path
	// While engines are brought up (not measured), RTM sweeps and probes rarely, so that the
	// daemon spends itself on creating them; every measurement below runs on the defaults.
	bringUp := maps.Clone(env)
	bringUp["RTMANAGER_INSPECT_INTERVAL"] = "1h"
	bringUp["RTMANAGER_PROBE_INTERVAL"] = "1m"
	have := 0
	for _, n := range p.scale {
		if n > have {
			harness.Logf("scale %d: starting %d engines through RTM", n, n-have)
			roomForEngines(n)
			if d.rtm != nil {
				d.rtm.Terminate(30 * time.Second)
			}
			if d.rtm, err = w.StartRTM(ctx, bringUp, fmt.Sprintf("rtmanager-scale-%d-up.log", n), nil); err != nil {
				return err
			}
			t0 := time.Now()
			if err := r.Phases.Run(fmt.Sprintf("scale %d: start %d engines (not measured)", n, n-have), func() error {
				_, err := d.startGames(ctx, have, n-have, p.startBatch)
				return err
			}); err != nil {
				return err
			}
			harness.Logf("  %d engines up in %s", n-have, time.Since(t0).Round(100*time.Millisecond))
			have = n
		}
		d.rtm.WaitIdle(ctx, time.Minute, 50*time.Millisecond)
		pt := &scalePoint{n: n}
		for i := 0; i < p.restarts; i++ {
			harness.SleepCtx(ctx, time.Second)
			dur, games, calls, err := d.bootPass(ctx, env, proxy, fmt.Sprintf("rtmanager-scale-%d-%d.log", n, i))
			if err != nil {
				return err
			}
			pt.pass = append(pt.pass, ms(dur))
			pt.passGames = append(pt.passGames, games)
			pt.passCalls = append(pt.passCalls, calls)
			harness.Logf("  boot pass over %d games: %.1f ms, docker calls: %s", games, ms(dur), formatCalls(calls))
		}
		d.settle(ctx, proxy, p.settle)
		win := p.window
		harness.Logf("  at rest for %s (RTM pid %d, API %s)", win, d.rtm.Cmd.Process.Pid, d.rtm.API)
		if err := r.Phases.Run(fmt.Sprintf("scale %d: at rest", n), func() error {
			if p.restProfile == "" || n != p.scale[len(p.scale)-1] {
				return d.atRest(ctx, pt, proxy, win, 10*time.Second)
			}
			return profileDuring(ctx, d.rtm, p.restProfile, win, func() error {
				return d.atRest(ctx, pt, proxy, win, 10*time.Second)
			})
		}); err != nil {
			return err
		}
		harness.Logf("  RSS %.1f MB, CPU %.2f s/min, goroutines %.0f", pt.rss.Median(), pt.cpuPerMin, pt.goroutines.Median())
		r.scale = append(r.scale, pt)
	}
	d.rtm.Terminate(30 * time.Second)
	return nil
}
