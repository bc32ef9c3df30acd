package sources_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/sources"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// probeWorld is a real store with one running game g (container c-g), a fake Docker that
// answers its inspections and lists.
type probeWorld struct {
	st   *store.Store
	conn *pgx.Conn

	mu        sync.Mutex
	container rtm.Container // what Inspect answers for g
	inspects  int
	lists     int
}

func newProbeWorld(t *testing.T) *probeWorld {
	t.Helper()
	ctx := context.Background()
	st, dsn := env.MustStore(t)
	conn := testenv.MustConn(t, dsn)
	if _, err := conn.Exec(ctx, `INSERT INTO runtime_records (game_id, status, desired_state, current_container_id,
		engine_endpoint) VALUES ('g', 'running', 'running', 'c-g', 'http://galaxy-game-g:8080')`); err != nil {
		t.Fatal(err)
	}
	return &probeWorld{st: st, conn: conn,
		container: rtm.Container{ID: "c-g", GameID: "g", Owned: true, State: rtm.StateRunning, IP: "10.0.0.1"}}
}

func (w *probeWorld) Inspect(_ context.Context, gameID string) (rtm.Container, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inspects++
	if gameID != "g" {
		return rtm.Container{}, rtm.ErrNotFound
	}
	return w.container, nil
}

// List answers as a list call does: g's container as Inspect would show it, without its IP.
func (w *probeWorld) List(context.Context) ([]rtm.Container, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lists++
	c := w.container
	c.IP = ""
	return []rtm.Container{c}, nil
}

func (w *probeWorld) set(fn func(w *probeWorld)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fn(w)
}

// events returns the published health events' types, in outbox order.
func (w *probeWorld) events(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, f := range testenv.OutboxFields(t, w.conn, "health_events") {
		out = append(out, f["event_type"])
	}
	return out
}

// count returns one of the world's counters, read under its lock.
func (w *probeWorld) count(n *int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return *n
}

// TestInspectSweep_Run_listsOnceAndInspectsOnlySuspects: at rest a sweep is one list call and no
// inspection; a container the list shows paused is inspected and reported once per transition.
func TestInspectSweep_Run_listsOnceAndInspectsOnlySuspects(t *testing.T) {
	w := newProbeWorld(t)
	var enqueued sync.Map
	sweep := &sources.InspectSweep{Interval: 5 * time.Millisecond, Store: w.st, Docker: w, Lister: w,
		Enqueue: func(id string) { enqueued.Store(id, true) }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sweep.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	testenv.WaitFor(t, "five sweeps", func() bool { return w.count(&w.lists) >= 5 })
	if n := w.count(&w.inspects); n != 0 {
		t.Fatalf("%d inspections of a running, well container; want none", n)
	}
	if _, ok := enqueued.Load("g"); ok {
		t.Fatal("a well container was enqueued")
	}

	w.set(func(w *probeWorld) { w.container.State = rtm.StatePaused })
	testenv.WaitFor(t, "inspect_unhealthy published", func() bool { return strings.Join(w.events(t), ",") == "inspect_unhealthy" })
	if w.count(&w.inspects) == 0 {
		t.Fatal("the paused container was reported without an inspection")
	}
	if _, ok := enqueued.Load("g"); !ok {
		t.Fatal("the paused container's game was not enqueued")
	}
	lists := w.count(&w.lists)
	testenv.WaitFor(t, "five more sweeps", func() bool { return w.count(&w.lists) >= lists+5 })
	if got := w.events(t); len(got) != 1 {
		t.Fatalf("events %v: a lasting pause must be reported once", got)
	}

	w.set(func(w *probeWorld) { w.container.State = rtm.StateRunning })
	lists = w.count(&w.lists)
	testenv.WaitFor(t, "sweeps after the resume", func() bool { return w.count(&w.lists) >= lists+3 })
	inspects := w.count(&w.inspects)
	lists = w.count(&w.lists)
	testenv.WaitFor(t, "more sweeps", func() bool { return w.count(&w.lists) >= lists+3 })
	if n := w.count(&w.inspects); n != inspects {
		t.Fatalf("%d inspections after the container ran well again; want none", n-inspects)
	}
	// Docker's healthcheck, as the list's status line shows it, makes a suspect too.
	w.set(func(w *probeWorld) { w.container.Health = "unhealthy" })
	testenv.WaitFor(t, "an inspection of the unhealthy container", func() bool { return w.count(&w.inspects) > inspects })
}

// waitFor waits until cond holds, failing the test after a while (testenv.WaitFor).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, cond)
}
