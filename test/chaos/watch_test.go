//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// watcher follows the daemon's events for the containers of one test's games, through the real
// Docker socket (never through a proxy a test cuts), and checks at every event that no game ever
// has two containers at once. It also keeps each game's history of creates, for tests that know
// how many containers an operation may make.
type watcher struct {
	prefix string

	mu      sync.Mutex
	live    map[string]map[string]string // game → container id → image
	creates map[string][]string          // game → images of the containers created, in order
	started map[string]map[string]bool   // game → ids of the containers started at least once
	ids     map[string]string            // container id → game
	latest  map[string]string            // game → id of the container created last
	actions map[string]int               // action → count
	bad     []string
}

func startWatcher(t *testing.T, prefix string) *watcher {
	t.Helper()
	w := &watcher{prefix: prefix, live: map[string]map[string]string{}, creates: map[string][]string{},
		started: map[string]map[string]bool{}, ids: map[string]string{}, latest: map[string]string{}, actions: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		since := time.Now().Add(-time.Second)
		first := true
		for ctx.Err() == nil {
			msgs, errs := suite.docker.Events(ctx, events.ListOptions{
				Since:   since.Format(time.RFC3339Nano),
				Filters: filters.NewArgs(filters.Arg("type", "container"), filters.Arg("label", "com.galaxy.owner=rtmanager")),
			})
			if first {
				close(ready)
				first = false
			}
		follow:
			for {
				select {
				case <-ctx.Done():
					return
				case <-errs:
					break follow
				case m := <-msgs:
					since = time.Unix(0, m.TimeNano)
					w.event(m)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	<-ready
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func (w *watcher) event(m events.Message) {
	game := m.Actor.Attributes["com.galaxy.game_id"]
	if !strings.HasPrefix(game, w.prefix) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	action := string(m.Action)
	w.actions[action]++
	w.ids[m.Actor.ID] = game
	switch action {
	case "start":
		if w.started[game] == nil {
			w.started[game] = map[string]bool{}
		}
		w.started[game][m.Actor.ID] = true
	case "create":
		if w.live[game] == nil {
			w.live[game] = map[string]string{}
		}
		if _, seen := w.live[game][m.Actor.ID]; seen {
			return // the stream was resubscribed and replayed it
		}
		w.live[game][m.Actor.ID] = m.Actor.Attributes["com.galaxy.image_ref"]
		w.latest[game] = m.Actor.ID
		w.creates[game] = append(w.creates[game], m.Actor.Attributes["com.galaxy.image_ref"])
		if n := len(w.live[game]); n > 1 {
			var ids []string
			for id, image := range w.live[game] {
				ids = append(ids, fmt.Sprintf("%.12s(%s)", id, image))
			}
			sort.Strings(ids)
			w.bad = append(w.bad, fmt.Sprintf("%s had %d containers at once: %s", game, n, strings.Join(ids, ", ")))
		}
	case "destroy":
		delete(w.live[game], m.Actor.ID)
	}
}

// violations returns the invariant breaks seen so far.
func (w *watcher) violations() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.bad...)
}

// createdImages returns the images of the containers created for game, in order.
func (w *watcher) createdImages(game string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.creates[game]...)
}

// startedLatest tells whether the container created last for game has been started.
func (w *watcher) startedLatest(game string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	id, ok := w.latest[game]
	return ok && w.started[game][id]
}

// gameOf returns the game of a container id (or unambiguous prefix of one) the watcher saw.
func (w *watcher) gameOf(id string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if g, ok := w.ids[id]; ok {
		return g
	}
	if len(id) >= 12 {
		for full, g := range w.ids {
			if strings.HasPrefix(full, id) {
				return g
			}
		}
	}
	return ""
}

// summary counts the events seen, by action.
func (w *watcher) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for _, a := range []string{"create", "start", "die", "destroy"} {
		parts = append(parts, fmt.Sprintf("%d %s", w.actions[a], a))
	}
	return strings.Join(parts, ", ")
}
