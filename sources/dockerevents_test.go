package sources_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
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

// flakyActive fails its first fails calls, then lists ids.
type flakyActive struct {
	fails atomic.Int32
	ids   []string
}

func (a *flakyActive) ActiveGameIDs(context.Context) ([]string, error) {
	if a.fails.Add(-1) >= 0 {
		return nil, fmt.Errorf("listing active games: %w", rtm.ErrUnavailable)
	}
	return a.ids, nil
}

// enqueued records the game ids a worker enqueues.
type enqueued struct {
	mu  sync.Mutex
	ids []string
}

func (e *enqueued) enqueue(id string) { e.mu.Lock(); e.ids = append(e.ids, id); e.mu.Unlock() }

func (e *enqueued) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.ids)
}

// TestDockerEvents_Run_enqueuesWhatTheInformerHandsOver runs the worker on the runtime's
// informer: after the relist every game of AllGames is enqueued (the records' and the owned
// containers', a failing record query failing the relist, which is retried), then the game of
// each event the informer applied, and nothing for an event it ignores.
func TestDockerEvents_Run_enqueuesWhatTheInformerHandsOver(t *testing.T) {
	list := fakeLister{{ID: "c2", GameID: "g2", Owned: true, State: rtm.StateRunning},
		{ID: "c1", GameID: "g1", Owned: true, State: rtm.StateRunning}, {ID: "x", GameID: "other", Owned: false}}
	store := &flakyActive{ids: []string{"g1", "g3"}}
	store.fails.Store(1)
	cache := runtime.NewCache()
	feed := eventFeed{ch: make(chan rtm.DockerEvent)}
	var q enqueued
	d := &sources.DockerEvents{Store: store, Enqueue: q.enqueue,
		Informer: runtime.NewInformer(feed, list, cache, slog.New(slog.DiscardHandler))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "the relist is retried", func() bool { return len(q.all()) == 3 })
	got := q.all()
	slices.Sort(got)
	if !slices.Equal(got, []string{"g1", "g2", "g3"}) {
		t.Fatalf("after the relist enqueued %v, want g1 g2 g3 once each", got)
	}
	feed.ch <- rtm.DockerEvent{GameID: "g2", ContainerID: "c2", Action: "exec_start", ExitCode: -1}
	feed.ch <- rtm.DockerEvent{GameID: "g2", ContainerID: "c2", Action: "die", ExitCode: 2}
	// An unbuffered send returns once the informer took the event; this one makes sure the
	// previous ones were handled.
	feed.ch <- rtm.DockerEvent{GameID: "g1", ContainerID: "c1", Action: "exec_start", ExitCode: -1}
	if got := q.all()[3:]; !slices.Equal(got, []string{"g2"}) {
		t.Errorf("events enqueued %v, want g2 once (its die)", got)
	}
	if ct, _, known, _ := cache.Lookup("g2"); !known || ct.State != rtm.StateExited || ct.ExitCode != 2 {
		t.Errorf("the die was not applied to the cache: %+v known=%v", ct, known)
	}
}
