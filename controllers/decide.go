package controllers

import (
	rtm "github.com/galaxy-platform/rtmanager"
)

// Action is what the reconciler decided to do for one game.
type Action string

// The reconciler's actions. Each is level-triggered: it follows from the record and the observed
// container alone, whatever woke the reconciler.
const (
	ActNone           Action = "none"
	ActAdopt          Action = "adopt"           // owned container, no record: record it as it is
	ActDispose        Action = "dispose"         // active record, container gone: record removed
	ActObservedExited Action = "observed_exited" // active record, container exited by itself
	ActSync           Action = "sync"            // record out of date with a container nobody asked to change
	ActCreate         Action = "create"          // should run, no container: create and start one
	ActStartExisting  Action = "start_existing"  // should run, the right container exists stopped: start it
	ActReplace        Action = "replace"         // should run, wrong container (restart, another image): recreate; a pending patch request makes it a patch
	ActSettle         Action = "settle"          // the world already is as asked: record and answer
	ActStop           Action = "stop"            // should not run, container runs: stop it
	ActRemove         Action = "remove"          // should be removed, container exists: remove it
)

// Decide is the reconciler's decision table: from a game's record (nil when none) and its observed
// container (nil when none), the one action that brings them closer. A container without the
// owner label is never acted on: it is treated as absent here, and creating over its name fails.
func Decide(rec *rtm.Record, c *rtm.Container) Action {
	if c != nil && !c.Owned {
		c = nil
	}
	if rec == nil {
		if c != nil {
			return ActAdopt
		}
		return ActNone
	}
	pending := !rec.Settled()
	if !pending && rec.Status == rtm.StatusFailed && c != nil {
		// A failed request leaves the game as it is until the next request: a container a
		// refused stop left running is not adopted, one a failed start left is not disposed of.
		return ActNone
	}
	active := rec.Status == rtm.StatusRunning || rec.Status == rtm.StatusStarting || rec.Status == rtm.StatusStopping
	switch rec.DesiredState {
	case rtm.DesiredRunning:
		if !pending {
			switch {
			case rec.Status == rtm.StatusFailed:
				return ActNone // terminal until desired state changes
			case c == nil && active:
				return ActDispose
			case c == nil:
				return ActNone
			case c.Running():
				if rec.Status != rtm.StatusRunning || rec.CurrentContainerID != c.ID {
					return ActSync
				}
				return ActNone
			case active && rec.CurrentContainerID == c.ID:
				return ActObservedExited
			case rec.CurrentContainerID != c.ID:
				// Another container than the record's (replaced by hand): recorded as it is.
				return ActSync
			}
			return ActNone
		}
		switch {
		case c == nil:
			return ActCreate
		case c.ImageRef != rec.DesiredImageRef || c.Generation < rec.ContainerGeneration:
			return ActReplace
		case c.Running():
			return ActSettle
		}
		return ActStartExisting
	case rtm.DesiredStopped:
		switch {
		case c != nil && c.Running() && pending:
			return ActStop
		case c != nil && c.Running():
			// Nobody asked RTM to stop it: an operator started it by hand. Operators stay in
			// control of manual containers; RTM records it.
			return ActAdopt
		case c == nil && !pending && rec.Status == rtm.StatusExited:
			// It exited by itself and has now vanished too (docker rm, a daemon restart).
			return ActDispose
		case pending || wrongStopped(rec, c):
			return ActSettle
		}
		return ActNone
	case rtm.DesiredRemoved:
		if c != nil && pending {
			return ActRemove
		}
		if c != nil {
			// A labelled container started by hand for a removed game: operators stay in
			// control of it, RTM records it (runbook: Reconcile Drift, step 3).
			return ActAdopt
		}
		if pending || rec.Status != rtm.StatusRemoved {
			return ActSettle
		}
	}
	return ActNone
}

// wrongStopped reports a settled, stopped record that no longer matches Docker: its container was
// removed behind RTM's back, or the record still says it runs.
func wrongStopped(rec *rtm.Record, c *rtm.Container) bool {
	if c == nil {
		return rec.Status != rtm.StatusRemoved
	}
	return rec.Status == rtm.StatusRunning || rec.Status == rtm.StatusStarting || rec.Status == rtm.StatusStopping ||
		rec.CurrentContainerID != c.ID
}

// settledStatus is the status a settled record gets for the observed container.
func settledStatus(rec *rtm.Record, c *rtm.Container) rtm.Status {
	switch rec.DesiredState {
	case rtm.DesiredRemoved:
		return rtm.StatusRemoved
	case rtm.DesiredStopped:
		if c == nil {
			return rtm.StatusRemoved
		}
		if rec.Status == rtm.StatusExited && rec.CurrentContainerID == c.ID {
			return rtm.StatusExited
		}
		return rtm.StatusStopped
	}
	if c != nil && c.Running() {
		return rtm.StatusRunning
	}
	return rec.Status
}
