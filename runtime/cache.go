package runtime

import (
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Cache is the reconciler's view of the owned containers, like an informer's cache: filled by one
// List call (the boot pass and every periodic pass) and invalidated game by game by Docker
// events, so that a pass over a converged world costs no per-game Docker call. The reconciler
// decides on the cached view and, before acting, inspects afresh under the game's lease: a stale
// entry costs a look, never a wrong action.
//
// A die event is the one event that updates an entry instead of invalidating it (Exited): it
// carries all an inspection would tell, and on Docker 20.10 an inspection made right after it
// waits until the daemon has cleaned the container up (network, mounts), often 100 ms and more.
type Cache struct {
	mu     sync.Mutex
	synced bool
	seq    uint64
	byGame map[string]rtm.Container
	dirty  map[string]uint64   // game id → seq of its last invalidation
	exits  map[string]exitMark // game id → the die event that set its entry
	ooms   map[string]string   // game id → container an oom event was seen for
}

// exitMark is when (seq and time) a die event set a game's entry.
type exitMark struct {
	seq uint64
	at  time.Time
}

// NewCache returns an empty, unsynced cache: every Lookup misses until the first Replace.
func NewCache() *Cache {
	return &Cache{byGame: map[string]rtm.Container{}, dirty: map[string]uint64{}, exits: map[string]exitMark{}, ooms: map[string]string{}}
}

// Begin marks the start of a List call; pass its result to Replace with the mark.
func (c *Cache) Begin() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	return c.seq
}

// Replace installs the result of a List call that began at mark. Games invalidated after the
// mark stay invalid, and exits recorded after it stay, since the list may predate them.
func (c *Cache) Replace(mark uint64, list []rtm.Container) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.byGame
	c.byGame = make(map[string]rtm.Container, len(list))
	for _, ct := range list {
		if ct.GameID != "" && ct.Owned {
			c.byGame[ct.GameID] = ct
		}
	}
	for id, e := range c.exits {
		if e.seq > mark {
			c.byGame[id] = old[id]
		} else {
			delete(c.exits, id)
		}
	}
	for id, s := range c.dirty {
		if s <= mark {
			delete(c.dirty, id)
		}
	}
	c.synced = true
}

// Invalidate forgets what is known of a game's container (an event arrived for it).
func (c *Cache) Invalidate(gameID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.dirty[gameID] = c.seq
	delete(c.exits, gameID)
}

// Exited applies a die event of container id, with its exit code, to gameID's entry when the
// cache's current word on the game is that very container (a known entry with that id, not
// invalidated since): the entry becomes exited with exitCode, observed at. Otherwise it
// invalidates the game, as any other event does. It reports whether it applied the event.
//
// The entry is not marked OOM-killed: an oom event comes before the die and invalidates the
// game, so an OOM kill is always learnt from an inspection.
func (c *Cache) Exited(gameID, id string, exitCode int, at time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	ct, ok := c.byGame[gameID]
	_, dirty := c.dirty[gameID]
	// After an oom event only an inspection can confirm State.OOMKilled: never infer it.
	if !c.synced || dirty || !ok || ct.ID != id || c.ooms[gameID] == id {
		c.dirty[gameID] = c.seq
		delete(c.exits, gameID)
		return false
	}
	ct.State, ct.ExitCode, ct.OOMKilled, ct.FinishedAt = rtm.StateExited, exitCode, false, at.UTC()
	c.byGame[gameID] = ct
	c.exits[gameID] = exitMark{seq: c.seq, at: at}
	return true
}

// SawOOM notes an oom event for a game's container, so that its die event is not taken from the
// event alone: the reconciler inspects to read State.OOMKilled.
func (c *Cache) SawOOM(gameID, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ooms[gameID] = id
}

// Reset makes the whole cache unsynced (the event stream broke: events were missed).
func (c *Cache) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.synced = false
	clear(c.exits)
}

// Put records an inspection of a game's container that began at mark (found false: it has
// none). An invalidation or an exit that came after the mark wins: the inspection may predate it.
func (c *Cache) Put(mark uint64, gameID string, ct rtm.Container, found bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, d := c.dirty[gameID]; d && s > mark {
		return
	}
	if e, ok := c.exits[gameID]; ok && e.seq > mark {
		return
	}
	delete(c.exits, gameID)
	if found && ct.Owned {
		c.byGame[gameID] = ct
	} else {
		delete(c.byGame, gameID)
	}
	delete(c.dirty, gameID)
}

// Lookup returns the cached container of a game. known is false when the cache cannot tell
// (unsynced, or invalidated by an event): the caller must inspect. exitedAt is when a die event
// set the entry (Exited), as fresh as an inspection made then; zero for entries from lists and
// inspections.
func (c *Cache) Lookup(gameID string) (ct rtm.Container, found, known bool, exitedAt time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		return rtm.Container{}, false, false, time.Time{}
	}
	if _, d := c.dirty[gameID]; d {
		return rtm.Container{}, false, false, time.Time{}
	}
	ct, found = c.byGame[gameID]
	return ct, found, true, c.exits[gameID].at
}
