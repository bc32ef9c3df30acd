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
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
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
	rows, err := w.conn.Query(context.Background(), `SELECT fields FROM outbox WHERE stream = 'health_events' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := pgx.CollectRows(rows, pgx.RowTo[[]string])
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fs {
		for i := 0; i+1 < len(f); i += 2 {
			if f[i] == "event_type" {
				out = append(out, f[i+1])
			}
		}
	}
	return out
}

// waitFor waits until cond holds, failing the test after a while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		<-tick.C
	}
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

	waitFor(t, "five sweeps", func() bool { return w.count(&w.lists) >= 5 })
	if n := w.count(&w.inspects); n != 0 {
		t.Fatalf("%d inspections of a running, well container; want none", n)
	}
	if _, ok := enqueued.Load("g"); ok {
		t.Fatal("a well container was enqueued")
	}

	w.set(func(w *probeWorld) { w.container.State = rtm.StatePaused })
	waitFor(t, "inspect_unhealthy published", func() bool { return strings.Join(w.events(t), ",") == "inspect_unhealthy" })
	if w.count(&w.inspects) == 0 {
		t.Fatal("the paused container was reported without an inspection")
	}
	if _, ok := enqueued.Load("g"); !ok {
		t.Fatal("the paused container's game was not enqueued")
	}
	lists := w.count(&w.lists)
	waitFor(t, "five more sweeps", func() bool { return w.count(&w.lists) >= lists+5 })
	if got := w.events(t); len(got) != 1 {
		t.Fatalf("events %v: a lasting pause must be reported once", got)
	}

	w.set(func(w *probeWorld) { w.container.State = rtm.StateRunning })
	lists = w.count(&w.lists)
	waitFor(t, "sweeps after the resume", func() bool { return w.count(&w.lists) >= lists+3 })
	inspects := w.count(&w.inspects)
	lists = w.count(&w.lists)
	waitFor(t, "more sweeps", func() bool { return w.count(&w.lists) >= lists+3 })
	if n := w.count(&w.inspects); n != inspects {
		t.Fatalf("%d inspections after the container ran well again; want none", n-inspects)
	}
	// Docker's healthcheck, as the list's status line shows it, makes a suspect too.
	w.set(func(w *probeWorld) { w.container.Health = "unhealthy" })
	waitFor(t, "an inspection of the unhealthy container", func() bool { return w.count(&w.inspects) > inspects })
}
