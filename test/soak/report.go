package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// Stability criteria of issue 10 item 5.
const (
	growthRel    = 0.10 // goroutines and fds: last third ≤ first third × (1+growthRel) …
	growthAbs    = 20.0 // … or first third + growthAbs, whichever is larger
	rssSlopeMax  = 1.0  // MB per minute after the warm-up
	growthShown  = 8    // goroutine stacks listed in the report
	problemShown = 15   // log messages listed
)

// report collects a run's results and renders them.
type report struct {
	p         params
	began     time.Time
	elapsed   time.Duration
	cleanup   time.Duration
	startup   time.Duration
	window    time.Duration
	baseAt    time.Duration // the reading the goroutine diff starts from
	machine   string
	commit    string
	goVer     string
	dockerVer string

	points    []point
	once      onceCheck
	growth    []stackGrowth
	health    map[string]int
	problems  map[string][2]int // WARN and ERROR lines by message: before the window, during it
	mutations []mutation
	failures  []string
	codes     map[string]int
	restAll   []float64

	churnSent, delivered2, churnSkipped, jobsFailed, jobsLost int64
	restOK, restErr, restDropped                              int64

	trends []trend
	checks []check
}

// trend is one series over the window.
type trend struct {
	name, unit  string
	first, last float64 // averages of the first and the last third of the readings
	slope       float64 // least squares, per minute, over the readings after the warm-up
	spark       string
}

// check is one criterion and its verdict.
type check struct {
	what, measured, target string
	pass                   bool
}

// evaluate computes the trends and the verdicts.
func (r *report) evaluate() {
	series := []struct {
		name, unit string
		v          func(point) float64
	}{
		{"goroutines", "", func(p point) float64 { return float64(p.goroutines) }},
		{"open fds", "", func(p point) float64 { return float64(p.fds) }},
		{"RSS", "MB", func(p point) float64 { return p.rssMB }},
		{"Go heap in use", "MB", func(p point) float64 { return p.heapMB }},
		{"threads", "", func(p point) float64 { return float64(p.threads) }},
		{"CPU", "%", func(p point) float64 { return p.cpuPct }},
	}
	n := len(r.points)
	k := max(1, n/3)
	for _, s := range series {
		var all, first, last, xs, ys []float64
		for i, p := range r.points {
			v := s.v(p)
			if math.IsNaN(v) {
				continue
			}
			all = append(all, v)
			if i < k {
				first = append(first, v)
			}
			if i >= n-k {
				last = append(last, v)
			}
			if p.t >= r.p.warmup {
				xs = append(xs, p.t.Minutes())
				ys = append(ys, v)
			}
		}
		r.trends = append(r.trends, trend{name: s.name, unit: s.unit, first: mean(first), last: mean(last),
			slope: slope(xs, ys), spark: sparkline(all)})
	}
	for _, t := range r.trends[:2] {
		limit := max(t.first*(1+growthRel), t.first+growthAbs)
		r.checks = append(r.checks, check{
			what:     t.name + ": last third vs first third",
			measured: fmt.Sprintf("%.0f → %.0f (%+.0f, %+.1f%%)", t.first, t.last, t.last-t.first, 100*(t.last/t.first-1)),
			target:   fmt.Sprintf("≤ %.0f (+%.0f%% or +%.0f)", limit, 100*growthRel, growthAbs),
			pass:     t.last <= limit,
		})
	}
	rss := r.trends[2]
	r.checks = append(r.checks, check{
		what:     fmt.Sprintf("RSS slope after the %s warm-up", fmtDur(r.p.warmup)),
		measured: fmt.Sprintf("%+.2f MB/min", rss.slope),
		target:   fmt.Sprintf("< %.0f MB/min", rssSlopeMax),
		pass:     rss.slope < rssSlopeMax,
	})
	o := r.once
	r.checks = append(r.checks, check{
		what: "every job got exactly one result",
		measured: fmt.Sprintf("%d request ids: %d missing, %d answered twice, %d unexpected",
			o.sent, len(o.missing), len(o.doubled), len(o.unexpected)),
		target: "0, 0, 0",
		pass:   o.ok(),
	})
}

func (r *report) missed() int {
	n := 0
	for _, c := range r.checks {
		if !c.pass {
			n++
		}
	}
	return n
}

func verdict(pass bool) string {
	if pass {
		return "PASS"
	}
	return "MISS"
}

// sparkline draws xs with eight block heights between their minimum and maximum.
func sparkline(xs []float64) string {
	if len(xs) == 0 {
		return ""
	}
	lo, hi := xs[0], xs[0]
	for _, x := range xs {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	const blocks = "▁▂▃▄▅▆▇█"
	rs := []rune(blocks)
	var b strings.Builder
	for _, x := range xs {
		i := 3
		if hi > lo {
			i = int(math.Round((x - lo) / (hi - lo) * 7))
		}
		b.WriteRune(rs[i])
	}
	return b.String()
}

// curve is the table of readings.
func (r *report) curve() string {
	var b strings.Builder
	b.WriteString("| t | RSS MB | heap MB | fds | goroutines | threads | CPU % | probes/s ok (failed) | running | queue | job results | REST 200 (other) | REST p99 ms | load | other tests |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, p := range r.points {
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %d | %d | %d | %s | %s | %.0f | %.0f | %s | %s | %s | %.2f | %s |\n",
			fmtDur(p.t), p.rssMB, p.heapMB, p.fds, p.goroutines, p.threads, num(p.cpuPct, "%.1f"),
			perInterval(p, fmt.Sprintf("%.0f (%.1f)", p.probeOK, p.probeFail)), p.running, p.queue,
			perInterval(p, fmt.Sprint(p.jobs)), perInterval(p, fmt.Sprintf("%d (%d)", p.rest, p.restErr)),
			num(p.restP99, "%.1f"), p.load1, dash(p.others))
	}
	return b.String()
}

// perInterval shows s, or a dash at the first reading (no interval before it).
func perInterval(p point, s string) string {
	if p.t < time.Second {
		return "–"
	}
	return s
}

func num(v float64, f string) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf(f, v)
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// verdicts is the table of criteria.
func (r *report) verdicts() string {
	var b strings.Builder
	b.WriteString("| criterion | measured | target | verdict |\n|---|---|---|---|\n")
	for _, c := range r.checks {
		fmt.Fprintf(&b, "| %s | %s | %s | **%s** |\n", c.what, c.measured, c.target, verdict(c.pass))
	}
	return b.String()
}

// trendTable is the trend of every series.
func (r *report) trendTable() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| series | first third avg | last third avg | change | slope after %s warm-up, per min | curve |\n", fmtDur(r.p.warmup))
	b.WriteString("|---|---:|---:|---:|---:|---|\n")
	for _, t := range r.trends {
		u := ""
		if t.unit != "" {
			u = " " + t.unit
		}
		fmt.Fprintf(&b, "| %s | %.1f%s | %.1f%s | %+.1f%% | %+.2f%s | `%s` |\n",
			t.name, t.first, u, t.last, u, 100*(t.last/t.first-1), t.slope, u, t.spark)
	}
	return b.String()
}

// traffic describes what the window carried.
func (r *report) traffic() string {
	var b strings.Builder
	rest := harness.Sample(r.restAll)
	fmt.Fprintf(&b, "- Start/stop jobs on the %d-game pool: %d sent (%.2f/s), %d of them delivered twice with the same request_id; %d jobs answered failed (engines and pool), %d without a result within %s; %d ticks skipped because every pool game had a job in flight.\n",
		r.p.churn, r.churnSent, float64(r.churnSent)/r.window.Seconds(), r.delivered2, r.jobsFailed, r.jobsLost, jobTimeout, r.churnSkipped)
	fmt.Fprintf(&b, "- REST reads: %d answered 200 (%.1f/s), %d otherwise, %d dropped because all 16 readers were busy; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms.\n",
		r.restOK, float64(r.restOK)/r.window.Seconds(), r.restErr, r.restDropped,
		rest.Median(), rest.Quantile(0.99), rest.Max())
	if len(r.codes) > 0 {
		b.WriteString("  Non-200 answers: " + joinCounts(r.codes) + ".\n")
	}
	byKind := map[string][]mutation{}
	var kinds []string
	for _, m := range r.mutations {
		k := strings.Fields(m.kind)[0]
		if byKind[k] == nil {
			kinds = append(kinds, k)
		}
		byKind[k] = append(byKind[k], m)
	}
	for _, k := range kinds {
		ms := byKind[k]
		codes := map[string]int{}
		var durs []float64
		for _, m := range ms {
			c := fmt.Sprint(m.code)
			if m.errCode != "" {
				c += " " + m.errCode
			}
			codes[c]++
			durs = append(durs, m.duration.Seconds())
		}
		fmt.Fprintf(&b, "- REST %s of %s: %d, answered %s; %.1f s median, %.1f s max.\n",
			k, ms[0].game, len(ms), joinCounts(codes), harness.Sample(durs).Median(), harness.Sample(durs).Max())
	}
	if len(r.health) > 0 {
		b.WriteString("- Health events published during the window: " + joinCounts(r.health) + ".\n")
	}
	if len(r.failures) > 0 {
		b.WriteString("- Jobs answered failed:\n")
		for _, f := range r.failures[:min(len(r.failures), 10)] {
			b.WriteString("  - `" + f + "`\n")
		}
	}
	return b.String()
}

// joinCounts prints "k n, k n" sorted by key.
func joinCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s × %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// grew lists the goroutine stacks that grew and RTM's warning and error lines.
func (r *report) grew() string {
	var b strings.Builder
	if len(r.growth) == 0 {
		fmt.Fprintf(&b, "No place had more goroutines waiting at the last reading than at the first after the warm-up (t=%s).\n", fmtDur(r.baseAt))
	} else {
		fmt.Fprintf(&b, "Places with more goroutines waiting at the last reading (t=%s) than at the first reading after the warm-up (t=%s), from `/debug/pprof/goroutine?debug=1`, each stack named by its three innermost frames outside the runtime:\n\n",
			fmtDur(r.points[len(r.points)-1].t), fmtDur(r.baseAt))
		fmt.Fprintf(&b, "| t=%s | t=%s | where |\n|---:|---:|---|\n", fmtDur(r.baseAt), fmtDur(r.points[len(r.points)-1].t))
		for _, g := range r.growth[:min(len(r.growth), growthShown)] {
			fmt.Fprintf(&b, "| %d | %d | `%s` |\n", g.before, g.after, g.where)
		}
		if len(r.growth) > growthShown {
			fmt.Fprintf(&b, "\n(%d more places grew by less.)\n", len(r.growth)-growthShown)
		}
	}
	b.WriteString("\n")
	if len(r.problems) == 0 {
		b.WriteString("RTM logged no WARN or ERROR line during the run.\n")
	} else {
		type kv struct {
			k string
			n [2]int
		}
		var l []kv
		for k, n := range r.problems {
			l = append(l, kv{k, n})
		}
		sort.Slice(l, func(i, j int) bool {
			ti, tj := l[i].n[0]+l[i].n[1], l[j].n[0]+l[j].n[1]
			return ti > tj || ti == tj && l[i].k < l[j].k
		})
		b.WriteString("RTM's WARN and ERROR log lines, by message:\n\n| message | while the engines came up | during the window |\n|---|---:|---:|\n")
		for _, e := range l[:min(len(l), problemShown)] {
			fmt.Fprintf(&b, "| `%s` | %d | %d |\n", e.k, e.n[0], e.n[1])
		}
	}
	return b.String()
}

// terminal is what the soak prints at the end.
func (r *report) terminal() string {
	var b strings.Builder
	b.WriteString("\nReadings (the curve):\n\n" + r.curve())
	b.WriteString("\nTrends:\n\n" + r.trendTable())
	b.WriteString("\nTraffic:\n\n" + r.traffic())
	b.WriteString("\n" + r.grew())
	b.WriteString("\nVerdict:\n\n" + r.verdicts())
	fmt.Fprintf(&b, "\nrun time %s (engines up in %s, window %s, clean-up %s)\n",
		r.elapsed.Round(time.Second), r.startup.Round(100*time.Millisecond), r.window.Round(time.Second), r.cleanup.Round(time.Second))
	return b.String()
}

// markdown is docs/soak.md.
func (r *report) markdown() string {
	var b strings.Builder
	b.WriteString("# Soak\n\n")
	b.WriteString("Issue 10, item 5: *200 engines probed every second for 10 minutes with jobs and REST traffic: " +
		"goroutines, file descriptors and RSS stable (report the curve).* `make soak` (`go run ./test/soak`) " +
		"runs it and writes this file; everything below the method is the output of the last full-size run.\n\n")
	b.WriteString("## Method\n\n" + method + "\n")
	b.WriteString("## Run\n\n")
	fmt.Fprintf(&b, "- Date: %s\n", r.began.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "- Machine: %s\n", r.machine)
	fmt.Fprintf(&b, "- Commit: %s; %s; Docker %s\n", r.commit, r.goVer, r.dockerVer)
	fmt.Fprintf(&b, "- Parameters: `-engines %d -duration %s -sample %s -warmup %s -churn %d -job-rate %g -rest-rate %g -mutate-every %s -start-concurrency %d`\n",
		r.p.engines, r.p.duration, r.p.sample, r.p.warmup, r.p.churn, r.p.jobRate, r.p.restRate, r.p.mutateEvery, r.p.startConc)
	fmt.Fprintf(&b, "- %d engines up through start jobs in %s; window %s; run time %s (clean-up %s)\n",
		r.p.engines, r.startup.Round(100*time.Millisecond), r.window.Round(time.Second), r.elapsed.Round(time.Second), r.cleanup.Round(time.Second))
	quiet := true
	for _, p := range r.points {
		if p.others != "" {
			quiet = false
		}
	}
	if quiet {
		b.WriteString("- No other Go test binary or benchmark ran on the machine during the window.\n")
	} else {
		b.WriteString("- Other test binaries or benchmarks ran on the machine during the window (column *other tests*); CPU and latency figures carry their noise.\n")
	}
	b.WriteString("\n## Verdict\n\n" + r.verdicts())
	b.WriteString("\n## Trends\n\n" + r.trendTable())
	b.WriteString("\n## The curve\n\nOne reading every " + r.p.sample.String() + "; per-interval columns (CPU, probes, job results, REST) cover the interval ending at the reading.\n\n" + r.curve())
	b.WriteString("\n## Traffic\n\n" + r.traffic())
	b.WriteString("\n## What grew\n\n" + r.grew())
	return b.String()
}

// method is the fixed part of docs/soak.md.
const method = `Everything runs on one host: a throwaway PostgreSQL cluster and redis-server (test/testenv),
the Docker daemon, the rtmanager binary built from ./cmd/manager, a Docker network of its own, and
the stand-in engine (test/engine, FROM scratch) as rtm-soak/game:1.4.1 and :1.4.2
(testenv.BuildEngineImages). RTM runs with RTMANAGER_PROBE_INTERVAL=1s,
RTMANAGER_PROBE_TIMEOUT=500ms, RTMANAGER_INSPECT_INTERVAL=5s,
RTMANAGER_ALLOWED_IMAGE_REPOSITORIES=rtm-soak/game and RTMANAGER_PPROF=1, defaults elsewhere. The
soak removes RTM, every container on its network, the network and the servers at the end and on
Ctrl-C; a later run also removes what a killed run left behind.

1. **Engines.** ` + "`-engines`" + ` start jobs (image 1.4.1), at most ` + "`-start-concurrency`" + ` awaiting their
   result at a time; a failed start is retried once. These engines run, and are probed every
   second, for the whole window.
2. **Window.** For ` + "`-duration`" + `, steady traffic:
   - start and stop jobs at ` + "`-job-rate`" + ` per second over a separate pool of ` + "`-churn`" + ` games. A
     game's next job goes only after its previous result (start, stop, start…), and every start
     after a stop names the other image, so each start creates a new container (RTM's
     ` + "`replace`" + `) and each stop stops one. Every tenth job is added to its stream twice with the
     same request_id.
   - REST reads at ` + "`-rest-rate`" + ` per second, open loop from 16 readers, each a random engine and
     one of GET /runtimes/{id}, /runtimes/{id}/operations?limit=20, /runtimes/{id}/health and
     /runtimes?limit=100.
   - every ` + "`-mutate-every`" + `, as caller admin, alternately a REST patch of the first engine to its
     other version (1.4.1 ↔ 1.4.2) and a REST restart of the second.
3. **Readings.** As the traffic starts and every ` + "`-sample`" + `: RSS (VmRSS of /proc/<pid>/status), open
   file descriptors (entries of /proc/<pid>/fd), goroutines (first line of
   /debug/pprof/goroutine?debug=1), threads, CPU (utime+stime of /proc/<pid>/stat over the
   interval), and from /metrics the Go heap in use, probe results, running records and the
   workqueue depth; also the machine's load average and any other Go test binary or benchmark
   running (the noise to read the curve against).
4. **Checks.** After the window the traffic stops, the jobs in flight are awaited, and every
   request id sent (engines and pool) must have exactly one entry on runtime:job_results. The
   trend of each series compares the average of the first third of the readings with the last
   third, and fits a least-squares slope per minute over the readings after the warm-up
   (` + "`-warmup`" + `, at most a third of the window). Criteria: goroutines and open fds, last-third
   average at most +10% (or +20, whichever is larger) over the first third; RSS slope below
   1 MB/min after the warm-up; exactly one result per job. The goroutine profile of the first
   reading after the warm-up and that of the last reading are compared stack by stack
   (` + "`-profiles DIR`" + ` also keeps them, with heap profiles, for ` + "`go tool pprof -base`" + `).

Reading the curve: each running engine holds one probe connection (two goroutines and one fd in
RTM, kept alive between probes), so goroutines and fds follow the *running* column; the pool's
games come and go, so that column moves by a few. The periodic full pass
(RTMANAGER_RECONCILE_INTERVAL, 5 min ±10%) enqueues every game: a reading that falls inside it
shows a deep queue and, for a moment, more goroutines and fds.
`
