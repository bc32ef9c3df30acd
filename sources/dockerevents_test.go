package sources_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
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
