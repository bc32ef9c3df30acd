package controllers

import (
	"context"
	"errors"
	"fmt"

	rtm "github.com/galaxy-platform/rtmanager"
)

// act runs the decided action and commits its outcome once: the change it returns, written with
// the lease's fencing epoch; or, when it failed, a retry within the request's budget, or the
// failure answered and recorded.
func (r *GameReconciler) act(s *scope) outcome {
	var ch *rtm.Change
	var err error
	switch s.act {
	case ActSettle, ActCreate, ActStartExisting, ActReplace:
		if old := patchOf(s.rec, s.pending); old != "" {
			if s.c != nil && s.c.Running() && s.c.ImageRef == old {
				ch, err = r.patch(s, old)
			} else {
				ch, err = r.resumePatch(s, old)
			}
		} else if s.act == ActSettle {
			ch = r.settle(s)
		} else {
			ch, err = r.run(s)
		}
	case ActStop:
		ch, err = r.stop(s)
	case ActRemove:
		ch, err = r.remove(s)
	}
	if err == nil {
		if err = r.commit(s, ch); err == nil {
			r.budget.forget(s.gameID)
			r.starts.forget(s.gameID)
			return finished()
		}
	}
	return r.failure(s, err)
}

// commit writes ch, the outcome of the scope's action, with the lease's fencing epoch.
func (r *GameReconciler) commit(s *scope, ch *rtm.Change) error {
	if ch == nil {
		return nil
	}
	ch.GameID, ch.Gen, ch.Epoch = s.gameID, s.rec.Generation, s.rec.FenceEpoch
	_, err := r.store.Commit(s.ctx, *ch)
	return fromStore(err)
}

// change returns a change that answers the pending requests up to the record's generation with a
// and applies the named transition apply.
func change(a rtm.Answer, containerID string, apply func(x *rtm.Record, current bool), events ...rtm.HealthEvent) *rtm.Change {
	return &rtm.Change{Answer: &a, ContainerID: containerID, Apply: apply, Events: events}
}

// failure decides what becomes of an action that failed with err:
//   - the reconcile itself is ending (shutdown): retried by the next process or round;
//   - the lease was lost, or the record fenced by a newer holder: nothing more is done, the game
//     is looked at again shortly (whoever holds the lease then acts);
//   - the store failed: retried, without spending the request's budget;
//   - a failure worth retrying: retried until the request's budget is spent;
//   - otherwise (a failure with a code, or a spent budget): the pending requests are answered
//     failed, with the code and the daemon's words, and the record says failed, so that the
//     next request can act.
func (r *GameReconciler) failure(s *scope, err error) outcome {
	var se *storeError
	var starting *rtm.Starting
	var a rtm.Answer
	switch {
	case s.parent.Err() != nil:
		return retryAfterFailure(err)
	case errors.As(err, &starting):
		// Under way, not failed: the runtime's event that it runs (or cannot) enqueues the game,
		// and the reconcile then settles or answers it; Within is the runtime's own deadline.
		s.log.Debug("engine starting; waiting for the runtime", "container_id", starting.ID, "reason", starting.Reason)
		r.starts.note(s, starting.ID, starting.Within)
		return waitFor(starting.Within)
	case errors.Is(err, rtm.ErrFenced) || s.ctx.Err() != nil:
		s.log.Info("lease lost; leaving the game to its next holder", "error", err)
		return waitFor(r.opts.LeaseRetry)
	case errors.As(err, &se):
		return retryAfterFailure(err)
	case retryable(s.act, err):
		spent := r.budget.spend(s.gameID, s.rec.Generation)
		if spent == nil {
			return retryAfterFailure(err)
		}
		a = answerFor(s.act, err)
		a.Message = fmt.Sprintf("%s: %s", spent, a.Message)
	default:
		a = answerFor(s.act, err)
	}
	keep := ""
	if s.act == ActStop || s.act == ActRemove {
		// The daemon refused: the container is still there.
		keep = s.rec.CurrentContainerID
		if s.c != nil {
			keep = s.c.ID
		}
	}
	s.log.Warn("operation failed", "error_code", string(a.Code), "error", err)
	if cerr := r.commit(s, change(a, keep, func(x *rtm.Record, _ bool) { x.Failed(a, keep, s.rec.Generation) })); cerr != nil {
		return r.failure(s, cerr)
	}
	r.budget.forget(s.gameID)
	r.starts.forget(s.gameID)
	return finished()
}

// run creates (or starts, or recreates) the game's container and returns the change that
// records it running.
func (r *GameReconciler) run(s *scope) (*rtm.Change, error) {
	if r.opts.Diagnose != nil {
		r.opts.Diagnose(s.ctx, s.gameID)
	}
	image := s.rec.DesiredImageRef
	var id string
	var err error
	if s.act == ActStartExisting {
		id = s.c.ID
		if err = s.rt.BeginStart(s.ctx, id); err != nil && !retryable(s.act, err) {
			_ = s.rt.Remove(s.ctx, id) // it will not start: the next try creates a fresh one
		}
	} else {
		if s.act == ActReplace && s.c != nil {
			if err := r.discard(s, s.c); err != nil {
				return nil, err
			}
		}
		id, err = r.launch(s, image, s.rt.BeginStart)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("engine started", "container_id", id, "image_ref", image)
	gen := s.rec.Generation
	return change(rtm.Succeeded, id, func(x *rtm.Record, _ bool) { x.Started(id, image, gen) },
		startedEvent(s.gameID, id)), nil
}

// launch prepares the state dir and creates a container of image and starts it with start (the
// runtime's Start, or its BeginStart where the start may be left under way), pulling the image
// first only when the daemon does not have it (the create says so): a start of a local image
// costs no image call. A container that was created but would not start is removed again; one
// still starting (*rtm.Starting) is kept, and the error says so.
func (r *GameReconciler) launch(s *scope, image string, start func(ctx context.Context, id string) error) (string, error) {
	dir, err := r.dirs.Ensure(s.gameID)
	if err != nil {
		return "", err
	}
	spec := rtm.ContainerSpec{
		GameID: s.gameID, ImageRef: image, Generation: s.rec.ContainerGeneration, StateDir: dir,
		StateMount: r.opts.StateMount, Network: r.opts.Network, User: r.opts.User, ReadOnlyRoot: r.opts.ReadOnlyRoot,
		MemoryBytes: r.opts.MemoryBytes, NanoCPUs: r.opts.NanoCPUs, PidsLimit: r.opts.PidsLimit,
		Env: map[string]string{"GALAXY_GAME_ID": s.gameID, "GALAXY_STATE_DIR": r.opts.StateMount},
	}
	id, err := s.rt.Create(s.ctx, spec)
	if rtm.CodeOf(err, "") == rtm.CodeImagePullFailed {
		if err := s.rt.EnsureImage(s.ctx, image); err != nil {
			return "", err
		}
		id, err = s.rt.Create(s.ctx, spec)
	}
	if errors.Is(err, rtm.ErrConflict) {
		// The name is taken: by a container RTM does not own (terminal), or by one of ours that
		// appeared meanwhile (transient: the next round observes it).
		if other, ierr := s.rt.Inspect(s.ctx, s.gameID); ierr == nil && !other.Owned {
			return "", rtm.Errorf(rtm.CodeContainerStartFailed, "the name %s is taken by a container RTM does not own", rtm.ContainerName(s.gameID))
		}
		return "", err
	}
	if err != nil {
		return "", err
	}
	if err := start(s.ctx, id); err != nil {
		if !retryable(ActCreate, err) {
			_ = s.rt.Remove(s.ctx, id)
		}
		return "", err
	}
	return id, nil
}

// markStopping records, with the lease's epoch, that RTM itself is about to stop the game's
// container, so that its exit is not taken for an incident.
func (r *GameReconciler) markStopping(s *scope) error {
	if s.rec.Status == rtm.StatusStopping {
		return nil
	}
	return fromStore(r.store.MarkStopping(s.ctx, s.gameID, s.rec.FenceEpoch))
}

// discard stops (with the configured grace, marking the game stopping first) and removes a
// container; a container already gone is fine.
func (r *GameReconciler) discard(s *scope, c *rtm.Container) error {
	if c.Running() {
		if err := r.markStopping(s); err != nil {
			return err
		}
		if err := s.rt.Stop(s.ctx, c.ID, r.opts.StopTimeout); err != nil && !errors.Is(err, rtm.ErrNotFound) {
			return err
		}
	}
	if err := s.rt.Remove(s.ctx, c.ID); err != nil && !errors.Is(err, rtm.ErrNotFound) {
		return err
	}
	return nil
}

func (r *GameReconciler) stop(s *scope) (*rtm.Change, error) {
	if err := r.markStopping(s); err != nil {
		return nil, err
	}
	id := s.c.ID
	if err := s.rt.Stop(s.ctx, id, r.opts.StopTimeout); err != nil && !errors.Is(err, rtm.ErrNotFound) {
		return nil, err
	}
	exit := rtm.IntPtr(r.exitCode(s, id))
	s.log.Info("engine stopped", "container_id", id)
	gen := s.rec.Generation
	return change(rtm.Succeeded, id, func(x *rtm.Record, _ bool) { x.Stopped(id, exit, gen) }), nil
}

// exitCode returns the exit code of the stopped container id: the one its die event carried when
// that has reached the cache (usually by the time the stop call returns), else an inspection's;
// 0 when neither can tell.
func (r *GameReconciler) exitCode(s *scope, id string) int {
	if r.opts.Cache != nil {
		if ct, found, known, exitedAt := r.opts.Cache.Lookup(s.gameID); known && found && ct.ID == id && !exitedAt.IsZero() {
			return ct.ExitCode
		}
	}
	if after, err := s.rt.Inspect(s.ctx, s.gameID); err == nil && after.ID == id {
		return after.ExitCode
	}
	return 0
}

func (r *GameReconciler) remove(s *scope) (*rtm.Change, error) {
	id := s.c.ID
	if err := r.discard(s, s.c); err != nil {
		return nil, err
	}
	s.log.Info("container removed", "container_id", id)
	gen := s.rec.Generation
	return change(rtm.Succeeded, id, func(x *rtm.Record, _ bool) { x.ContainerRemoved(id, gen) }), nil
}

// settle returns the change that records that the world already is as asked, answering the
// pending requests.
func (r *GameReconciler) settle(s *scope) *rtm.Change {
	status := settledStatus(s.rec, s.c)
	gen, c := s.rec.Generation, s.c
	ch := change(rtm.Succeeded, "", func(x *rtm.Record, _ bool) { x.Converged(status, c, gen) })
	if c != nil {
		ch.ContainerID = c.ID
		if status == rtm.StatusRunning && s.rec.Status != rtm.StatusRunning {
			ch.Events = []rtm.HealthEvent{startedEvent(s.gameID, c.ID)}
		}
	}
	return ch
}
