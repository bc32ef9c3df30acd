package sources

import (
	"context"
	"log/slog"
	"sync"
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
	Destroyed(gameID, containerID string)
	// Reset: the stream ended, events are being missed; Resubscribed: a stream follows again.
	Reset()
	Resubscribed()
}

// DockerEvents is the dockerevents worker: it turns each event of an owned container into its
// game id on the queue, so drift under a running RTM is handled at once. When the stream breaks
// (a daemon restart) it marks the cache unsynced at once (reconciles inspect instead of trusting
// it), reconnects with backoff and, since events were missed, relists and enqueues every known
// game once connected again. A relist that fails is logged and retried with backoff, while the
// stream is followed, until it succeeds or the stream ends.
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
		// boot pass listed before this stream existed; a broken stream lost some). The first
		// attempt comes before any event is handled, so that a die applies to a listed entry.
		d.Cache.Resubscribed()
		var relisting sync.WaitGroup
		if !d.relist(ctx, first) {
			relisting.Add(1)
			go func(first bool) {
				defer relisting.Done()
				d.relistUntilDone(sctx, first)
			}(first)
		}
		first = false
		connected := time.Now()
		err := d.follow(sctx, events, errs)
		d.Cache.Reset() // from now until the next subscription, events are missed
		cancel()
		relisting.Wait()
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

// relist lists every game once, refreshing the cache, and enqueues them; it reports whether
// it did, logging why not (unless ctx ended).
func (d *DockerEvents) relist(ctx context.Context, first bool) bool {
	ids, err := AllGames(ctx, d.Lister, d.Store, d.Cache)
	if err != nil {
		if ctx.Err() == nil {
			d.Log.Warn("relist after subscribing to docker events failed, retrying", "worker", "dockerevents", "error", err)
		}
		return false
	}
	for _, id := range ids {
		d.Enqueue(id)
	}
	if !first {
		d.Log.Info("docker events stream reconnected", "worker", "dockerevents", "games", len(ids))
	}
	return true
}

// relistUntilDone retries relist with backoff until it succeeds or ctx (the stream's) ends.
func (d *DockerEvents) relistUntilDone(ctx context.Context, first bool) {
	b := newBackoff()
	for sleep(ctx, b.next()) {
		if d.relist(ctx, first) {
			return
		}
	}
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
			case "destroy":
				d.Cache.Destroyed(ev.GameID, ev.ContainerID)
				d.Enqueue(ev.GameID)
			case "start", "stop", "pause", "unpause", "create", "rename", "health_status":
				d.Cache.Invalidate(ev.GameID)
				d.Enqueue(ev.GameID)
			}
		}
	}
}
