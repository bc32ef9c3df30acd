package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// noteExit is the fast path of a die event: the exit of the record's own container, decided on
// the record as read and locked in the transaction that records it, with the lease taken while
// that read travels (the two round trips overlap; the change is written only once both are in).
// Waiting for the lease with the row locked cannot deadlock: taking a lease never waits.
//
// The die event was observed before the lease was held, so it is trusted only where it cannot
// be stale: it is about the container the record names, that container's exit is not reported
// yet, and the cache still holds that very exit when the lease is held (a holder that started
// the container again since would have invalidated it). Anything else returns the action decided
// on the record as read, for the caller to take the usual way (an untrusted exit as sync: it is
// looked at again under the lease).
func (r *GameReconciler) noteExit(ctx context.Context, gameID string, c *rtm.Container) (Action, outcome) {
	type lease struct {
		ctx     context.Context
		release func()
		err     error
	}
	taken := make(chan lease, 1)
	go func() {
		lctx, release, err := r.leases.Acquire(ctx, gameID)
		taken <- lease{lctx, release, err}
	}()
	var held *lease
	wait := func() *lease {
		if held == nil {
			l := <-taken
			held = &l
		}
		return held
	}
	defer func() {
		if l := wait(); l.err == nil {
			l.release()
		}
	}()
	var (
		act     Action
		done    func(context.Context)
		refused error
	)
	_, err := r.store.Update(ctx, gameID, func(rec *rtm.Record) *rtm.Change {
		act, done, refused = Decide(rec, c), nil, nil
		if act != ActObservedExited || !r.stillExited(gameID, c) {
			return nil
		}
		if l := wait(); l.err != nil || l.ctx.Err() != nil {
			refused = l.err
			if refused == nil {
				refused = r.leaseLost(gameID)
			}
			return nil
		}
		var ch rtm.Change
		ch, done = r.driftChange(gameID, act, rec, c)
		return &ch
	})
	switch {
	case err != nil:
		return act, retryAfterFailure(fromStore(err))
	case errors.Is(refused, rtm.ErrConflict), errors.Is(refused, rtm.ErrFenced):
		return act, waitFor(r.opts.LeaseRetry)
	case refused != nil:
		return act, retryAfterFailure(refused)
	case done != nil:
		done(ctx)
		return act, finished()
	}
	if act == ActObservedExited {
		act = ActSync // not trusted as it stands: look again under the lease
	}
	return act, finished()
}

// stillExited reports whether the cache still holds the exit of c that a die event set: nobody
// has acted on the game's container since.
func (r *GameReconciler) stillExited(gameID string, c *rtm.Container) bool {
	if r.opts.Cache == nil {
		return false
	}
	ct, found, known, exitedAt := r.opts.Cache.Lookup(gameID)
	return known && found && !exitedAt.IsZero() && ct.ID == c.ID && ct.ExitCode == c.ExitCode
}

// noteDrift records what only needs recording (adopt, dispose, observed_exited, sync). It takes
// the lease first, then observes the container under it (an observation made before could
// predate what a previous holder did), then decides again on the record as read and locked in
// the transaction that records the change; the lease is checked once more before that commits.
// The change bumps the fencing epoch: it is this holder's first write.
func (r *GameReconciler) noteDrift(ctx context.Context, gameID string) outcome {
	lctx, release, err := r.leases.Acquire(ctx, gameID)
	switch {
	case errors.Is(err, rtm.ErrConflict):
		return waitFor(r.opts.LeaseRetry)
	case err != nil:
		return retryAfterFailure(err)
	}
	defer release()
	c, err := r.inspect(lctx, gameID)
	if err != nil {
		if lctx.Err() != nil && ctx.Err() == nil {
			return waitFor(r.opts.LeaseRetry)
		}
		return retryAfterFailure(err)
	}
	if c != nil && !c.Owned {
		c = nil
	}
	var (
		act  Action
		done func(context.Context)
		lost bool
	)
	_, err = r.store.Update(lctx, gameID, func(rec *rtm.Record) *rtm.Change {
		act, done, lost = Decide(rec, c), nil, false
		if !recordsOnly(act) || act == ActAdopt && creating(c) {
			return nil
		}
		if lctx.Err() != nil {
			lost = true
			return nil
		}
		var ch rtm.Change
		ch, done = r.driftChange(gameID, act, rec, c)
		return &ch
	})
	switch {
	case lost || err != nil && lctx.Err() != nil && ctx.Err() == nil:
		return waitFor(r.opts.LeaseRetry)
	case err != nil:
		return retryAfterFailure(fromStore(err))
	case done != nil:
		done(ctx)
		return finished()
	case act == ActAdopt && creating(c):
		return waitFor(time.Second)
	case act == ActNone || recordsOnly(act):
		return finished()
	}
	// Moved to something that needs acting on: the next round takes it the usual way.
	return waitFor(time.Millisecond)
}

// driftChange returns the change that records act for rec and c, and what to do once it is
// committed (count and log the drift). The change bumps the game's fencing epoch.
func (r *GameReconciler) driftChange(gameID string, act Action, rec *rtm.Record, c *rtm.Container) (rtm.Change, func(context.Context)) {
	log := r.log.With("game_id", gameID, "action", string(act))
	var ch rtm.Change
	var done func(context.Context)
	switch act {
	case ActAdopt:
		ch, done = r.adopt(log, rec, c)
	case ActDispose:
		ch, done = r.dispose(log, rec)
	case ActObservedExited:
		ch, done = r.observedExited(log, rec, c)
	default:
		ch = r.sync(rec, c)
	}
	if apply := ch.Apply; apply != nil {
		ch.Apply = func(x *rtm.Record, current bool) {
			apply(x, current)
			x.FenceEpoch++
		}
	}
	return ch, done
}

// adopt records an owned container RTM has no live record of (old is nil, or settled), as it
// is; it never touches it.
func (r *GameReconciler) adopt(log *slog.Logger, old *rtm.Record, c *rtm.Container) (rtm.Change, func(context.Context)) {
	rec := rtm.Record{
		GameID:              c.GameID,
		DesiredImageRef:     c.ImageRef,
		CurrentImageRef:     c.ImageRef,
		CurrentContainerID:  c.ID,
		EngineEndpoint:      rtm.Settings{EnginePort: r.opts.EnginePort, EngineHost: r.opts.EngineHost}.Endpoint(c.GameID),
		Generation:          1,
		ObservedGeneration:  1,
		ContainerGeneration: c.Generation,
		FenceEpoch:          1,
	}
	if dir, err := r.dirs.Ensure(c.GameID); err == nil {
		rec.StateDir = dir
	}
	switch {
	case c.Running():
		rec.Status, rec.DesiredState = rtm.StatusRunning, rtm.DesiredRunning
	case c.State == rtm.StateExited || c.State == rtm.StateDead:
		rec.Status, rec.DesiredState, rec.ExitCode = rtm.StatusExited, rtm.DesiredStopped, rtm.IntPtr(c.ExitCode)
		rec.ExitReportedContainer = c.ID
	default:
		rec.Status, rec.DesiredState = rtm.StatusStopped, rtm.DesiredStopped
	}
	now := time.Now().UTC()
	ch := rtm.Change{GameID: c.GameID, Insert: &rec, Ops: []rtm.Operation{{
		GameID: c.GameID, Kind: rtm.OpReconcileAdopt, Source: rtm.SourceReconciler, Outcome: rtm.OutcomeSucceeded,
		NewImageRef: c.ImageRef, ContainerID: c.ID, StartedAt: now, FinishedAt: now}}}
	if old != nil {
		ch.Insert, ch.Gen = nil, old.Generation
		ch.Apply = func(x *rtm.Record, _ bool) {
			gen := x.Generation + 1
			adopted := rec
			adopted.GameID, adopted.Generation, adopted.ObservedGeneration = x.GameID, gen, gen
			adopted.CreatedAt, adopted.FenceEpoch = x.CreatedAt, x.FenceEpoch
			*x = adopted
		}
	}
	return ch, func(ctx context.Context) {
		r.countDrift(ctx, "adopt")
		log.InfoContext(ctx, "adopted container", "container_id", c.ID, "status", string(rec.Status))
	}
}

func (r *GameReconciler) dispose(log *slog.Logger, rec *rtm.Record) (rtm.Change, func(context.Context)) {
	now := time.Now().UTC()
	ch := rtm.Change{GameID: rec.GameID, Gen: rec.Generation,
		Apply: func(x *rtm.Record, current bool) { x.Disposed(current) },
		Ops: []rtm.Operation{{GameID: rec.GameID, Kind: rtm.OpReconcileDispose, Source: rtm.SourceReconciler,
			Outcome: rtm.OutcomeSucceeded, OldImageRef: rec.CurrentImageRef, ContainerID: rec.CurrentContainerID,
			StartedAt: now, FinishedAt: now}},
		Events: []rtm.HealthEvent{{GameID: rec.GameID, Type: rtm.EventContainerDisappeared,
			ContainerID: rec.CurrentContainerID, Message: "the container is gone", ObservedAt: now}},
	}
	return ch, func(ctx context.Context) {
		r.countDrift(ctx, "dispose")
		log.InfoContext(ctx, "disposed record of vanished container", "container_id", rec.CurrentContainerID)
	}
}

func (r *GameReconciler) observedExited(log *slog.Logger, rec *rtm.Record, c *rtm.Container) (rtm.Change, func(context.Context)) {
	now := time.Now().UTC()
	ch := rtm.Change{GameID: rec.GameID, Gen: rec.Generation,
		Apply: func(x *rtm.Record, current bool) { x.ExitedAlone(c.ID, c.ExitCode, current) },
		Ops: []rtm.Operation{{GameID: rec.GameID, Kind: rtm.OpReconcileObservedExited, Source: rtm.SourceReconciler,
			Outcome: rtm.OutcomeSucceeded, ContainerID: c.ID, StartedAt: now, FinishedAt: now,
			ErrorMessage: fmt.Sprintf("exit code %d", c.ExitCode)}},
	}
	if rec.ExitReportedContainer != c.ID {
		ev := rtm.HealthEvent{GameID: rec.GameID, Type: rtm.EventContainerExited, ContainerID: c.ID,
			ExitCode: rtm.IntPtr(c.ExitCode), DockerState: string(c.State), ObservedAt: now,
			Message: fmt.Sprintf("the engine exited with code %d", c.ExitCode)}
		if c.OOMKilled {
			ev.Type, ev.OOMKilled, ev.Message = rtm.EventContainerOOM, true, "the engine was killed for exceeding its memory limit"
		}
		ch.Events = append(ch.Events, ev)
	}
	return ch, func(ctx context.Context) {
		r.countDrift(ctx, "observed_exited")
		log.InfoContext(ctx, "observed engine exit", "container_id", c.ID, "exit_code", c.ExitCode, "oom_killed", c.OOMKilled)
	}
}

// sync brings the record in line with a container nobody asked to change (started or replaced by
// hand): no operation row, but a started event when the game comes up.
func (r *GameReconciler) sync(rec *rtm.Record, c *rtm.Container) rtm.Change {
	ch := rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Apply: func(x *rtm.Record, _ bool) { x.Synced(*c) }}
	if c.Running() && rec.Status != rtm.StatusRunning {
		ch.Events = []rtm.HealthEvent{startedEvent(rec.GameID, c.ID)}
	}
	return ch
}

func startedEvent(gameID, containerID string) rtm.HealthEvent {
	return rtm.HealthEvent{GameID: gameID, Type: rtm.EventContainerStarted, ContainerID: containerID,
		DockerState: string(rtm.StateRunning), Message: "the engine container started", ObservedAt: time.Now().UTC()}
}
