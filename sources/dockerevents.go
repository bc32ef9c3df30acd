package sources

import (
	"context"
	"log/slog"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// EventStream subscribes to Docker events of owned containers. The error channel yields once
// when the stream ends.
type EventStream interface {
	Events(ctx context.Context) (<-chan rtm.DockerEvent, <-chan error)
}

// EventCache is the reconciler's container cache, as events invalidate it (and die events
// update it).
type EventCache interface {
	ListCache
	Invalidate(gameID string)
	Exited(gameID, containerID string, exitCode int, at time.Time) bool
	SawOOM(gameID, containerID string)
	Reset()
}

// DockerEvents is the dockerevents worker: it turns each event of an owned container into its
// game id on the queue, so drift under a running RTM is handled at once. When the stream breaks
// (a daemon restart) it reconnects with backoff and, since events were missed, enqueues every
// known game once connected again.
type DockerEvents struct {
	Docker  EventStream
	Lister  Lister
	Store   ActiveGames
	Cache   EventCache
	Enqueue func(gameID string)
	Log     *slog.Logger
}

// Run follows the event stream until ctx ends.
func (d *DockerEvents) Run(ctx context.Context) error {
	b := newBackoff()
	first := true
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		events, errs := d.Docker.Events(sctx)
		// Like an informer, list after every (re)subscription: events before it were missed (the
		// boot pass listed before this stream existed; a broken stream lost some).
		d.Cache.Reset()
		if ids, err := AllGames(ctx, d.Lister, d.Store, d.Cache); err == nil {
			for _, id := range ids {
				d.Enqueue(id)
			}
			if !first {
				d.Log.Info("docker events stream reconnected", "worker", "dockerevents", "games", len(ids))
			}
		}
		first = false
		connected := time.Now()
		err := d.follow(sctx, events, errs)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(connected) > 30*time.Second {
			b.reset()
		}
		wait := b.next()
		d.Log.Warn("docker events stream ended, reconnecting", "worker", "dockerevents", "error", err, "retry_in", wait.String())
		if !sleep(ctx, wait) {
			return nil
		}
	}
	return nil
}

func (d *DockerEvents) follow(ctx context.Context, events <-chan rtm.DockerEvent, errs <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if ev.GameID == "" || rtm.ValidateGameID(ev.GameID) != nil {
				continue
			}
			switch ev.Action {
			case "die":
				// The event says what an inspection would, and on Docker 20.10 an inspection
				// right after it waits for the daemon's clean-up of the container: record it.
				// (Exited invalidates the game when it cannot apply the event.)
				if ev.ExitCode < 0 {
					d.Cache.Invalidate(ev.GameID)
				} else {
					d.Cache.Exited(ev.GameID, ev.ContainerID, ev.ExitCode, time.Now())
				}
				d.Enqueue(ev.GameID)
			case "kill":
				// A signal changes nothing by itself; the die that may follow does.
				d.Enqueue(ev.GameID)
			case "oom":
				d.Cache.SawOOM(ev.GameID, ev.ContainerID)
				d.Cache.Invalidate(ev.GameID)
				d.Enqueue(ev.GameID)
			case "start", "destroy", "stop", "pause", "unpause", "create", "rename", "health_status":
				d.Cache.Invalidate(ev.GameID)
				d.Enqueue(ev.GameID)
			}
		}
	}
}
