// Command benchk8s is Runtime Manager's benchmark on the Kubernetes runtime (`make bench-k8s`):
// a real control plane with 100 kwok nodes (test/k8senv), the real rtmanager binary with
// RTMANAGER_RUNTIME=kubernetes against a throwaway PostgreSQL and Redis (test/harness), and the
// bare client's cost of the same work on the same control plane as the baseline.
//
// For each number of games it runs, alternating, the bare client (each game's state claim,
// Service and Pod, the Pod from the adapter's own kube.Kube.Pod, until every Pod runs) and RTM
// (start jobs added to runtime:start_jobs as Lobby adds them, until every job has its result),
// each in a fresh namespace that is emptied afterwards. Of RTM it also records the answers per
// request id, the Pods per node, its RSS and CPU, the API requests it made (its own counter,
// rtmanager_kube_api_requests), the requests it makes at rest, and a full reconcile pass (SIGHUP,
// and the boot pass of a restart). It prints one table with each target's pass or miss and writes
// its section of docs/benchmarks.md (between the bench-k8s markers, leaving the rest of the file
// as it is).
//
// Flags: -quick (200 games, one round, a 20-s rest window, no document); -games 1000,10000;
// -rounds (per number of games up to 2,000; larger numbers run once); -rtm-env K=V,… (knobs,
// for a diagnosis: no document); -provisioner (claims bound by test/k8senv's provisioner while
// the runs are timed, instead of before: no document); -goroutines (RTM's goroutines every
// second of a burst, for a diagnosis: no document); -profile N (RTM's CPU profile over the first N
// seconds of a burst and PostgreSQL's statements, for a diagnosis: no document); -keep; -out.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// params are the sizes of one run.
type params struct {
	games        []int
	rounds       int           // rounds per number of games up to manyGames
	nodes        int           // kwok nodes
	rest         time.Duration // the at-rest window
	calib        []int         // concurrencies the bare client is calibrated at (first round)
	provisioner  bool          // the state claims are bound by test/k8senv's provisioner during the runs
	rtmOnly      bool          // no bare client (a diagnosis run)
	goroutines   bool          // RTM's goroutines every second of a burst, beside its timeline (a diagnosis run)
	profile      int           // seconds of RTM's CPU profile per burst, with PostgreSQL's statements (a diagnosis run)
	keep         bool
	rtmEnv       map[string]string
	out          string
	writeDocFile bool
}

// manyGames: a number of games above it runs one round.
const manyGames = 2000

func (p params) roundsOf(n int) int {
	if n > manyGames {
		return 1
	}
	return p.rounds
}

func main() {
	quick := flag.Bool("quick", false, "200 games, one round, a 20-s rest window, no document (for development)")
	games := flag.String("games", "", "numbers of games, comma-separated (default 1000,10000)")
	rounds := flag.Int("rounds", 0, "rounds per number of games up to 2,000 (default 5; larger numbers run once)")
	nodes := flag.Int("nodes", 100, "kwok nodes")
	rest := flag.Duration("rest", 0, "the at-rest window (default 60s)")
	keep := flag.Bool("keep", false, "keep the work dirs (RTM's logs; the control plane's with RTM_K8SENV_KEEP=1)")
	rtmEnv := flag.String("rtm-env", "", "extra RTM environment, K=V,K=V (a diagnosis run: no document)")
	provisioner := flag.Bool("provisioner", false, "leave the state claims to test/k8senv's provisioner during the runs (one at a time, ~40/s: its limit, not RTM's; no document)")
	rtmOnly := flag.Bool("rtm-only", false, "RTM's rounds alone, no bare client (a diagnosis run: no document)")
	goroutines := flag.Bool("goroutines", false, "write RTM's goroutines (pprof, debug=1) every second of each burst to the work dir, beside the timeline (a diagnosis run: no document; with -keep)")
	profile := flag.Int("profile", 0, "take a CPU profile of RTM over the first N seconds of each burst and PostgreSQL's statements (pg_stat_statements) over the whole burst, into the work dir (a diagnosis run: no document; with -keep)")
	out := flag.String("out", "", "where to write the section (default docs/benchmarks.md; none with -quick, -games or -rtm-env)")
	flag.Parse()

	p := params{games: []int{1000, 10000}, rounds: 5, nodes: *nodes, rest: time.Minute, calib: []int{64, 256},
		keep: *keep, out: "docs/benchmarks.md", writeDocFile: true}
	if *quick {
		p.games, p.rounds, p.rest, p.calib, p.writeDocFile = []int{200}, 1, 20*time.Second, []int{256}, false
	}
	if *games != "" {
		var err error
		if p.games, err = harness.Counts(*games); err != nil {
			fmt.Fprintf(os.Stderr, "benchk8s: -games: %v\n", err)
			os.Exit(2)
		}
		p.writeDocFile = false
	}
	if *rounds > 0 {
		p.rounds = *rounds
	}
	if *rest > 0 {
		p.rest = *rest
	}
	if *rtmEnv != "" {
		p.rtmEnv, p.writeDocFile = harness.EnvList(*rtmEnv), false
	}
	if *provisioner {
		p.provisioner, p.writeDocFile = true, false
	}
	if *rtmOnly {
		p.rtmOnly, p.writeDocFile = true, false
	}
	if *goroutines {
		p.goroutines, p.writeDocFile = true, false
	}
	if *profile > 25 {
		// RTM's internal listener is read with a 30-s client timeout (harness.Proc).
		fmt.Fprintln(os.Stderr, "benchk8s: -profile: at most 25 seconds")
		os.Exit(2)
	}
	if *profile > 0 {
		p.profile, p.writeDocFile = *profile, false
	}
	if *out != "" {
		p.out, p.writeDocFile = *out, true
	}
	ctx, stop := harness.SignalContext()
	defer stop()
	os.Exit(run(ctx, p))
}

func run(ctx context.Context, p params) int {
	r := &report{Run: harness.Run{Began: time.Now()}, params: p, nodes: p.nodes}
	w := &world{}
	defer w.close()
	if err := setUp(ctx, w, p); err != nil {
		harness.Logf("set-up failed: %v", err)
		return 1
	}
	r.versions, r.launch = w.versions, w.kube.Timings().Ready
	var ok bool
	if r.Cleanup, ok = harness.Finish(measure(ctx, w, p, r), "benchmark", w.close); !ok {
		return 1
	}
	r.Done(w.Root)
	return r.Report(r.rows(), spreadTitle, p.writeDocFile, func() bool { return harness.WriteSection(w.Root, p.out, "bench-k8s", r.markdown()) })
}

// measure runs every number of games: the bare client and RTM alternating, round by round.
func measure(ctx context.Context, w *world, p params, r *report) error {
	conc := 0 // the bare client's, calibrated on the first number of games
	for _, n := range p.games {
		if conc == 0 && !p.rtmOnly {
			var err error
			if conc, err = w.calibrate(ctx, r, n, p.calib); err != nil {
				return err
			}
		}
		sz := &sizeResult{n: n, concurrency: conc}
		r.sizes = append(r.sizes, sz)
		rounds := p.roundsOf(n)
		for i := range rounds {
			// Which side goes first alternates, so that a drift of the host's load falls on both.
			bare := func() error {
				return r.Phases.Run(fmt.Sprintf("%d games, round %d: bare client", n, i+1), func() error {
					b, err := w.bareRun(ctx, n, sz.concurrency, fmt.Sprintf("bare-%d-%d", n, i+1))
					if err == nil {
						sz.bare = append(sz.bare, b)
					}
					return err
				})
			}
			withRTM := func() error {
				last := i == rounds-1
				return r.Phases.Run(fmt.Sprintf("%d games, round %d: RTM", n, i+1), func() error {
					x, err := w.rtmRun(ctx, p, n, i+1, last)
					if x != nil {
						sz.rtm = append(sz.rtm, x)
					}
					return err
				})
			}
			first, second := bare, withRTM
			if i%2 == 1 {
				first, second = withRTM, bare
			}
			if p.rtmOnly {
				first, second = withRTM, func() error { return nil }
			}
			if err := first(); err != nil {
				return err
			}
			if err := second(); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}
