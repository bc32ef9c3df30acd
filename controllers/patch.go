package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// patch replaces a running container with one of the desired image, keeping the state dir and
// the endpoint. The new engine must start and pass its probe within PatchVerifyTimeout; if it does
// not, the previous image is started again and the patch is answered patch_rolled_back.
func (r *GameReconciler) patch(ctx context.Context, log *slog.Logger, rec *rtm.Record, c *rtm.Container) error {
	oldImage, newImage := c.ImageRef, rec.DesiredImageRef
	log = log.With("old_image_ref", oldImage, "new_image_ref", newImage)
	// An image that cannot be had changes nothing: the old engine keeps running.
	if err := r.runtime.EnsureImage(ctx, newImage); err != nil {
		if transient(err) {
			return err
		}
		a := rtm.Failed(err, rtm.CodeImagePullFailed)
		_, cerr := r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Answer: &a, ContainerID: c.ID,
			Apply: func(x *rtm.Record, current bool) {
				if current {
					x.DesiredImageRef = oldImage
				}
				x.Status, x.LastErrorCode, x.LastErrorMessage = rtm.StatusRunning, a.Code, a.Message
				x.ObservedGeneration = max(x.ObservedGeneration, rec.Generation)
			}})
		return cerr
	}
	if err := r.markStopping(ctx, rec); err != nil {
		return err
	}
	if err := r.discard(ctx, c); err != nil {
		return err
	}
	id, err := r.launch(ctx, rec, newImage)
	if err == nil {
		// Show the engine under verification, not the stopped one it replaces.
		_, err = r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Apply: func(x *rtm.Record, _ bool) {
			x.Status, x.CurrentContainerID, x.CurrentImageRef = rtm.StatusStarting, id, newImage
		}})
	}
	return r.finishPatch(ctx, log, rec, id, oldImage, newImage, err)
}

// pendingPatch returns the image a pending patch of rec replaces, or "" when no patch is pending.
// A reconcile that would finish such a game another way (settle a running engine of the new
// image, create or start one) is finishing a patch whose own reconcile never completed (its
// process died or lost the lease): it must verify the new engine as the patch would have, or it
// would report an engine that never passed its probe as patched.
func pendingPatch(rec *rtm.Record, pending []rtm.Request) string {
	if rec.DesiredState != rtm.DesiredRunning {
		return ""
	}
	for _, q := range pending {
		if q.Kind == rtm.OpPatch && q.ImageRef == rec.DesiredImageRef && q.OldImageRef != "" && q.OldImageRef != q.ImageRef &&
			q.Generation <= rec.Generation {
			return q.OldImageRef
		}
	}
	return ""
}

// resumePatch finishes an interrupted patch from oldImage: the running engine of the new image
// is verified again, or one is launched (whatever container is left is discarded first), then
// kept or rolled back, as the patch itself would have done.
func (r *GameReconciler) resumePatch(ctx context.Context, log *slog.Logger, rec *rtm.Record, c *rtm.Container, oldImage string) error {
	newImage := rec.DesiredImageRef
	log = log.With("old_image_ref", oldImage, "new_image_ref", newImage)
	if c != nil && c.Running() && c.ImageRef == newImage {
		log.InfoContext(ctx, "resuming an interrupted patch", "container_id", c.ID)
		return r.finishPatch(ctx, log, rec, c.ID, oldImage, newImage, nil)
	}
	log.InfoContext(ctx, "resuming an interrupted patch")
	if c != nil {
		if err := r.discard(ctx, c); err != nil {
			return err
		}
	}
	id, err := r.launch(ctx, rec, newImage)
	if err == nil {
		_, err = r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Apply: func(x *rtm.Record, _ bool) {
			x.Status, x.CurrentContainerID, x.CurrentImageRef = rtm.StatusStarting, id, newImage
		}})
	}
	return r.finishPatch(ctx, log, rec, id, oldImage, newImage, err)
}

// finishPatch verifies the new engine id (unless err says it could not be launched) and records
// the patch, or removes it and starts oldImage again and answers patch_rolled_back.
func (r *GameReconciler) finishPatch(ctx context.Context, log *slog.Logger, rec *rtm.Record, id, oldImage, newImage string, err error) error {
	if err == nil {
		err = r.verify(ctx, rec, id)
	}
	if err == nil {
		_, err = r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Answer: &rtm.Succeeded, ContainerID: id,
			Apply: func(x *rtm.Record, _ bool) {
				x.Status, x.CurrentContainerID, x.CurrentImageRef, x.ExitCode = rtm.StatusRunning, id, newImage, nil
				x.LastErrorCode, x.LastErrorMessage = "", ""
				x.ObservedGeneration = max(x.ObservedGeneration, rec.Generation)
			},
			Events: []rtm.HealthEvent{startedEvent(rec.GameID, id)}})
		if err == nil {
			log.InfoContext(ctx, "engine patched", "container_id", id)
		}
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	cause := err
	log.WarnContext(ctx, "patched engine failed, rolling back", "error", cause)
	if id != "" {
		if err := r.runtime.Remove(ctx, id); err != nil && transient(err) {
			return err
		}
	} else if cur, ierr := r.runtime.Inspect(ctx, rec.GameID); ierr == nil && cur.Owned {
		if err := r.discard(ctx, &cur); err != nil {
			return err
		}
	}
	back, err := r.launch(ctx, rec, oldImage)
	if err != nil {
		if transient(err) {
			return err
		}
		return r.fail(ctx, log, rec, fmt.Errorf("rolling back to %s after %v: %w", oldImage, cause, err))
	}
	a := rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodePatchRolledBack,
		Message: fmt.Sprintf("%s failed (%s); %s runs again", newImage, rtm.MessageOf(cause), oldImage)}
	_, err = r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Answer: &a, ContainerID: back,
		Apply: func(x *rtm.Record, current bool) {
			if current {
				x.DesiredImageRef = oldImage
			}
			x.Status, x.CurrentContainerID, x.CurrentImageRef, x.ExitCode = rtm.StatusRunning, back, oldImage, nil
			x.LastErrorCode, x.LastErrorMessage = a.Code, a.Message
			x.ObservedGeneration = max(x.ObservedGeneration, rec.Generation)
		},
		Events: []rtm.HealthEvent{startedEvent(rec.GameID, back)}})
	if err == nil {
		log.InfoContext(ctx, "patch rolled back", "container_id", back)
	}
	return err
}

// verify waits until the new engine answers its probe. It gives up when the engine exits, when
// it answers unhealthy ProbeThreshold times in a row (probed ProbeInterval apart: it is up and
// says it is sick), or after PatchVerifyTimeout without one good answer (it never came up).
func (r *GameReconciler) verify(ctx context.Context, rec *rtm.Record, id string) error {
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
		c, err := r.runtime.Inspect(ctx, rec.GameID)
		if err != nil {
			return err
		}
		if c.ID != id || !c.Running() {
			return rtm.Errorf(rtm.CodeContainerStartFailed, "the engine exited with code %d", c.ExitCode)
		}
		if last = r.prober.Probe(ctx, c, rec.EngineEndpoint); last == nil {
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
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}
