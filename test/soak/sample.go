package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// point is one reading of RTM during the soak window; the per-interval figures cover the
// interval ending at this reading.
type point struct {
	t          time.Duration // since the window began
	rssMB      float64       // VmRSS
	heapMB     float64       // go_memstats_heap_inuse_bytes
	fds        int           // entries of /proc/<pid>/fd
	goroutines int           // first line of /debug/pprof/goroutine?debug=1
	threads    int64
	cpuPct     float64 // utime+stime over the interval, % of one core; NaN at the first reading
	probeOK    float64 // probes per second over the interval
	probeFail  float64
	running    float64 // records with status running
	queue      float64 // workqueue depth
	jobs       int64   // job results read over the interval
	rest       int64   // REST reads answered 200 over the interval
	restErr    int64   // REST reads answered otherwise
	restP99    float64 // ms
	load1      float64 // the machine's 1-minute load average
	others     string  // other test and benchmark processes on the machine
}

// sampler reads RTM's process and endpoints.
type sampler struct {
	p      *rtmProc
	tr     *traffic
	watch  *watcher
	began  time.Time
	prev   harness.ProcStat
	prevM  harness.PromText
	prevJ  int64
	prevOK int64
	prevE  int64
}

func (s *sampler) read(ctx context.Context) (point, string, error) {
	st, err := s.p.Stat()
	if err != nil {
		return point{}, "", err
	}
	fds, err := s.p.FDs()
	if err != nil {
		return point{}, "", err
	}
	gprof, g, err := s.p.GoroutineProfile(ctx)
	if err != nil {
		return point{}, "", err
	}
	m, err := s.p.Metrics(ctx)
	if err != nil {
		return point{}, "", err
	}
	pt := point{t: st.At.Sub(s.began), rssMB: float64(st.RSSKB) / 1024, fds: fds, goroutines: g,
		threads: st.Threads, heapMB: m.Sum("go_memstats_heap_inuse_bytes") / (1 << 20),
		running: m.Sum("rtmanager_runtime_records_by_status", `status="running"`),
		queue:   m.Sum("workqueue_depth", `name="game"`), cpuPct: math.NaN(), restP99: math.NaN(),
		load1: loadavg(), others: otherTests()}
	jobs, ok, bad := s.watch.resultsRead(), s.tr.restOK.Load(), s.tr.restErr.Load()
	if !s.prev.At.IsZero() {
		secs := st.At.Sub(s.prev.At).Seconds()
		pt.cpuPct = 100 * (st.CPU - s.prev.CPU).Seconds() / secs
		pt.probeOK = (m.Sum("rtmanager_probe_results_total", `result="ok"`) - s.prevM.Sum("rtmanager_probe_results_total", `result="ok"`)) / secs
		pt.probeFail = (m.Sum("rtmanager_probe_results_total", `result="failed"`) - s.prevM.Sum("rtmanager_probe_results_total", `result="failed"`)) / secs
		pt.jobs, pt.rest, pt.restErr = jobs-s.prevJ, ok-s.prevOK, bad-s.prevE
		if l := s.tr.drainLatencies(); len(l) > 0 {
			pt.restP99 = harness.Sample(l).Quantile(0.99)
		}
	} else {
		s.tr.drainLatencies()
	}
	s.prev, s.prevM, s.prevJ, s.prevOK, s.prevE = st, m, jobs, ok, bad
	return pt, gprof, nil
}

// loadavg is the first field of /proc/loadavg.
func loadavg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	v, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return v
}

// otherTests names the Go test binaries and benchmark runs on the machine besides us (from
// /proc/*/cmdline): the noise the curve has to be read against.
func otherTests() string {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	seen := map[string]bool{}
	self := strconv.Itoa(os.Getpid())
	for _, d := range dirs {
		if strings.Split(d, "/")[2] == self {
			continue
		}
		b, err := os.ReadFile(d)
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		base := filepath.Base(argv[0])
		switch {
		case strings.HasSuffix(base, ".test"):
			seen[base] = true
		case strings.Contains(string(b), "rtm-bench"):
			seen["rtm-bench"] = true
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// stackGrowth is a place where goroutines wait whose count grew between two profiles.
type stackGrowth struct {
	where         string
	before, after int
}

// parseGoroutines reads a /debug/pprof/goroutine?debug=1 profile into goroutine counts by the
// place they wait (see where), so that one site reached through different callers counts once.
func parseGoroutines(profile string) map[string]int {
	out := map[string]int{}
	// The header line runs straight into the first block.
	if strings.HasPrefix(profile, "goroutine profile:") {
		_, profile, _ = strings.Cut(profile, "\n")
	}
	for _, block := range strings.Split(profile, "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		head := strings.Fields(lines[0])
		if len(head) < 2 || head[1] != "@" {
			continue
		}
		n, err := strconv.Atoi(head[0])
		if err != nil {
			continue
		}
		var frames []string
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == "#" {
				fn := f[2]
				if i := strings.LastIndex(fn, "+0x"); i > 0 {
					fn = fn[:i]
				}
				frames = append(frames, fn)
			}
		}
		out[where(frames)] += n
	}
	return out
}

// where names a stack by its three innermost frames outside the runtime and the standard
// library's waiting primitives.
func where(frames []string) string {
	var keep []string
	for _, f := range frames {
		if strings.HasPrefix(f, "runtime.") || strings.HasPrefix(f, "internal/poll.") || strings.HasPrefix(f, "syscall.") ||
			strings.HasPrefix(f, "sync.") || strings.HasPrefix(f, "time.Sleep") {
			continue
		}
		keep = append(keep, f)
		if len(keep) == 3 {
			break
		}
	}
	if len(keep) == 0 {
		keep = frames[:min(2, len(frames))]
	}
	if len(keep) == 0 {
		return "(no frames: a goroutine being created or exiting)"
	}
	return strings.Join(keep, " ← ")
}

// goroutineDiff returns the places whose goroutine count grew from before to after, most growth
// first.
func goroutineDiff(before, after string) []stackGrowth {
	b, a := parseGoroutines(before), parseGoroutines(after)
	var out []stackGrowth
	for k, n := range a {
		if n > b[k] {
			out = append(out, stackGrowth{where: k, before: b[k], after: n})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		di, dj := out[i].after-out[i].before, out[j].after-out[j].before
		if di != dj {
			return di > dj
		}
		return out[i].where < out[j].where
	})
	return out
}

// saveProfiles writes the goroutine profile and a heap profile to dir with a suffix.
func saveProfiles(ctx context.Context, p *rtmProc, dir, suffix, goroutines string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "goroutine-"+suffix+".txt"), []byte(goroutines), 0o644); err != nil {
		return err
	}
	heap, err := p.Get(ctx, "/debug/pprof/heap")
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "heap-"+suffix+".pb.gz"), []byte(heap), 0o644)
}

// mean is the average of xs; NaN when empty.
func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var t float64
	for _, x := range xs {
		t += x
	}
	return t / float64(len(xs))
}

// slope is the least-squares slope of ys over xs (per unit of xs); NaN with fewer than two
// points.
func slope(xs, ys []float64) float64 {
	if len(xs) < 2 {
		return math.NaN()
	}
	mx, my := mean(xs), mean(ys)
	var num, den float64
	for i := range xs {
		num += (xs[i] - mx) * (ys[i] - my)
		den += (xs[i] - mx) * (xs[i] - mx)
	}
	if den == 0 {
		return math.NaN()
	}
	return num / den
}
