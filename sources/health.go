package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// HealthStore is what the inspector reads and writes.
type HealthStore interface {
	RunningGames(ctx context.Context) ([]rtm.RunningGame, error)
	CommitHealth(ctx context.Context, events []rtm.HealthEvent) error
}

// Inspector inspects one game's container.
type Inspector interface {
	Inspect(ctx context.Context, gameID string) (rtm.Container, error)
}

// InspectSweep is the inspector worker: every Interval it looks at each running game's
// container; Docker health unhealthy or a paused, restarting or dead state yields one
// inspect_unhealthy per transition, and the game is enqueued; a container that is gone or not the
// record's any more is enqueued for the reconciler to decide.
//
// With Lister, a sweep reads the state of every owned container from one list call and inspects
// only the containers whose listed state is not plainly running and well (or that the list does
// not show: it may trail the daemon by a moment), so a Docker host at rest sees one call per
// sweep whatever the number of engines. Without Lister every running game is inspected.
type InspectSweep struct {
	Interval    time.Duration
	Concurrency int
	Store       HealthStore
	Docker      Inspector
	Lister      Lister // may be nil
	Enqueue     func(gameID string)
	Log         *slog.Logger

	bad map[string]string // game id → container reported unhealthy
}

// Run sweeps until ctx ends.
func (s *InspectSweep) Run(ctx context.Context) error {
	if s.Concurrency <= 0 {
		s.Concurrency = 8
	}
	s.bad = map[string]string{}
	rtm.EveryRunningRound(ctx, s.Interval, s.Store.RunningGames, s.sweep, s.Log, "inspector", "inspect sweep failed")
	return nil
}

func (s *InspectSweep) sweep(ctx context.Context, games []rtm.RunningGame) error {
	rtm.ForgetStopped(s.bad, games)
	suspects, err := s.suspects(ctx, games)
	if err != nil {
		return err
	}
	type seen struct {
		g   rtm.RunningGame
		c   rtm.Container
		err error
	}
	out := make([]seen, len(suspects))
	var wg sync.WaitGroup
	sem := make(chan struct{}, s.Concurrency)
	for i, g := range suspects {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := s.Docker.Inspect(ctx, g.GameID)
			out[i] = seen{g: g, c: c, err: err}
		}()
	}
	wg.Wait()
	var events []rtm.HealthEvent
	for _, o := range out {
		if errors.Is(o.err, rtm.ErrNotFound) || o.err == nil && o.c.ID != o.g.ContainerID {
			s.Enqueue(o.g.GameID) // gone or replaced: the reconciler decides
			continue
		}
		if o.err != nil {
			continue
		}
		why := unhealthy(o.c)
		if why == "" {
			delete(s.bad, o.g.GameID)
			continue
		}
		if s.bad[o.g.GameID] == o.c.ID {
			continue
		}
		s.bad[o.g.GameID] = o.c.ID
		events = append(events, rtm.HealthEvent{GameID: o.g.GameID, Type: rtm.EventInspectUnhealthy, ContainerID: o.c.ID,
			DockerState: string(o.c.State), Message: why, ObservedAt: time.Now().UTC()})
		s.Enqueue(o.g.GameID)
	}
	if err := s.Store.CommitHealth(ctx, events); err != nil {
		for _, ev := range events {
			delete(s.bad, ev.GameID) // not reported: report it again next sweep
		}
		return err
	}
	for _, ev := range events {
		s.Log.Info("inspection found engine unhealthy", "worker", "inspector", "game_id", ev.GameID, "reason", ev.Message)
	}
	return nil
}

// suspects returns the games whose container must be inspected: all of them without Lister;
// with it, those whose container the list does not show as the record's, running and not
// unhealthy. A game the list shows well is well: what it may have reported before is forgotten.
func (s *InspectSweep) suspects(ctx context.Context, games []rtm.RunningGame) ([]rtm.RunningGame, error) {
	if s.Lister == nil {
		return games, nil
	}
	list, err := s.Lister.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	listed := make(map[string]rtm.Container, len(list))
	for _, c := range list {
		listed[c.ID] = c
	}
	var out []rtm.RunningGame
	for _, g := range games {
		c, ok := listed[g.ContainerID]
		if ok && c.GameID == g.GameID && c.Running() && unhealthy(c) == "" {
			delete(s.bad, g.GameID)
			continue
		}
		out = append(out, g)
	}
	return out, nil
}

func unhealthy(c rtm.Container) string {
	switch {
	case c.Health == "unhealthy":
		return "docker reports the container unhealthy"
	case c.State == rtm.StatePaused || c.State == rtm.StateRestarting || c.State == rtm.StateDead:
		return fmt.Sprintf("docker reports the container %s", c.State)
	}
	return ""
}
