package runtime

import (
	"sync"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Cache is the reconciler's view of the owned containers, like an informer's cache: filled by one
// List call (the boot pass and every periodic pass) and invalidated game by game by Docker
// events, so that a pass over a converged world costs no per-game Docker call. The reconciler
// decides on the cached view and, before acting, inspects afresh under the game's lease: a stale
// entry costs a look, never a wrong action.
type Cache struct {
	mu     sync.Mutex
	synced bool
	seq    uint64
	byGame map[string]rtm.Container
	dirty  map[string]uint64 // game id → seq of its last invalidation
}

// NewCache returns an empty, unsynced cache: every Lookup misses until the first Replace.
func NewCache() *Cache {
	return &Cache{byGame: map[string]rtm.Container{}, dirty: map[string]uint64{}}
}

// Begin marks the start of a List call; pass its result to Replace with the mark.
func (c *Cache) Begin() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	return c.seq
}

// Replace installs the result of a List call that began at mark. Games invalidated after the
// mark stay invalid, since the list may predate what woke them.
func (c *Cache) Replace(mark uint64, list []rtm.Container) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byGame = make(map[string]rtm.Container, len(list))
	for _, ct := range list {
		if ct.GameID != "" && ct.Owned {
			c.byGame[ct.GameID] = ct
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
}

// Reset makes the whole cache unsynced (the event stream broke: events were missed).
func (c *Cache) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.synced = false
}

// Put records an inspection of a game's container that began at mark (found false: it has
// none). An invalidation that came after the mark wins: the inspection may predate it.
func (c *Cache) Put(mark uint64, gameID string, ct rtm.Container, found bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, d := c.dirty[gameID]; d && s > mark {
		return
	}
	if found && ct.Owned {
		c.byGame[gameID] = ct
	} else {
		delete(c.byGame, gameID)
	}
	delete(c.dirty, gameID)
}

// Lookup returns the cached container of a game. known is false when the cache cannot tell
// (unsynced, or invalidated by an event): the caller must inspect.
func (c *Cache) Lookup(gameID string) (ct rtm.Container, found, known bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		return rtm.Container{}, false, false
	}
	if _, d := c.dirty[gameID]; d {
		return rtm.Container{}, false, false
	}
	ct, found = c.byGame[gameID]
	return ct, found, true
}
