package runtime

import (
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Cache is the reconciler's view of the owned containers, an informer's store: filled by one List
// call (the boot pass, every periodic pass and the Informer's relist after each subscription to
// the events) and invalidated game by game by the Docker events the Informer applies, so that a
// pass over a converged world costs no per-game Docker call. The reconciler
// decides on the cached view and, before acting, inspects afresh under the game's lease: a stale
// entry costs a look, never a wrong action.
//
// A die event is the one event that updates an entry instead of invalidating it (Exited): it
// carries all an inspection would tell, and on Docker 20.10 an inspection made right after it
// waits until the daemon has cleaned the container up (network, mounts), often 100 ms and more.
type Cache struct {
	mu     sync.Mutex
	synced bool
	// down: the events stream ended and no new one follows yet (Reset); no list syncs the cache
	// until Resubscribed, and then only a list begun after it (seq > upSeq).
	down   bool
	upSeq  uint64
	seq    uint64
	byGame map[string]rtm.Container
	dirty  map[string]uint64   // game id → seq of its last invalidation
	exits  map[string]exitMark // game id → the die event that set its entry
	ooms   map[string]oomMark  // game id → container an oom event was seen for
	// lives and lostSeq make LifeMark: the seq of each game's last event, and of the last time
	// events may have been missed (Reset, Resubscribed).
	lives   map[string]uint64
	lostSeq uint64
	now     func() time.Time
}

// exitMark is when (seq and time) a die event set a game's entry.
type exitMark struct {
	seq uint64
	at  time.Time
}

// oomMark is an oom event waiting for its container's die.
type oomMark struct {
	id string
	at time.Time
}

// An oom event is followed by its die within moments; one whose die never came (the events
// stream broke in between) is forgotten after oomTTL, and at most maxOOMs are kept.
const (
	oomTTL  = 5 * time.Minute
	maxOOMs = 1024
)

// NewCache returns an empty, unsynced cache: every Lookup misses until the first Replace.
func NewCache() *Cache {
	return &Cache{byGame: map[string]rtm.Container{}, dirty: map[string]uint64{}, exits: map[string]exitMark{},
		ooms: map[string]oomMark{}, lives: map[string]uint64{}, now: time.Now}
}

// Begin marks the start of a List call; pass its result to Replace with the mark.
func (c *Cache) Begin() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	return c.seq
}

// Replace installs the result of a List call that began at mark. Games invalidated after the
// mark stay invalid, and exits recorded after it stay, since the list may predate them. The cache
// becomes synced unless the events stream is down (Reset) or the list began before the stream
// was resubscribed: events it does not reflect may have been missed.
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
	// A game without a container keeps no life mark: a container it gets later has another id.
	for id, s := range c.lives {
		if _, listed := c.byGame[id]; !listed && s <= mark {
			delete(c.lives, id)
		}
	}
	c.expireOOMs()
	if !c.down && mark > c.upSeq {
		c.synced = true
	}
}

// Invalidate forgets what is known of a game's container (an event arrived for it).
func (c *Cache) Invalidate(gameID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.invalidate(gameID)
}

func (c *Cache) invalidate(gameID string) {
	c.seq++
	c.dirty[gameID] = c.seq
	c.lives[gameID] = c.seq
	delete(c.exits, gameID)
}

// Destroyed applies a destroy event of container id: the game is invalidated, and an oom event
// seen for that container, whose die will never come now, is forgotten.
func (c *Cache) Destroyed(gameID, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.invalidate(gameID)
	if o, ok := c.ooms[gameID]; ok && o.id == id {
		delete(c.ooms, gameID)
	}
}

// Exited applies a die event of container id, with its exit code, to gameID's entry when the
// cache's current word on the game is that very container (a known entry with that id, not
// invalidated since): the entry becomes exited with exitCode, observed at. Otherwise it
// invalidates the game, as any other event does. It reports whether it applied the event.
//
// After an oom event for the container (SawOOM) the die is never applied: the game is
// invalidated so that an inspection reads State.OOMKilled, and the oom event, now handled, is
// forgotten.
func (c *Cache) Exited(gameID, id string, exitCode int, at time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ct, ok := c.byGame[gameID]
	_, dirty := c.dirty[gameID]
	oom := false
	if o, seen := c.ooms[gameID]; seen && o.id == id {
		oom = true
		delete(c.ooms, gameID)
	}
	if !c.synced || dirty || !ok || ct.ID != id || oom {
		c.invalidate(gameID)
		return false
	}
	c.seq++
	c.lives[gameID] = c.seq
	ct.State, ct.ExitCode, ct.OOMKilled, ct.FinishedAt = rtm.StateExited, exitCode, false, at.UTC()
	c.byGame[gameID] = ct
	c.exits[gameID] = exitMark{seq: c.seq, at: at}
	return true
}

// SawOOM notes an oom event for a game's container, so that its die event is not taken from the
// event alone: the reconciler inspects to read State.OOMKilled. The note lasts until that die or
// the container's destroy is handled, or oomTTL; past maxOOMs notes the oldest is dropped.
func (c *Cache) SawOOM(gameID, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireOOMs()
	if _, ok := c.ooms[gameID]; !ok && len(c.ooms) >= maxOOMs {
		oldest := ""
		for g, o := range c.ooms {
			if oldest == "" || o.at.Before(c.ooms[oldest].at) {
				oldest = g
			}
		}
		delete(c.ooms, oldest)
	}
	c.ooms[gameID] = oomMark{id: id, at: c.now()}
}

// expireOOMs forgets the oom notes older than oomTTL.
func (c *Cache) expireOOMs() {
	now := c.now()
	for g, o := range c.ooms {
		if now.Sub(o.at) > oomTTL {
			delete(c.ooms, g)
		}
	}
}

// Reset makes the whole cache unsynced because the events stream ended: events are being
// missed, so no list syncs it again until Resubscribed.
func (c *Cache) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.synced, c.down, c.lostSeq = false, true, c.seq
	clear(c.exits)
}

// Resubscribed says that an events stream follows the containers again, from now: the cache
// stays unsynced (events before the subscription were missed) until a list begun after this
// call is installed by Replace.
func (c *Cache) Resubscribed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.synced, c.down, c.upSeq, c.lostSeq = false, false, c.seq, c.seq
	clear(c.exits)
}

// LifeMark returns a mark that moves whenever an event arrives for gameID's container (a start,
// a die, anything that may give it another address) or events may have been missed; an
// inspection made after reading a mark is current while the mark is unchanged. ok is false while
// the cache is unsynced: events may be being missed, and no mark can be trusted.
func (c *Cache) LifeMark(gameID string) (mark uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		return 0, false
	}
	return max(c.lives[gameID], c.lostSeq), true
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
