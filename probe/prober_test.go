package probe_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/probe"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// probeWorld is a real store with one running game g (container c-g), a fake Docker that
// answers its inspections, and a fake engine whose answers the test sets.
type probeWorld struct {
	*testenv.OneGame // its Mutex guards the fields below too
	healthy          bool
	probed           []string // the IPs probed, in order
}

func newProbeWorld(t *testing.T) *probeWorld { return &probeWorld{OneGame: env.NewOneGame(t)} }

func (w *probeWorld) Probe(_ context.Context, c rtm.Container, _ string) error {
	w.Lock()
	defer w.Unlock()
	w.probed = append(w.probed, c.IP)
	if !w.healthy {
		return errors.New("connection refused")
	}
	return nil
}

func (w *probeWorld) set(fn func(w *probeWorld)) {
	w.Lock()
	defer w.Unlock()
	fn(w)
}

// run runs p until the test ends.
func (w *probeWorld) run(t *testing.T, p *probe.Prober) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// failingRounds fails chosen calls of CommitProbeRound without reaching the store.
type failingRounds struct {
	*store.Store
	mu    sync.Mutex
	calls int
	fail  map[int]bool // call numbers (1-based) to fail
}

func (f *failingRounds) CommitProbeRound(ctx context.Context, threshold int, outcomes []rtm.ProbeOutcome) ([]rtm.HealthEvent, error) {
	f.mu.Lock()
	f.calls++
	failed := f.fail[f.calls]
	f.mu.Unlock()
	if failed {
		return nil, errors.New("connection reset")
	}
	return f.Store.CommitProbeRound(ctx, threshold, outcomes)
}

// failNext makes the next n calls fail and returns the number of calls so far.
func (f *failingRounds) failNext(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := 1; i <= n; i++ {
		f.fail[f.calls+i] = true
	}
	return f.calls
}

func (f *failingRounds) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

func TestProber_Run_failedCommitLosesNoTransition(t *testing.T) {
	w := newProbeWorld(t)
	// The second round reaches the threshold, and its commit fails.
	st := &failingRounds{Store: w.Store, fail: map[int]bool{2: true}}
	w.run(t, &probe.Prober{Interval: 5 * time.Millisecond, Threshold: 2, Store: st, Docker: w, Probe: w,
		Log: slog.New(slog.DiscardHandler)})
	testenv.WaitFor(t, "probe_failed is published", func() bool { return len(w.HealthEvents(t)) > 0 })

	// The engine answers again; the round that sees it first cannot commit.
	w.set(func(w *probeWorld) { w.healthy = true })
	st.failNext(1)
	testenv.WaitFor(t, "probe_recovered is published", func() bool { return len(w.HealthEvents(t)) > 1 })
	n := st.count()
	testenv.WaitFor(t, "more rounds have run", func() bool { return st.count() > n+3 })
	if got := strings.Join(w.HealthEvents(t), " "); got != "probe_failed probe_recovered" {
		t.Fatalf("published %q, want one probe_failed then one probe_recovered", got)
	}
}

func TestProber_Run_addressFollowsContainerStart(t *testing.T) {
	tests := []struct {
		name  string
		marks func(c *runtime.Cache) probe.Containers
		// restart says, as the events stream would, that the container started again
		restart func(c *runtime.Cache)
	}{
		{name: "a start event moves the life mark",
			marks: func(c *runtime.Cache) probe.Containers { return c }, restart: func(c *runtime.Cache) { c.Invalidate("g") }},
		{name: "events missed while the stream was down",
			marks: func(c *runtime.Cache) probe.Containers { return c }, restart: func(c *runtime.Cache) {
				c.Reset()
				c.Resubscribed()
				c.Replace(c.Begin(), []rtm.Container{{ID: "c-g", GameID: "g", Owned: true, State: rtm.StateRunning}})
			}},
		{name: "without a cache every round inspects",
			marks: func(*runtime.Cache) probe.Containers { return nil }, restart: func(*runtime.Cache) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newProbeWorld(t)
			w.set(func(w *probeWorld) { w.healthy = true })
			cache := runtime.NewCache()
			cache.Replace(cache.Begin(), []rtm.Container{{ID: "c-g", GameID: "g", Owned: true, State: rtm.StateRunning}})
			w.run(t, &probe.Prober{Interval: 5 * time.Millisecond, Threshold: 2, Store: w.Store, Docker: w, Probe: w,
				Cache: tt.marks(cache), Log: slog.New(slog.DiscardHandler)})
			probes := func() int { w.Lock(); defer w.Unlock(); return len(w.probed) }
			testenv.WaitFor(t, "the engine is probed a few times", func() bool { return probes() >= 3 })
			w.set(func(w *probeWorld) {
				if tt.marks(cache) == nil && w.Inspects < len(w.probed) {
					t.Errorf("%d inspections for %d probes, want one a probe", w.Inspects, len(w.probed))
				}
				if tt.marks(cache) != nil && w.Inspects != 1 {
					t.Errorf("%d inspections of a container whose life did not change, want 1", w.Inspects)
				}
				// docker stop, then docker start: same container, another address
				w.Container.IP, w.Container.StartedAt = "10.0.0.2", time.Now()
			})
			tt.restart(cache)
			testenv.WaitFor(t, "the engine is probed at its new address", func() bool {
				w.Lock()
				defer w.Unlock()
				return w.probed[len(w.probed)-1] == "10.0.0.2"
			})
		})
	}
}

func TestProber_Run_listedAddressNeedsNoInspection(t *testing.T) {
	w := newProbeWorld(t)
	w.set(func(w *probeWorld) { w.healthy = true })
	cache := runtime.NewCache()
	// The informer's list carries the running container's address: no inspection at rest.
	cache.Replace(cache.Begin(), []rtm.Container{{ID: "c-g", GameID: "g", Owned: true, State: rtm.StateRunning, IP: "10.0.0.1"}})
	w.run(t, &probe.Prober{Interval: 5 * time.Millisecond, Threshold: 2, Store: w.Store, Docker: w, Probe: w,
		Cache: cache, Log: slog.New(slog.DiscardHandler)})
	probes := func() int { w.Lock(); defer w.Unlock(); return len(w.probed) }
	testenv.WaitFor(t, "the engine is probed a few times", func() bool { return probes() >= 3 })
	w.set(func(w *probeWorld) {
		if w.Inspects != 0 || w.probed[0] != "10.0.0.1" {
			t.Errorf("%d inspections, first probe at %q; want none, at the listed address", w.Inspects, w.probed[0])
		}
		w.Container.IP, w.Container.StartedAt = "10.0.0.2", time.Now()
	})
	// An event invalidates the entry: the next round inspects and probes the new address.
	cache.Invalidate("g")
	testenv.WaitFor(t, "the engine is probed at its new address", func() bool {
		w.Lock()
		defer w.Unlock()
		return w.probed[len(w.probed)-1] == "10.0.0.2"
	})
}

// At rest a round writes every request on its kept connection before it reads the answers: one
// connection an engine, every probe recorded, a failing engine reported.
func TestProber_Run_probesOnKeptConnectionsSendFirst(t *testing.T) {
	w := newProbeWorld(t)
	var (
		mu      sync.Mutex
		healthy = true
	)
	e := newEngine(t, func(rw http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if !healthy {
			rw.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	cache := runtime.NewCache()
	cache.Replace(cache.Begin(), []rtm.Container{{ID: "c-g", GameID: "g", Owned: true, State: rtm.StateRunning, IP: "127.0.0.1"}})
	h := probe.New(e.port, true, 5*time.Second)
	defer h.Close()
	w.run(t, &probe.Prober{Interval: 5 * time.Millisecond, Threshold: 2, Store: w.Store, Docker: w, Probe: h,
		Cache: cache, Log: slog.New(slog.DiscardHandler)})
	testenv.WaitFor(t, "the engine is probed a few times", func() bool { _, _, n := e.counts(); return n >= 5 })
	mu.Lock()
	healthy = false
	mu.Unlock()
	testenv.WaitFor(t, "probe_failed is published", func() bool { return len(w.HealthEvents(t)) > 0 })
	conns, _, _ := e.counts()
	w.set(func(w *probeWorld) {
		if conns != 1 || w.Inspects != 0 {
			t.Errorf("%d connections and %d inspections, want 1 and none", conns, w.Inspects)
		}
	})
}
