package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/galaxy-platform/rtmanager/test/testenv"

	rtm "github.com/galaxy-platform/rtmanager"
)

// eventFeed is an event stream the test writes to.
type eventFeed struct{ ch chan rtm.DockerEvent }

func (f eventFeed) Events(ctx context.Context) (<-chan rtm.DockerEvent, <-chan error) {
	return f.ch, make(chan error)
}

type listed []rtm.Container

func (l listed) List(context.Context) ([]rtm.Container, error) { return l, nil }

// listedGames is a known for Informer.Run: the games of the listed containers.
func listedGames(_ context.Context, list []rtm.Container) ([]string, error) {
	ids := make([]string, 0, len(list))
	for _, c := range list {
		ids = append(ids, c.GameID)
	}
	return ids, nil
}

// handled records the game ids an informer hands over.
type handled struct {
	mu  sync.Mutex
	ids []string
}

func (h *handled) handle(id string) { h.mu.Lock(); h.ids = append(h.ids, id); h.mu.Unlock() }

func (h *handled) count(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, got := range h.ids {
		if got == id {
			n++
		}
	}
	return n
}

func (h *handled) all() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ids)
}

// runInformer runs in until the test ends, and waits for it to return.
func runInformer(t testing.TB, in *Informer, handle func(string), known func(context.Context, []rtm.Container) ([]string, error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = in.Run(ctx, handle, known); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestInformer_Run_cacheByEvent(t *testing.T) {
	running := func(game, id string) rtm.Container {
		return rtm.Container{ID: id, GameID: game, Owned: true, State: rtm.StateRunning}
	}
	tests := []struct {
		name      string
		events    []rtm.DockerEvent
		wantKnown bool
		wantState rtm.ContainerState
		wantCode  int
	}{
		{name: "die of the known container sets it exited",
			events:    []rtm.DockerEvent{{Action: "kill", ExitCode: -1}, {Action: "die", ExitCode: 137}},
			wantKnown: true, wantState: rtm.StateExited, wantCode: 137},
		{name: "kill alone changes nothing",
			events:    []rtm.DockerEvent{{Action: "kill", ExitCode: -1}},
			wantKnown: true, wantState: rtm.StateRunning},
		{name: "oom then die leaves it to an inspection",
			events: []rtm.DockerEvent{{Action: "oom", ExitCode: -1}, {Action: "die", ExitCode: 137}}},
		{name: "die of another container leaves it to an inspection",
			events: []rtm.DockerEvent{{Action: "die", ContainerID: "old", ExitCode: 0}}},
		{name: "die without an exit code leaves it to an inspection",
			events: []rtm.DockerEvent{{Action: "die", ExitCode: -1}}},
		{name: "start after die leaves it to an inspection",
			events: []rtm.DockerEvent{{Action: "die", ExitCode: 0}, {Action: "start", ExitCode: -1}}},
		{name: "destroy leaves it to an inspection",
			events: []rtm.DockerEvent{{Action: "destroy", ExitCode: -1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := NewCache()
			feed := eventFeed{ch: make(chan rtm.DockerEvent)}
			var h handled
			runInformer(t, NewInformer(feed, listed{running("g1", "c1")}, cache, discard()), h.handle, listedGames)
			for _, ev := range tt.events {
				ev.GameID = "g1"
				if ev.ContainerID == "" {
					ev.ContainerID = "c1"
				}
				feed.ch <- ev
			}
			// An event of an invalid game id is dropped before the cache sees it.
			feed.ch <- rtm.DockerEvent{GameID: "../g1", ContainerID: "c1", Action: "start", ExitCode: -1}
			// An unbuffered send returns once the informer took the event; this one makes sure
			// the previous ones were handled.
			feed.ch <- rtm.DockerEvent{GameID: "g2", ContainerID: "c2", Action: "exec_start", ExitCode: -1}

			ct, _, known, exitedAt := cache.Lookup("g1")
			if known != tt.wantKnown {
				t.Fatalf("known = %v, want %v (%+v)", known, tt.wantKnown, ct)
			}
			if known && (ct.State != tt.wantState || ct.ExitCode != tt.wantCode) {
				t.Errorf("cached %s/%d, want %s/%d", ct.State, ct.ExitCode, tt.wantState, tt.wantCode)
			}
			if known && (tt.wantState == rtm.StateExited) == exitedAt.IsZero() {
				t.Errorf("exitedAt = %v for state %s", exitedAt, ct.State)
			}
			// The relist after subscribing hands g1 over once, then every event does.
			if got, want := h.all(), 1+len(tt.events); len(got) != want || h.count("g1") != want {
				t.Errorf("handed over %v, want %d times g1", got, want)
			}
		})
	}
}

// streams is an event source whose every subscription the test hands over; before each it
// calls onSubscribe (on the informer's goroutine).
type streams struct {
	next        chan stream
	onSubscribe func(n int)
	n           int
}

type stream struct {
	events chan rtm.DockerEvent
	errs   chan error
}

func (s *streams) Events(ctx context.Context) (<-chan rtm.DockerEvent, <-chan error) {
	s.n++
	s.onSubscribe(s.n)
	select {
	case st := <-s.next:
		return st.events, st.errs
	case <-ctx.Done():
		errs := make(chan error, 1)
		errs <- ctx.Err()
		return nil, errs
	}
}

// flakyLister fails its next fails calls.
type flakyLister struct {
	mu    sync.Mutex
	fails int
	list  []rtm.Container
}

func (l *flakyLister) List(context.Context) ([]rtm.Container, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fails > 0 {
		l.fails--
		return nil, fmt.Errorf("listing containers: %w", rtm.ErrUnavailable)
	}
	return l.list, nil
}

func TestInformer_Run_reconnectRelistsUntilItSucceeds(t *testing.T) {
	cache := NewCache()
	lister := &flakyLister{list: []rtm.Container{{ID: "c1", GameID: "g1", Owned: true, State: rtm.StateRunning}}}
	var knownAtResubscribe atomic.Bool
	src := &streams{next: make(chan stream), onSubscribe: func(n int) {
		if n == 2 {
			_, _, known, _ := cache.Lookup("g1")
			knownAtResubscribe.Store(known)
			lister.mu.Lock()
			lister.fails = 3 // the daemon is back for events, not yet for lists
			lister.mu.Unlock()
		}
	}}
	var logs testenv.SyncBuffer
	var handedOver atomic.Int32
	runInformer(t, NewInformer(src, lister, cache, slog.New(slog.NewTextHandler(&logs, nil))),
		func(string) { handedOver.Add(1) }, listedGames)

	first := stream{events: make(chan rtm.DockerEvent), errs: make(chan error, 1)}
	src.next <- first
	waitFor(t, "the first relist", func() bool { return handedOver.Load() == 1 })
	if _, _, known, _ := cache.Lookup("g1"); !known {
		t.Fatal("the cache is not synced after the first relist")
	}
	first.errs <- fmt.Errorf("docker event stream ended: %w", rtm.ErrUnavailable)
	second := stream{events: make(chan rtm.DockerEvent), errs: make(chan error, 1)}
	src.next <- second // handed over once the informer subscribes again
	if knownAtResubscribe.Load() {
		t.Error("while the events stream was down the cache claimed to know g1")
	}
	waitFor(t, "the relist after reconnecting succeeds", func() bool { return handedOver.Load() == 2 })
	// The games are handed over before the reconnection is logged.
	waitFor(t, "the reconnection logged", func() bool {
		return strings.Contains(logs.String(), "docker events stream reconnected")
	})
	if _, _, known, _ := cache.Lookup("g1"); !known {
		t.Error("the cache is not synced after the relist")
	}
	out := logs.String()
	if got := strings.Count(out, "relist after subscribing to docker events failed, retrying"); got != 3 {
		t.Errorf("%d failed relists logged, want 3:\n%s", got, out)
	}
	for _, line := range []string{"docker events stream ended, reconnecting", "docker events stream reconnected"} {
		if !strings.Contains(out, line) {
			t.Errorf("no %q logged:\n%s", line, out)
		}
	}
	// Events are followed while the relist is retried, and after it.
	second.events <- rtm.DockerEvent{GameID: "g1", ContainerID: "c1", Action: "start", ExitCode: -1}
	waitFor(t, "the event is handled", func() bool { return handedOver.Load() == 3 })
}

func TestInformer_Run_failingKnownIsRetried(t *testing.T) {
	cache := NewCache()
	feed := eventFeed{ch: make(chan rtm.DockerEvent)}
	var calls atomic.Int32
	known := func(ctx context.Context, list []rtm.Container) ([]string, error) {
		if calls.Add(1) == 1 {
			return nil, fmt.Errorf("listing active games: %w", rtm.ErrUnavailable)
		}
		return []string{"g1", "g2"}, nil
	}
	var h handled
	runInformer(t, NewInformer(feed, listed{}, cache, discard()), h.handle, known)
	waitFor(t, "the retried relist", func() bool { return len(h.all()) == 2 })
	if got := h.all(); !slices.Equal(got, []string{"g1", "g2"}) {
		t.Errorf("handed over %v, want [g1 g2] once", got)
	}
}

// TestInformer_Run_realDocker follows a real container through the adapter: the informer's
// first relist lists it, its die sets the cached entry exited with Docker's exit code, its
// destroy leaves the game to an inspection; each event hands the game over.
func TestInformer_Run_realDocker(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	c := startGame(t, d)
	id, gameID := c.ID, c.GameID
	cache := NewCache()
	var h handled
	runInformer(t, NewInformer(d, d, cache, discard()), h.handle, listedGames)

	waitFor(t, "the first relist", func() bool { return h.count(gameID) == 1 })
	if ct, found, known, _ := cache.Lookup(gameID); !known || !found || ct.ID != id || ct.State != rtm.StateRunning {
		t.Fatalf("after the first relist: %+v found=%v known=%v, want %s running", ct, found, known, id)
	}
	control(t, c.IP, "/control/exit?code=3")
	// A die is applied, then handed over.
	waitFor(t, "the die is handed over", func() bool { return h.count(gameID) == 2 })
	if ct, _, known, exitedAt := cache.Lookup(gameID); !known || ct.State != rtm.StateExited || ct.ExitCode != 3 || exitedAt.IsZero() {
		t.Errorf("after the die: %+v known=%v exitedAt=%v, want exited with code 3 from the event", ct, known, exitedAt)
	}
	handedAtDie := h.count(gameID)
	if err := d.Remove(ctx, id); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	waitFor(t, "the destroy is applied", func() bool {
		_, _, known, _ := cache.Lookup(gameID)
		return !known && h.count(gameID) > handedAtDie
	})
}

// TestInformer_Run_realDockerOOM: after an oom event the die of that container is not taken
// from the event; the game is left to an inspection, which reads State.OOMKilled.
func TestInformer_Run_realDockerOOM(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	gameID := newGameID(t)
	spec := newSpec(t, gameID)
	spec.MemoryBytes = 16 << 20
	id, c := createStarted(t, d, spec)
	events := subscribe(t, d)
	cache := NewCache()
	var h handled
	runInformer(t, NewInformer(d, d, cache, discard()), h.handle, listedGames)
	waitFor(t, "the first relist", func() bool { return h.count(gameID) == 1 })

	control(t, c.IP, "/control/oom")
	events.waitAction(t, id, "die")
	// The informer has its own subscription: wait until it handed over the oom and the die.
	waitFor(t, "the oom and the die are handed over", func() bool { return h.count(gameID) >= 3 })
	if ct, _, known, _ := cache.Lookup(gameID); known {
		t.Errorf("after oom and die the cache claims to know %+v; want an inspection", ct)
	}
	got, err := d.InspectID(ctx, id)
	if err != nil {
		t.Fatalf("InspectID: %v", err)
	}
	if !got.OOMKilled || got.ExitCode != 137 {
		t.Errorf("inspection after oom: %+v, want OOMKilled, 137", got)
	}
}

// TestInformer_List_fillsTheCache: a full pass lists through the informer, which installs the
// list in the cache (the cache is filled in one place); a failed list leaves the cache as it was.
func TestInformer_List_fillsTheCache(t *testing.T) {
	cache := NewCache()
	in := NewInformer(nil, listed{{GameID: "g1", ID: "c1", Owned: true, State: "running"}}, cache, discard())
	list, err := in.List(context.Background())
	if err != nil || len(list) != 1 {
		t.Fatalf("List: %v %v", list, err)
	}
	if ct, found, known, _ := cache.Lookup("g1"); !known || !found || ct.ID != "c1" {
		t.Fatalf("after List the cache has g1 as %+v found=%v known=%v", ct, found, known)
	}
	failing := NewInformer(nil, &flakyLister{fails: 1}, cache, discard())
	if _, err := failing.List(context.Background()); err == nil {
		t.Fatal("a failing list reported no error")
	}
	if _, found, known, _ := cache.Lookup("g1"); !known || !found {
		t.Fatal("a failed list changed the cache")
	}
}
