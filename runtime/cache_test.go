package runtime

import (
	"fmt"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// ours is the container the cache tests list: game g1's c1, owned and running.
func ours() rtm.Container {
	return rtm.Container{ID: "c1", GameID: "g1", Owned: true, State: rtm.StateRunning}
}

// relist replaces c's contents with a list, begun now, that shows ours.
func relist(c *Cache) { c.Replace(c.Begin(), []rtm.Container{ours()}) }

// wantUnknown fails the test when c claims to know game's container; why says what that would
// mean.
func wantUnknown(t *testing.T, c *Cache, game, why string) {
	t.Helper()
	if _, _, known, _ := c.Lookup(game); known {
		t.Fatal(why)
	}
}

// synced returns a cache synced by a list that shows ours.
func synced() *Cache {
	c := NewCache()
	relist(c)
	return c
}

func TestCache_Lookup(t *testing.T) {
	c := NewCache()
	wantUnknown(t, c, "g1", "an unsynced cache claims to know")
	mark := c.Begin()
	c.Invalidate("g2") // an event after the list began
	c.Replace(mark, []rtm.Container{ours(), {ID: "x", GameID: "g3"}})
	if ct, found, known, _ := c.Lookup("g1"); !known || !found || ct.ID != "c1" {
		t.Fatalf("listed game: %v %v %+v", found, known, ct)
	}
	if _, found, known, _ := c.Lookup("g4"); !known || found {
		t.Fatal("an unlisted game should be known absent")
	}
	wantUnknown(t, c, "g2", "an invalidation after the list began was lost")
	if _, found, _, _ := c.Lookup("g3"); found {
		t.Fatal("an unowned container was cached")
	}
	m2 := c.Begin()
	c.Invalidate("g1") // the container died while we inspected
	c.Put(m2, "g1", ours(), true)
	wantUnknown(t, c, "g1", "a stale inspection overwrote a later invalidation")
	c.Put(c.Begin(), "g1", rtm.Container{}, false)
	if _, found, known, _ := c.Lookup("g1"); !known || found {
		t.Fatal("a fresh inspection was not recorded")
	}
	c.Reset()
	wantUnknown(t, c, "g4", "a reset cache claims to know")
}

func TestCache_Exited(t *testing.T) {
	at := time.Now()
	tests := []struct {
		name      string
		given     func(c *Cache)
		id        string
		wantApply bool
	}{
		{"known container", func(c *Cache) {}, "c1", true},
		{"another container", func(c *Cache) {}, "c0", false},
		{"invalidated before", func(c *Cache) { c.Invalidate("g1") }, "c1", false},
		{"unsynced", func(c *Cache) { c.Reset() }, "c1", false},
		// The die of a container seen OOM-killed is not taken from the event alone: the game
		// must be inspected to confirm State.OOMKilled.
		{"after an oom event", func(c *Cache) { c.SawOOM("g1", "c1") }, "c1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := synced()
			tt.given(c)
			if got := c.Exited("g1", tt.id, 137, at); got != tt.wantApply {
				t.Fatalf("Exited = %v, want %v", got, tt.wantApply)
			}
			ct, found, known, exitedAt := c.Lookup("g1")
			if !tt.wantApply {
				if known {
					t.Fatalf("a die the cache could not apply left the game known: %+v", ct)
				}
				return
			}
			if !known || !found || ct.State != rtm.StateExited || ct.ExitCode != 137 || ct.ID != "c1" || !exitedAt.Equal(at) {
				t.Fatalf("after Exited: %+v found %v known %v at %v", ct, found, known, exitedAt)
			}
		})
	}

	t.Run("stale inspection and list do not undo it", func(t *testing.T) {
		c := synced()
		inspect, list := c.Begin(), c.Begin()
		c.Exited("g1", "c1", 0, at)
		c.Put(inspect, "g1", ours(), true)
		c.Replace(list, []rtm.Container{ours()})
		if ct, _, _, exitedAt := c.Lookup("g1"); ct.State != rtm.StateExited || exitedAt.IsZero() {
			t.Fatalf("an inspection or list begun before the die overwrote it: %+v", ct)
		}
		c.Put(c.Begin(), "g1", ours(), true)
		if ct, _, _, exitedAt := c.Lookup("g1"); ct.State != rtm.StateRunning || !exitedAt.IsZero() {
			t.Fatalf("a later inspection did not replace the exit: %+v %v", ct, exitedAt)
		}
		c.Exited("g1", "c1", 0, at)
		c.Invalidate("g1")
		wantUnknown(t, c, "g1", "an event after the die left the game known")
	})
}

func TestCache_SawOOM_isBounded(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name    string
		given   func(c *Cache)
		wantOOM bool // the note for g1's c1 is still there
	}{
		{"kept until its die", func(c *Cache) {}, true},
		{"forgotten once its die is handled", func(c *Cache) { c.Exited("g1", "c1", 137, now) }, false},
		{"kept after the die of another container", func(c *Cache) { c.Exited("g1", "c0", 137, now) }, true},
		{"forgotten once its destroy is handled", func(c *Cache) { c.Destroyed("g1", "c1") }, false},
		{"forgotten after oomTTL", func(c *Cache) {
			c.now = func() time.Time { return now.Add(oomTTL + time.Second) }
			relist(c)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCache()
			c.now = func() time.Time { return now }
			relist(c)
			c.SawOOM("g1", "c1")
			tt.given(c)
			if _, got := c.ooms["g1"]; got != tt.wantOOM {
				t.Fatalf("oom note kept = %v, want %v", got, tt.wantOOM)
			}
		})
	}

	t.Run("a hard cap drops the oldest", func(t *testing.T) {
		c := NewCache()
		at := now
		c.now = func() time.Time { return at }
		for i := range maxOOMs + 10 {
			at = now.Add(time.Duration(i) * time.Millisecond)
			c.SawOOM(fmt.Sprintf("g%d", i), "c")
		}
		if len(c.ooms) != maxOOMs {
			t.Fatalf("%d oom notes kept, want at most %d", len(c.ooms), maxOOMs)
		}
		if _, ok := c.ooms["g0"]; ok {
			t.Fatal("the oldest note was kept")
		}
		if _, ok := c.ooms[fmt.Sprintf("g%d", maxOOMs+9)]; !ok {
			t.Fatal("the newest note was dropped")
		}
	})
}

func TestCache_Reset_noListSyncsUntilResubscribed(t *testing.T) {
	c := synced()
	early := c.Begin() // a periodic list begun before the stream ended
	c.Reset()
	relist(c)
	wantUnknown(t, c, "g1", "a list while the events stream is down synced the cache")
	c.Resubscribed()
	c.Replace(early, []rtm.Container{ours()})
	wantUnknown(t, c, "g1", "a list begun before the resubscription synced the cache")
	relist(c)
	if _, _, known, _ := c.Lookup("g1"); !known {
		t.Fatal("a list after the resubscription did not sync the cache")
	}
}

func TestCache_LifeMark(t *testing.T) {
	c := NewCache()
	if _, ok := c.LifeMark("g1"); ok {
		t.Fatal("an unsynced cache gave a mark")
	}
	relist(c)
	m0, ok := c.LifeMark("g1")
	if !ok {
		t.Fatal("a synced cache gave no mark")
	}
	c.Put(c.Begin(), "g1", ours(), true)
	relist(c)
	c.Invalidate("g2")
	if m, _ := c.LifeMark("g1"); m != m0 {
		t.Fatal("the mark moved without an event for the game")
	}
	c.Invalidate("g1") // a start event
	m1, _ := c.LifeMark("g1")
	if m1 == m0 {
		t.Fatal("an event for the game left its mark")
	}
	c.Exited("g1", "c1", 0, time.Now())
	m2, _ := c.LifeMark("g1")
	if m2 == m1 {
		t.Fatal("a die left the mark")
	}
	c.Reset()
	if _, ok := c.LifeMark("g1"); ok {
		t.Fatal("a mark while the events stream is down")
	}
	c.Resubscribed()
	relist(c)
	if m, ok := c.LifeMark("g1"); !ok || m == m2 {
		t.Fatalf("after events were missed the mark is %d %v, was %d", m, ok, m2)
	}
}
