package runtime

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// EventSource subscribes to the Docker events of owned containers, as Docker.Events does: the
// error channel yields once when the stream ends.
type EventSource interface {
	Events(ctx context.Context) (<-chan rtm.DockerEvent, <-chan error)
}

// ContainerLister lists every owned container with one Docker call, as Docker.List does.
type ContainerLister interface {
	List(ctx context.Context) ([]rtm.Container, error)
}

// Informer keeps a Cache current the way a Kubernetes informer keeps its store: it follows the
// Docker events of owned containers and applies each to the cache itself, and it fills the cache
// from a List call after every (re)subscription, since events before it were missed. Whoever
// runs it learns which games changed (Run's handle), not how: the reconciler reads the cache.
type Informer struct {
	events EventSource
	lister ContainerLister
	cache  *Cache
	log    *slog.Logger
}

// NewInformer returns an informer that keeps cache current from events (the subscription) and
// lister (the relists); log (nil: discarded) receives its warnings and reconnections.
func NewInformer(events EventSource, lister ContainerLister, cache *Cache, log *slog.Logger) *Informer {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Informer{events: events, lister: lister, cache: cache, log: log}
}

// informerHandlers are what Run hands its findings to.
type informerHandlers struct {
	handle func(gameID string)
	known  func(ctx context.Context, listed []rtm.Container) ([]string, error)
}

// Run follows the event stream until ctx ends, then returns nil.
//
// Each event of an owned container whose game id is valid is applied to the cache (a die with
// its exit code sets the entry exited, Cache.Exited; a die without one, any other life event and
// an oom invalidate the game, an oom also noted by Cache.SawOOM; a destroy is Cache.Destroyed; a
// kill changes nothing, the die that may follow does), then its game id is handed to handle.
//
// After every subscription it relists: the List result is installed in the cache, and known
// (nil: nothing is handed over) turns it into the game ids to hand to handle, each once. A relist
// that fails (the list or known) is logged and retried with backoff while the stream is followed,
// until it succeeds or the stream ends. When the stream ends (a daemon restart) the cache is
// marked unsynced at once (Cache.Reset: reconciles inspect instead of trusting it) and Run
// reconnects with backoff (100 ms doubling to 5 s, reset after 30 s connected).
func (in *Informer) Run(ctx context.Context, handle func(gameID string),
	known func(ctx context.Context, listed []rtm.Container) ([]string, error)) error {
	h := informerHandlers{handle: handle, known: known}
	var b rtm.Backoff
	first := true
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		events, errs := in.events.Events(sctx)
		// Like an informer, list after every (re)subscription: events before it were missed (the
		// boot pass listed before this stream existed; a broken stream lost some). The first
		// attempt comes before any event is handled, so that a die applies to a listed entry.
		in.cache.Resubscribed()
		var relisting sync.WaitGroup
		if !in.relist(ctx, first, h) {
			relisting.Add(1)
			go func(first bool) {
				defer relisting.Done()
				in.relistUntilDone(sctx, first, h)
			}(first)
		}
		first = false
		connected := time.Now()
		err := in.follow(sctx, events, errs, h)
		in.cache.Reset() // from now until the next subscription, events are missed
		cancel()
		relisting.Wait()
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(connected) > 30*time.Second {
			b.Reset()
		}
		wait := b.Next()
		in.log.Warn("docker events stream ended, reconnecting", "error", err, "retry_in", wait.String())
		if !rtm.Sleep(ctx, wait) {
			return nil
		}
	}
	return nil
}

// List lists every owned container with one Docker call and installs the list in the cache:
// every full pass (the boot pass, the periodic and manual passes) lists through it, so the cache
// is filled in one place.
func (in *Informer) List(ctx context.Context) ([]rtm.Container, error) {
	mark := in.cache.Begin()
	list, err := in.lister.List(ctx)
	if err != nil {
		return nil, err
	}
	in.cache.Replace(mark, list)
	return list, nil
}

// relist lists every owned container once, installs the list in the cache and hands over the
// games known makes of it; it reports whether it did, logging why not (unless ctx ended).
func (in *Informer) relist(ctx context.Context, first bool, h informerHandlers) bool {
	list, err := in.List(ctx)
	var ids []string
	if err == nil {
		if h.known != nil {
			ids, err = h.known(ctx, list)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			in.log.Warn("relist after subscribing to docker events failed, retrying", "error", err)
		}
		return false
	}
	for _, id := range ids {
		h.handle(id)
	}
	if !first {
		in.log.Info("docker events stream reconnected", "games", len(ids))
	}
	return true
}

// relistUntilDone retries relist with backoff until it succeeds or ctx (the stream's) ends.
func (in *Informer) relistUntilDone(ctx context.Context, first bool, h informerHandlers) {
	var b rtm.Backoff
	for rtm.Sleep(ctx, b.Next()) {
		if in.relist(ctx, first, h) {
			return
		}
	}
}

// follow applies the stream's events to the cache and hands their games over until the stream
// or ctx ends; it returns the stream's error (nil when the event channel was closed).
func (in *Informer) follow(ctx context.Context, events <-chan rtm.DockerEvent, errs <-chan error, h informerHandlers) error {
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
			if in.apply(ev) {
				h.handle(ev.GameID)
			}
		}
	}
}

// apply applies one event of a valid game to the cache; it reports whether the event concerns
// the game's life (every action but exec_* and the ones Docker may add).
func (in *Informer) apply(ev rtm.DockerEvent) bool {
	switch ev.Action {
	case "die":
		// The event says what an inspection would, and on Docker 20.10 an inspection right
		// after it waits for the daemon's clean-up of the container: record it. (Exited
		// invalidates the game when it cannot apply the event.)
		if ev.ExitCode < 0 {
			in.cache.Invalidate(ev.GameID)
		} else {
			in.cache.Exited(ev.GameID, ev.ContainerID, ev.ExitCode, time.Now())
		}
	case "kill":
		// A signal changes nothing by itself; the die that may follow does.
	case "oom":
		in.cache.SawOOM(ev.GameID, ev.ContainerID)
		in.cache.Invalidate(ev.GameID)
	case "destroy":
		in.cache.Destroyed(ev.GameID, ev.ContainerID)
	case "start", "stop", "pause", "unpause", "create", "rename", "health_status", "update":
		in.cache.Invalidate(ev.GameID)
	default:
		return false
	}
	return true
}
