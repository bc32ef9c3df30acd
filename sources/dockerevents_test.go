package sources_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/sources"
)

// eventFeed is an event stream the test writes to.
type eventFeed struct{ ch chan rtm.DockerEvent }

func (f eventFeed) Events(ctx context.Context) (<-chan rtm.DockerEvent, <-chan error) {
	return f.ch, make(chan error)
}

type listed []rtm.Container

func (l listed) List(context.Context) ([]rtm.Container, error) { return l, nil }

type noRecords struct{}

func (noRecords) ActiveGameIDs(context.Context) ([]string, error) { return nil, nil }

func TestDockerEvents_Run_cacheByEvent(t *testing.T) {
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := runtime.NewCache()
			feed := eventFeed{ch: make(chan rtm.DockerEvent)}
			var mu sync.Mutex
			var enqueued []string
			d := &sources.DockerEvents{Docker: feed, Lister: listed{running("g1", "c1")}, Store: noRecords{},
				Cache: cache, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Enqueue: func(id string) { mu.Lock(); enqueued = append(enqueued, id); mu.Unlock() }}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { _ = d.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			for _, ev := range tt.events {
				ev.GameID = "g1"
				if ev.ContainerID == "" {
					ev.ContainerID = "c1"
				}
				feed.ch <- ev
			}
			// An unbuffered send returns once the worker took the event; this one makes sure the
			// previous one was handled.
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
			mu.Lock()
			defer mu.Unlock()
			// The relist after subscribing enqueues g1 once, then every event does.
			if want := 1 + len(tt.events); len(enqueued) != want {
				t.Errorf("enqueued %v, want %d times g1", enqueued, want)
			}
		})
	}
}

// streams is an event source whose every subscription the test hands over; before each it
// calls onSubscribe (on the worker's goroutine).
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

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestDockerEvents_Run_reconnectRelistsUntilItSucceeds(t *testing.T) {
	cache := runtime.NewCache()
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
	var logs syncBuffer
	var enqueued atomic.Int32
	d := &sources.DockerEvents{Docker: src, Lister: lister, Store: noRecords{}, Cache: cache,
		Log: slog.New(slog.NewTextHandler(&logs, nil)), Enqueue: func(string) { enqueued.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	first := stream{events: make(chan rtm.DockerEvent), errs: make(chan error, 1)}
	src.next <- first
	waitFor(t, "the first relist", func() bool { return enqueued.Load() == 1 })
	if _, _, known, _ := cache.Lookup("g1"); !known {
		t.Fatal("the cache is not synced after the first relist")
	}
	first.errs <- fmt.Errorf("docker event stream ended: %w", rtm.ErrUnavailable)
	second := stream{events: make(chan rtm.DockerEvent), errs: make(chan error, 1)}
	src.next <- second // handed over once the worker subscribes again
	if knownAtResubscribe.Load() {
		t.Error("while the events stream was down the cache claimed to know g1")
	}
	waitFor(t, "the relist after reconnecting succeeds", func() bool { return enqueued.Load() == 2 })
	if _, _, known, _ := cache.Lookup("g1"); !known {
		t.Error("the cache is not synced after the relist")
	}
	if got := strings.Count(logs.String(), "relist after subscribing to docker events failed"); got != 3 {
		t.Errorf("%d failed relists logged, want 3:\n%s", got, logs.String())
	}
	// Events are followed while the relist is retried, and after it.
	second.events <- rtm.DockerEvent{GameID: "g1", ContainerID: "c1", Action: "start", ExitCode: -1}
	waitFor(t, "the event is handled", func() bool { return enqueued.Load() == 3 })
}
