package controllers

import (
	"errors"
	"fmt"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// patchOf returns the image a pending patch of rec replaces, or "" when the game's work is not a
// patch. Only a pending patch request makes a patch: the newest pending request that asks the
// game to run (a start, restart or patch, up to the record's generation; requests that joined
// it share its generation) must be a patch to the desired image. A start of another image queued behind a stop is a start (it replaces the
// container and keeps a start's outcomes and intents), however the container it finds looks.
//
// A reconcile that would finish a patch another way (settle a running engine of the new image,
// create or start one) is finishing a patch whose own reconcile never completed (its process
// died or lost the lease): it must verify the new engine as the patch would have, or it would
// report an engine that never passed its probe as patched.
func patchOf(rec *rtm.Record, pending []rtm.Request) string {
	if rec.DesiredState != rtm.DesiredRunning {
		return ""
	}
	newest := int64(-1)
	for _, q := range pending {
		if rtm.TargetOf(q.Kind) == rtm.DesiredRunning && q.Generation <= rec.Generation {
			newest = max(newest, q.Generation)
		}
	}
	for _, q := range pending {
		if q.Generation == newest && q.Kind == rtm.OpPatch && q.ImageRef == rec.DesiredImageRef &&
			q.OldImageRef != "" && q.OldImageRef != q.ImageRef {
			return q.OldImageRef
		}
	}
	return ""
}

// patch replaces the running container of oldImage with one of the desired image, keeping the
// state dir and the endpoint. The new engine must start and pass its probe within
// PatchVerifyTimeout; if it does not, the previous image is started again and the patch is
// answered patch_rolled_back. An image that cannot be had changes nothing: the old engine keeps
// running and the patch is answered image_pull_failed.
func (r *GameReconciler) patch(s *scope, oldImage string) (*rtm.Change, error) {
	newImage, gen := s.rec.DesiredImageRef, s.rec.Generation
	s.log = s.log.With("old_image_ref", oldImage, "new_image_ref", newImage)
	if err := s.rt.EnsureImage(s.ctx, newImage); err != nil {
		if retryable(ActCreate, err) {
			return nil, err
		}
		a := rtm.Failed(err, rtm.CodeImagePullFailed)
		return change(a, s.c.ID, func(x *rtm.Record, current bool) { x.PatchRefused(oldImage, a, gen, current) }), nil
	}
	if err := r.discard(s, s.c); err != nil {
		return nil, err
	}
	return r.launchPatch(s, oldImage, newImage)
}

// resumePatch finishes an interrupted patch from oldImage: the running engine of the new image
// is verified again, or one is launched (whatever container is left is discarded first), then
// kept or rolled back, as the patch itself would have done.
func (r *GameReconciler) resumePatch(s *scope, oldImage string) (*rtm.Change, error) {
	newImage := s.rec.DesiredImageRef
	s.log = s.log.With("old_image_ref", oldImage, "new_image_ref", newImage)
	if c := s.c; c != nil && c.Running() && c.ImageRef == newImage {
		s.log.Info("resuming an interrupted patch", "container_id", c.ID)
		return r.finishPatch(s, c.ID, oldImage, newImage, nil)
	}
	s.log.Info("resuming an interrupted patch")
	if s.c != nil {
		if err := r.discard(s, s.c); err != nil {
			return nil, err
		}
	}
	return r.launchPatch(s, oldImage, newImage)
}

// launchPatch launches the new engine, shows it on the record as under verification, and
// finishes the patch.
func (r *GameReconciler) launchPatch(s *scope, oldImage, newImage string) (*rtm.Change, error) {
	id, err := r.launch(s, newImage, s.rt.Start)
	if err == nil {
		ch := rtm.Change{GameID: s.gameID, Gen: s.rec.Generation, Epoch: s.rec.FenceEpoch,
			Apply: func(x *rtm.Record, _ bool) { x.Verifying(id, newImage) }}
		if _, cerr := r.store.Commit(s.ctx, ch); cerr != nil {
			return nil, fromStore(cerr)
		}
	}
	return r.finishPatch(s, id, oldImage, newImage, err)
}

// finishPatch verifies the new engine id (unless err says it could not be launched) and returns
// the change that records the patch; or removes it and starts oldImage again, and returns the
// change that answers patch_rolled_back. A failure that is not the engine's (the daemon or the
// store unreachable, the lease lost) is returned instead, to be retried: a healthy engine is
// never rolled back for it.
func (r *GameReconciler) finishPatch(s *scope, id, oldImage, newImage string, err error) (*rtm.Change, error) {
	if err == nil {
		err = r.verify(s, id)
	}
	gen := s.rec.Generation
	if err == nil {
		s.log.Info("engine patched", "container_id", id)
		return change(rtm.Succeeded, id, func(x *rtm.Record, _ bool) { x.Started(id, newImage, gen) },
			startedEvent(s.gameID, id)), nil
	}
	if retryable(ActCreate, err) {
		return nil, err
	}
	cause := err
	s.log.Warn("patched engine failed, rolling back", "error", cause)
	if id != "" {
		if err := s.rt.Remove(s.ctx, id); err != nil && !errors.Is(err, rtm.ErrNotFound) {
			return nil, err
		}
	} else if cur, ierr := s.rt.Inspect(s.ctx, s.gameID); ierr == nil && cur.Owned {
		if err := r.discard(s, &cur); err != nil {
			return nil, err
		}
	}
	back, err := r.launch(s, oldImage, s.rt.Start)
	if err != nil {
		if retryable(ActCreate, err) {
			return nil, err
		}
		return nil, rtm.Errorf(rtm.CodeContainerStartFailed, "rolling back to %s after %s: %s", oldImage,
			rtm.MessageOf(cause), rtm.MessageOf(err))
	}
	a := rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodePatchRolledBack,
		Message: fmt.Sprintf("%s failed (%s); %s runs again", newImage, rtm.MessageOf(cause), oldImage)}
	s.log.Info("patch rolled back", "container_id", back)
	return change(a, back, func(x *rtm.Record, current bool) { x.RolledBack(back, oldImage, a, gen, current) },
		startedEvent(s.gameID, back)), nil
}

// verify waits until the new engine answers its probe. It gives up (with a coded error) when the
// engine exits, when it answers unhealthy ProbeThreshold times in a row (probed ProbeInterval
// apart: it is up and says it is sick), or after PatchVerifyTimeout without one good answer (it
// never came up). An inspection that fails is not the engine's failure: it is returned as it is,
// uncoded, and the patch is verified again on the next try.
func (r *GameReconciler) verify(s *scope, id string) error {
	if r.prober == nil {
		return nil
	}
	deadline := time.Now().Add(r.opts.PatchVerifyTimeout)
	every := min(r.opts.ProbeInterval, 250*time.Millisecond)
	threshold := max(r.opts.ProbeThreshold, 1)
	var (
		last        error
		unhealthy   int
		lastCounted time.Time
	)
	for {
		c, err := s.rt.Inspect(s.ctx, s.gameID)
		switch {
		case errors.Is(err, rtm.ErrNotFound):
			return rtm.Errorf(rtm.CodeContainerStartFailed, "the engine's container is gone")
		case err != nil:
			return fmt.Errorf("verifying the patched engine: %w", err)
		case c.ID != id || !c.Running():
			return rtm.Errorf(rtm.CodeContainerStartFailed, "the engine exited with code %d", c.ExitCode)
		}
		if last = r.prober.Probe(s.ctx, c, s.rec.EngineEndpoint); last == nil {
			return nil
		}
		if errors.Is(last, rtm.ErrUnhealthy) && time.Since(lastCounted) >= r.opts.ProbeInterval {
			unhealthy, lastCounted = unhealthy+1, time.Now()
			if unhealthy >= threshold {
				return rtm.Errorf(rtm.CodeContainerStartFailed, "the engine failed %d probes in a row: %v", unhealthy, last)
			}
		}
		if time.Now().Add(every).After(deadline) {
			return rtm.Errorf(rtm.CodeContainerStartFailed, "the engine did not pass its probe within %s: %v", r.opts.PatchVerifyTimeout, last)
		}
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-time.After(every):
		}
	}
}
