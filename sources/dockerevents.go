package sources

import (
	"context"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Informer keeps the container cache current from Docker events and lists (runtime.Informer).
// Run follows the events until ctx ends: it hands handle the game id of each event it applied,
// with whether the event settles the game (its engine began running, exited or vanished), and
// after each relist the game ids known makes of the listed containers (a failure of known fails
// the relist, which is retried).
type Informer interface {
	Run(ctx context.Context, handle func(gameID string, settles bool),
		known func(ctx context.Context, listed []rtm.Container) ([]string, error)) error
}

// DockerEvents is the dockerevents worker: it runs the informer, which applies every event of an
// owned container to the container cache, and enqueues each game the informer hands over, so
// that drift under a running RTM is handled at once. After each relist (after every subscription
// to the events, since events were missed) it enqueues every game of AllGames: the listed ones
// and those with an active record.
//
// The game of an event that settles it goes through EnqueueFirst (nil: Enqueue), ahead of the
// games queued before: a start waiting for its engine to run (a Pod to be scheduled and started)
// or a stop waiting for it to exit is then answered as soon as it can be, not after the rest of
// a burst of new work.
type DockerEvents struct {
	Informer     Informer
	Store        ActiveGames
	Enqueue      func(gameID string)
	EnqueueFirst func(gameID string)
}

// Run follows the informer until ctx ends.
func (d *DockerEvents) Run(ctx context.Context) error {
	first := d.EnqueueFirst
	if first == nil {
		first = d.Enqueue
	}
	handle := func(gameID string, settles bool) {
		if settles {
			first(gameID)
		} else {
			d.Enqueue(gameID)
		}
	}
	return d.Informer.Run(ctx, handle, func(ctx context.Context, listed []rtm.Container) ([]string, error) {
		return gamesOf(ctx, d.Store, listed)
	})
}
