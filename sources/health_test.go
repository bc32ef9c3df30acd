package sources_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/sources"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// probeWorld is a real store with one running game g (container c-g), a fake Docker that
// answers its inspections and lists.
type probeWorld struct {
	*testenv.OneGame // its Mutex guards the fields below too
	lists            int
}

func newProbeWorld(t *testing.T) *probeWorld { return &probeWorld{OneGame: env.NewOneGame(t)} }

// List answers as a list call does: g's container as Inspect would show it, without its IP.
func (w *probeWorld) List(context.Context) ([]rtm.Container, error) {
	w.Lock()
	defer w.Unlock()
	w.lists++
	c := w.Container
	c.IP = ""
	return []rtm.Container{c}, nil
}

func (w *probeWorld) set(fn func(w *probeWorld)) {
	w.Lock()
	defer w.Unlock()
	fn(w)
}

// count returns one of the world's counters, read under its lock.
func (w *probeWorld) count(n *int) int {
	w.Lock()
	defer w.Unlock()
	return *n
}

// TestInspectSweep_Run_listsOnceAndInspectsOnlySuspects: at rest a sweep is one list call and no
// inspection; a container the list shows paused is inspected and reported once per transition.
func TestInspectSweep_Run_listsOnceAndInspectsOnlySuspects(t *testing.T) {
	w := newProbeWorld(t)
	var enqueued sync.Map
	sweep := &sources.InspectSweep{Interval: 5 * time.Millisecond, Store: w.Store, Docker: w, Lister: w,
		Enqueue: func(id string) { enqueued.Store(id, true) }, Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sweep.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	testenv.WaitFor(t, "five sweeps", func() bool { return w.count(&w.lists) >= 5 })
	if n := w.count(&w.Inspects); n != 0 {
		t.Fatalf("%d inspections of a running, well container; want none", n)
	}
	if _, ok := enqueued.Load("g"); ok {
		t.Fatal("a well container was enqueued")
	}

	w.set(func(w *probeWorld) { w.Container.State = rtm.StatePaused })
	testenv.WaitFor(t, "inspect_unhealthy published", func() bool { return strings.Join(w.HealthEvents(t), ",") == "inspect_unhealthy" })
	if w.count(&w.Inspects) == 0 {
		t.Fatal("the paused container was reported without an inspection")
	}
	if _, ok := enqueued.Load("g"); !ok {
		t.Fatal("the paused container's game was not enqueued")
	}
	lists := w.count(&w.lists)
	testenv.WaitFor(t, "five more sweeps", func() bool { return w.count(&w.lists) >= lists+5 })
	if got := w.HealthEvents(t); len(got) != 1 {
		t.Fatalf("events %v: a lasting pause must be reported once", got)
	}

	w.set(func(w *probeWorld) { w.Container.State = rtm.StateRunning })
	lists = w.count(&w.lists)
	testenv.WaitFor(t, "sweeps after the resume", func() bool { return w.count(&w.lists) >= lists+3 })
	inspects := w.count(&w.Inspects)
	lists = w.count(&w.lists)
	testenv.WaitFor(t, "more sweeps", func() bool { return w.count(&w.lists) >= lists+3 })
	if n := w.count(&w.Inspects); n != inspects {
		t.Fatalf("%d inspections after the container ran well again; want none", n-inspects)
	}
	// Docker's healthcheck, as the list's status line shows it, makes a suspect too.
	w.set(func(w *probeWorld) { w.Container.Health = "unhealthy" })
	testenv.WaitFor(t, "an inspection of the unhealthy container", func() bool { return w.count(&w.Inspects) > inspects })
}

// waitFor waits until cond holds, failing the test after a while (testenv.WaitFor).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, cond)
}
