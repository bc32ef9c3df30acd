package main

import (
	"context"
	"fmt"
	"log/slog"
	goruntime "runtime"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5/pgxpool"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/sources"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/harness"
)

// fakeDocker is the Docker side of the stand-in runtime: n converged containers, kept in
// memory. Every call is counted; a converged pass must make none but the one List.
type fakeDocker struct {
	list  []rtm.Container
	byID  map[string]rtm.Container
	calls atomic.Int64
	lists atomic.Int64
}

func newFakeDocker(run string, n int) *fakeDocker {
	f := &fakeDocker{byID: map[string]rtm.Container{}}
	for i := 1; i <= n; i++ {
		g := standinGame(run, i)
		c := rtm.Container{ID: standinContainer(i), Name: rtm.ContainerName(g), GameID: g, Owned: true,
			ImageRef: engineImage, State: rtm.StateRunning, Created: time.Now()}
		f.list = append(f.list, c)
		f.byID[g] = c
	}
	return f
}

func standinGame(run string, i int) string { return fmt.Sprintf("%s-x%05d", run, i) }
func standinContainer(i int) string        { return fmt.Sprintf("c%063d", i) }

func (f *fakeDocker) List(context.Context) ([]rtm.Container, error) {
	f.lists.Add(1)
	return f.list, nil
}

func (f *fakeDocker) Inspect(_ context.Context, gameID string) (rtm.Container, error) {
	f.calls.Add(1)
	c, ok := f.byID[gameID]
	if !ok {
		return rtm.Container{}, rtm.ErrNotFound
	}
	return c, nil
}
func (f *fakeDocker) EnsureImage(context.Context, string) error { f.calls.Add(1); return nil }
func (f *fakeDocker) Create(context.Context, rtm.ContainerSpec) (string, error) {
	f.calls.Add(1)
	return "", fmt.Errorf("the stand-in runtime creates nothing")
}
func (f *fakeDocker) Start(context.Context, string) error { f.calls.Add(1); return nil }
func (f *fakeDocker) Stop(context.Context, string, time.Duration) error {
	f.calls.Add(1)
	return nil
}
func (f *fakeDocker) Remove(context.Context, string) error { f.calls.Add(1); return nil }

// countingLeaser counts lease attempts; a converged pass takes none.
type countingLeaser struct{ n atomic.Int64 }

func (l *countingLeaser) Acquire(ctx context.Context, _ string) (context.Context, func(), error) {
	l.n.Add(1)
	return ctx, func() {}, nil
}

type noDirs struct{}

func (noDirs) Ensure(string) (string, error) { return "", fmt.Errorf("no state dirs in the stand-in") }

type noProbe struct{}

func (noProbe) Probe(context.Context, rtm.Container, string) error { return nil }

// standinPoint is one stand-in pass size: durations (ms) and allocations per pass.
type standinPoint struct {
	n             int
	pass          harness.Sample // ms
	allocs, bytes harness.Sample // per pass
	games         int
	dockerCalls   int64 // besides the list, over all passes
	lists, leases int64
}

// measureStandin fills a database with n converged records, wires the real reconciler and
// controller to the real store and a stand-in runtime, and times full passes: the boot pass's
// AllGames (one list, one query) and InitialPass (16 workers).
func measureStandin(ctx context.Context, dsn, run string, n, passes int) (*standinPoint, error) {
	if err := store.Migrate(ctx, dsn); err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `TRUNCATE runtime_records`); err != nil {
		return nil, err
	}
	if _, err := pool.Exec(ctx, `INSERT INTO runtime_records (game_id, status, desired_state, desired_image_ref,
		current_image_ref, current_container_id, engine_endpoint, state_dir, generation, observed_generation)
		SELECT $1 || '-x' || lpad(i::text, 5, '0'), 'running', 'running', $2, $2, 'c' || lpad(i::text, 63, '0'),
			'http://galaxy-game-' || $1 || '-x' || lpad(i::text, 5, '0') || ':8080', '/nonexistent', 1, 1
		FROM generate_series(1, $3::int) AS i`, run, engineImage, n); err != nil {
		return nil, fmt.Errorf("inserting %d records: %w", n, err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE runtime_records`); err != nil {
		return nil, err
	}

	st, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	fake := newFakeDocker(run, n)
	cache := runtime.NewCache()
	informer := runtime.NewInformer(nil, fake, cache, nil) // lists only: the passes refill the cache through it
	leases := &countingLeaser{}
	log := slog.New(slog.DiscardHandler)
	rec, err := controllers.New(st, fake, leases, noDirs{}, noProbe{}, controllers.Options{
		Network: "standin", EnginePort: 8080, Cache: cache}, log, nil, nil)
	if err != nil {
		return nil, err
	}
	ctrl, err := controllers.NewController(rec, controllers.QueueOptions{Workers: 16}, logr.Discard())
	if err != nil {
		return nil, err
	}
	pt := &standinPoint{n: n}
	pass := func() (time.Duration, int, error) {
		t0 := time.Now()
		ids, err := sources.AllGames(ctx, informer, st)
		if err != nil {
			return 0, 0, err
		}
		if failed := ctrl.InitialPass(ctx, ids); failed != 0 {
			return 0, 0, fmt.Errorf("%d reconciles failed", failed)
		}
		return time.Since(t0), len(ids), nil
	}
	// One pass to warm the pool's connections and prepared statements.
	if _, _, err := pass(); err != nil {
		return nil, err
	}
	fake.calls.Store(0)
	fake.lists.Store(0)
	leases.n.Store(0)
	for i := 0; i < passes; i++ {
		goruntime.GC()
		var before, after goruntime.MemStats
		goruntime.ReadMemStats(&before)
		d, games, err := pass()
		goruntime.ReadMemStats(&after)
		if err != nil {
			return nil, err
		}
		pt.pass = append(pt.pass, ms(d))
		pt.allocs = append(pt.allocs, float64(after.Mallocs-before.Mallocs))
		pt.bytes = append(pt.bytes, float64(after.TotalAlloc-before.TotalAlloc))
		pt.games = games
	}
	pt.dockerCalls, pt.lists, pt.leases = fake.calls.Load(), fake.lists.Load(), leases.n.Load()
	if pt.games != n {
		return nil, fmt.Errorf("the pass looked at %d games, want %d", pt.games, n)
	}
	return pt, nil
}
