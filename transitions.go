package rtmanager

// The named transitions of a runtime record. The reconciler writes a record only through these,
// so that each field that a transition makes stale is cleared by it, the same way on every path:
//   - last_error_code/message say why the game is failed, or why its last patch did not take
//     (RolledBack, PatchRefused); every other transition clears them.
//   - a record that says removed has no container id and no exit code (gone(), whichever path
//     found it removed: RTM's removal, a container that vanished, a converged removal).
//   - exit_code belongs to the container that exited; a start clears it.
// Each takes the generation the reconciler acted for (gen) and marks it observed where the
// transition settles the work asked for.

// Started records that the game's engine container id runs image: the work up to gen is done and
// any earlier error or exit code no longer applies.
func (r *Record) Started(id, image string, gen int64) {
	r.Status, r.CurrentContainerID, r.CurrentImageRef = StatusRunning, id, image
	r.ExitCode = nil
	r.LastErrorCode, r.LastErrorMessage = "", ""
	r.observe(gen)
}

// Verifying records that container id of image has been created for a patch and is being
// verified: the record shows the engine under verification, not the one it replaces. The work
// is not done yet.
func (r *Record) Verifying(id, image string) {
	r.Status, r.CurrentContainerID, r.CurrentImageRef = StatusStarting, id, image
	r.ExitCode = nil
}

// RolledBack records a patch that failed: container id runs oldImage again. When current (no
// request arrived since gen), the desired image goes back to oldImage too, so that the game is
// not patched again by the next reconcile; the patch's failure stays as the last error.
func (r *Record) RolledBack(id, oldImage string, a Answer, gen int64, current bool) {
	if current {
		r.DesiredImageRef = oldImage
	}
	r.Status, r.CurrentContainerID, r.CurrentImageRef, r.ExitCode = StatusRunning, id, oldImage, nil
	r.LastErrorCode, r.LastErrorMessage = a.Code, a.Message
	r.observe(gen)
}

// PatchRefused records a patch whose image could not be had: the old engine keeps running, and
// when current the desired image goes back to it.
func (r *Record) PatchRefused(oldImage string, a Answer, gen int64, current bool) {
	if current {
		r.DesiredImageRef = oldImage
	}
	r.Status, r.LastErrorCode, r.LastErrorMessage = StatusRunning, a.Code, a.Message
	r.observe(gen)
}

// Stopped records that RTM stopped container id, which exited with exit.
func (r *Record) Stopped(id string, exit *int, gen int64) {
	r.Status, r.ExitCode, r.CurrentContainerID, r.ExitReportedContainer = StatusStopped, exit, id, id
	r.LastErrorCode, r.LastErrorMessage = "", ""
	r.observe(gen)
}

// ContainerRemoved records that RTM removed the game's container id.
func (r *Record) ContainerRemoved(id string, gen int64) {
	r.gone()
	r.ExitReportedContainer = id
	r.observe(gen)
}

// Failed records a terminal failure of the work up to gen: the record says failed with the
// answer's code and message. The container RTM was acting on is kept when it still exists (a
// stop the daemon refused leaves it running), forgotten otherwise.
func (r *Record) Failed(a Answer, keepContainer string, gen int64) {
	r.Status, r.LastErrorCode, r.LastErrorMessage = StatusFailed, a.Code, a.Message
	r.CurrentContainerID = keepContainer
	r.observe(gen)
}

// Converged records that the world already is as asked: status, and the container observed (nil
// when there is none).
func (r *Record) Converged(status Status, c *Container, gen int64) {
	r.Status = status
	switch {
	case c != nil:
		r.CurrentContainerID, r.CurrentImageRef = c.ID, c.ImageRef
	case status == StatusRemoved:
		r.gone()
	}
	if status == StatusRunning {
		r.ExitCode = nil
		r.LastErrorCode, r.LastErrorMessage = "", ""
	}
	r.observe(gen)
}

// Disposed records that the game's container vanished behind RTM's back. When current, nobody
// asked for anything since: the game is wanted removed, as it is.
func (r *Record) Disposed(current bool) {
	r.gone()
	if current {
		r.DesiredState = DesiredRemoved
	}
}

// ExitedAlone records that container id exited by itself with exit. When current, the game is
// wanted stopped, as it is (RTM restarts nothing unasked).
func (r *Record) ExitedAlone(id string, exit int, current bool) {
	r.Status, r.ExitCode, r.CurrentContainerID, r.ExitReportedContainer = StatusExited, IntPtr(exit), id, id
	r.LastErrorCode, r.LastErrorMessage = "", ""
	if current {
		r.DesiredState = DesiredStopped
	}
}

// Synced brings the record in line with container c that nobody asked to change (started or
// replaced by hand).
func (r *Record) Synced(c Container) {
	r.CurrentContainerID, r.CurrentImageRef = c.ID, c.ImageRef
	r.LastErrorCode, r.LastErrorMessage = "", ""
	if c.Running() {
		r.Status, r.ExitCode = StatusRunning, nil
	} else {
		r.Status, r.ExitCode = StatusExited, IntPtr(c.ExitCode)
	}
}

// gone records that the game has no container any more: the image it last ran stays (a restart
// after a dispose uses it, CONTRACT §6), what belonged to the container goes.
func (r *Record) gone() {
	r.Status, r.CurrentContainerID, r.ExitCode = StatusRemoved, "", nil
	r.LastErrorCode, r.LastErrorMessage = "", ""
}

func (r *Record) observe(gen int64) { r.ObservedGeneration = max(r.ObservedGeneration, gen) }
