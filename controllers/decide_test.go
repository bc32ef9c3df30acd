package controllers

import (
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

func TestDecide(t *testing.T) {
	const img, img2 = "galaxy/game:1.4.1", "galaxy/game:1.4.2"
	record := func(status rtm.Status, desired rtm.DesiredState, pending bool, mods ...func(*rtm.Record)) *rtm.Record {
		r := &rtm.Record{GameID: "g", Status: status, DesiredState: desired, DesiredImageRef: img, CurrentImageRef: img,
			CurrentContainerID: "c1", Generation: 2, ObservedGeneration: 2}
		if pending {
			r.ObservedGeneration = 1
		}
		for _, m := range mods {
			m(r)
		}
		return r
	}
	ctr := func(state rtm.ContainerState, mods ...func(*rtm.Container)) *rtm.Container {
		c := &rtm.Container{ID: "c1", GameID: "g", Owned: true, ImageRef: img, State: state}
		for _, m := range mods {
			m(c)
		}
		return c
	}
	foreign := func(c *rtm.Container) { c.Owned = false }
	starting := func(c *rtm.Container) { c.Starting = true }
	tests := []struct {
		name  string
		given struct {
			rec *rtm.Record
			c   *rtm.Container
		}
		want Action
	}{
		{"nothing at all", given(nil, nil), ActNone},
		{"owned container without record is adopted", given(nil, ctr(rtm.StateRunning)), ActAdopt},
		{"exited owned container without record is adopted", given(nil, ctr(rtm.StateExited)), ActAdopt},
		{"foreign container is never adopted", given(nil, ctr(rtm.StateRunning, foreign)), ActNone},
		{"start job for a new game creates", given(record(rtm.StatusStarting, rtm.DesiredRunning, true), nil), ActCreate},
		{"running and settled is left alone", given(record(rtm.StatusRunning, rtm.DesiredRunning, false), ctr(rtm.StateRunning)), ActNone},
		{"running record whose container vanished is disposed", given(record(rtm.StatusRunning, rtm.DesiredRunning, false), nil), ActDispose},
		{"starting record whose container vanished is disposed", given(record(rtm.StatusStarting, rtm.DesiredRunning, false), nil), ActDispose},
		{"running record whose container exited is observed exited", given(record(rtm.StatusRunning, rtm.DesiredRunning, false), ctr(rtm.StateExited)), ActObservedExited},
		{"failed start is terminal until desired changes", given(record(rtm.StatusFailed, rtm.DesiredRunning, false), nil), ActNone},
		{"pending start with the right running container settles", given(record(rtm.StatusStarting, rtm.DesiredRunning, true), ctr(rtm.StateRunning)), ActSettle},
		{"pending start with a stopped right container starts it", given(record(rtm.StatusStopped, rtm.DesiredRunning, true), ctr(rtm.StateExited)), ActStartExisting},
		{"pending start with a final (terminated Pod) right container replaces it", given(record(rtm.StatusStopped, rtm.DesiredRunning, true), ctr(rtm.StateExited, func(c *rtm.Container) { c.Final = true })), ActReplace},
		{"pending start with another image stopped replaces", given(record(rtm.StatusStopped, rtm.DesiredRunning, true, func(r *rtm.Record) { r.DesiredImageRef = img2 }), ctr(rtm.StateExited)), ActReplace},
		{"pending new image on a running container replaces it (a pending patch request makes it a patch)", given(record(rtm.StatusRunning, rtm.DesiredRunning, true, func(r *rtm.Record) { r.DesiredImageRef = img2 }), ctr(rtm.StateRunning)), ActReplace},
		{"restart asks for a newer container generation", given(record(rtm.StatusRunning, rtm.DesiredRunning, true, func(r *rtm.Record) { r.ContainerGeneration = 2 }), ctr(rtm.StateRunning)), ActReplace},
		{"a foreign container in the way still means create", given(record(rtm.StatusStarting, rtm.DesiredRunning, true), ctr(rtm.StateRunning, foreign)), ActCreate},
		{"stop of a running container stops", given(record(rtm.StatusRunning, rtm.DesiredStopped, true), ctr(rtm.StateRunning)), ActStop},
		{"pending start with a Pod on its way starts it (BeginStart waits for its events)", given(record(rtm.StatusStopped, rtm.DesiredRunning, true), ctr(rtm.StateCreated, starting)), ActStartExisting},
		{"stop of a Pod on its way stops it: it would run by itself", given(record(rtm.StatusStopped, rtm.DesiredStopped, true), ctr(rtm.StateCreated, starting)), ActStop},
		{"stop of a created Docker container settles: it never runs by itself", given(record(rtm.StatusStopped, rtm.DesiredStopped, true), ctr(rtm.StateCreated)), ActSettle},
		{"desired stopped but started by hand is adopted", given(record(rtm.StatusStopped, rtm.DesiredStopped, false), ctr(rtm.StateRunning)), ActAdopt},
		{"exited record whose container vanished is disposed", given(record(rtm.StatusExited, rtm.DesiredStopped, false), nil), ActDispose},
		{"pending stop of an exited container settles", given(record(rtm.StatusRunning, rtm.DesiredStopped, true), ctr(rtm.StateExited)), ActSettle},
		{"stopped and settled is left alone", given(record(rtm.StatusStopped, rtm.DesiredStopped, false), ctr(rtm.StateExited)), ActNone},
		{"stopped record whose container was removed settles as removed", given(record(rtm.StatusStopped, rtm.DesiredStopped, false), nil), ActSettle},
		{"cleanup removes the container", given(record(rtm.StatusStopped, rtm.DesiredRemoved, true), ctr(rtm.StateExited)), ActRemove},
		{"cleanup of a gone container settles", given(record(rtm.StatusStopped, rtm.DesiredRemoved, true), nil), ActSettle},
		{"removed and settled is left alone", given(record(rtm.StatusRemoved, rtm.DesiredRemoved, false), nil), ActNone},
		{"removed record with a hand-started labelled container adopts it", given(record(rtm.StatusRemoved, rtm.DesiredRemoved, false), ctr(rtm.StateRunning)), ActAdopt},
		{"paused container counts as running", given(record(rtm.StatusRunning, rtm.DesiredRunning, false), ctr(rtm.StatePaused)), ActNone},
		{"container replaced by hand is synced", given(record(rtm.StatusRunning, rtm.DesiredRunning, false), ctr(rtm.StateRunning, func(c *rtm.Container) { c.ID = "c2" })), ActSync},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Decide(tt.given.rec, tt.given.c); got != tt.want {
				t.Errorf("Decide = %s, want %s", got, tt.want)
			}
		})
	}
}

func given(rec *rtm.Record, c *rtm.Container) struct {
	rec *rtm.Record
	c   *rtm.Container
} {
	return struct {
		rec *rtm.Record
		c   *rtm.Container
	}{rec, c}
}

func TestStartsUnderWay(t *testing.T) {
	now := time.Unix(1000, 0)
	u := newStartsUnderWay()
	u.now = func() time.Time { return now }
	u.note(&scope{gameID: "g", rec: &rtm.Record{}}, "pod-1", 10*time.Second)
	if w, ok := u.wait("g", "pod-1"); !ok || w != 10*time.Second {
		t.Fatalf("wait = %s %v, want 10s", w, ok)
	}
	if _, ok := u.wait("g", "pod-2"); ok {
		t.Fatalf("another container of the game is not the one left starting")
	}
	u.note(&scope{gameID: "g", rec: &rtm.Record{}}, "pod-1", 10*time.Second)
	now = now.Add(10 * time.Second)
	if _, ok := u.wait("g", "pod-1"); ok {
		t.Fatalf("the runtime's time ran out: the reconcile must go on")
	}
	if _, ok := u.wait("h", "pod-1"); ok {
		t.Fatalf("a game never noted")
	}
}
