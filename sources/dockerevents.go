package sources

import (
	"context"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Informer keeps the container cache current from Docker events and lists (runtime.Informer).
// Run follows the events until ctx ends: it hands handle the game id of each event it applied,
// and after each relist the game ids known makes of the listed containers (a failure of known
// fails the relist, which is retried).
type Informer interface {
	Run(ctx context.Context, handle func(gameID string),
		known func(ctx context.Context, listed []rtm.Container) ([]string, error)) error
}

// DockerEvents is the dockerevents worker: it runs the informer, which applies every event of an
// owned container to the container cache, and enqueues each game the informer hands over, so
// that drift under a running RTM is handled at once. After each relist (after every subscription
// to the events, since events were missed) it enqueues every game of AllGames: the listed ones
// and those with an active record.
type DockerEvents struct {
	Informer Informer
	Store    ActiveGames
	Enqueue  func(gameID string)
}

// Run follows the informer until ctx ends.
func (d *DockerEvents) Run(ctx context.Context) error {
	return d.Informer.Run(ctx, d.Enqueue, func(ctx context.Context, listed []rtm.Container) ([]string, error) {
		return gamesOf(ctx, d.Store, listed)
	})
}
