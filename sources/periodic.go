package sources

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Lister lists every owned container with one Docker call.
type Lister interface {
	List(ctx context.Context) ([]rtm.Container, error)
}

// ActiveGames lists the game ids whose records are not settled as removed.
type ActiveGames interface {
	ActiveGameIDs(ctx context.Context) ([]string, error)
}

// AllGames returns the union of the games with an active record and the games of every owned
// container: what a full reconcile pass looks at. It costs one list call (the runtime's informer
// refreshes its cache with it) and one query.
func AllGames(ctx context.Context, lister Lister, store ActiveGames) ([]string, error) {
	cs, err := lister.List(ctx)
	if err != nil {
		return nil, err
	}
	return gamesOf(ctx, store, cs)
}

// gamesOf returns the union of the games with an active record and the games of the owned
// containers in list whose ids are valid.
func gamesOf(ctx context.Context, store ActiveGames, list []rtm.Container) ([]string, error) {
	ids, err := store.ActiveGameIDs(ctx)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(ids)+len(list))
	out := make([]string, 0, len(ids)+len(list))
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	for _, c := range list {
		if c.GameID != "" && c.Owned && !seen[c.GameID] && rtm.ValidateGameID(c.GameID) == nil {
			seen[c.GameID] = true
			out = append(out, c.GameID)
		}
	}
	return out, nil
}

// Ticker is the reconcile_ticker worker: every Interval (±10% jitter, so that many RTMs do not
// tick together) it enqueues every game of AllGames. A value on Trigger (main sends one on
// SIGHUP) runs such a pass at once, a manual pass, logged at info with the games it found; the
// periodic passes keep their schedule.
type Ticker struct {
	Interval time.Duration
	Docker   Lister // the runtime's informer, which refreshes its cache with each list
	Store    ActiveGames
	Enqueue  func(gameID string)
	Log      *slog.Logger
	Trigger  <-chan struct{} // nil: no manual passes
}

// Run ticks until ctx ends.
func (t *Ticker) Run(ctx context.Context) error {
	for {
		jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(t.Interval))
		timer := time.NewTimer(t.Interval + jitter)
		manual := false
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		case <-t.Trigger:
			timer.Stop()
			manual = true
		}
		ids, err := AllGames(ctx, t.Docker, t.Store)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if manual {
				t.Log.Error("manual reconcile pass could not list games", "worker", "reconcile_ticker", "error", err)
			} else {
				t.Log.Warn("periodic pass could not list games", "worker", "reconcile_ticker", "error", err)
			}
			continue
		}
		for _, id := range ids {
			t.Enqueue(id)
		}
		if manual {
			t.Log.Info("manual reconcile pass", "worker", "reconcile_ticker", "games", len(ids))
		} else {
			t.Log.Debug("periodic pass enqueued games", "worker", "reconcile_ticker", "games", len(ids))
		}
	}
}
