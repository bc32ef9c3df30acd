package runtime

import (
	"testing"

	rtm "github.com/galaxy-platform/rtmanager"
)

func TestCache_Lookup(t *testing.T) {
	ours := rtm.Container{ID: "c1", GameID: "g1", Owned: true, State: rtm.StateRunning}
	c := NewCache()
	if _, _, known := c.Lookup("g1"); known {
		t.Fatal("an unsynced cache claims to know")
	}
	mark := c.Begin()
	c.Invalidate("g2") // an event after the list began
	c.Replace(mark, []rtm.Container{ours, {ID: "x", GameID: "g3"}})
	if ct, found, known := c.Lookup("g1"); !known || !found || ct.ID != "c1" {
		t.Fatalf("listed game: %v %v %+v", found, known, ct)
	}
	if _, found, known := c.Lookup("g4"); !known || found {
		t.Fatal("an unlisted game should be known absent")
	}
	if _, _, known := c.Lookup("g2"); known {
		t.Fatal("an invalidation after the list began was lost")
	}
	if _, found, _ := c.Lookup("g3"); found {
		t.Fatal("an unowned container was cached")
	}
	m2 := c.Begin()
	c.Invalidate("g1") // the container died while we inspected
	c.Put(m2, "g1", ours, true)
	if _, _, known := c.Lookup("g1"); known {
		t.Fatal("a stale inspection overwrote a later invalidation")
	}
	c.Put(c.Begin(), "g1", rtm.Container{}, false)
	if _, found, known := c.Lookup("g1"); !known || found {
		t.Fatal("a fresh inspection was not recorded")
	}
	c.Reset()
	if _, _, known := c.Lookup("g4"); known {
		t.Fatal("a reset cache claims to know")
	}
}
