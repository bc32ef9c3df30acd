package rtmanager

// Admission is what a request does to a game's record, decided when the request arrives.
type Admission struct {
	// Answer, when set, answers the request at once: a no-op success or a refusal.
	Answer *Answer
	// Write asks for Record to be stored (inserted or updated) as the game's new desired state.
	Write  bool
	Record Record
	// Discard asks for nothing to be stored: the request, refused by Answer, is answered by its
	// caller alone (a REST refusal; see Intake).
	Discard bool
}

// Settings are the parts of configuration admission needs.
type Settings struct {
	EnginePort    int
	StateRootJoin func(gameID string) string // state dir of a game
}

// Admit decides what req does to rec (nil when the game has no record). busy reports that another
// request of a different kind is still pending for the game. It is pure: the store applies the
// result in the transaction that records the request.
//
// The rules (CONTRACT §5, §6):
//   - start: a game running (or about to run) the same image answers succeeded at once when
//     settled, else joins the pending work; another image for a running game is conflict; any
//     other state asks for the game to run the image. Images are compared by SameImage, so
//     another spelling of the image is the same image.
//   - stop: an unknown game is runtime_not_found; a game not running is succeeded at once;
//     otherwise the game should stop.
//   - restart: needs a record with an image; asks for a fresh container with the current image
//     (CONTRACT §6): the one the game runs or last ran (kept after a dispose), not one a pending
//     or failed start or patch asked for; the desired image only when the game never ran.
//   - patch: needs a running game; asks for the new image (validation happened before).
//   - cleanup_container: refused with runtime_running while running; else the container goes.
//
// REST requests (busy) are refused with conflict while another kind of request is in flight; jobs
// are not, since Lobby's latest word wins.
func Admit(rec *Record, req Request, busy bool, s Settings) Admission {
	refuse := func(code ErrorCode, format string, args ...any) Admission {
		e := Errorf(code, format, args...)
		a := Answer{Outcome: OutcomeFailed, Code: e.Code, Message: e.Message}
		return Admission{Answer: &a}
	}
	if rec == nil && req.Kind != OpStart {
		return refuse(CodeRuntimeNotFound, "game %s has no runtime", req.GameID)
	}
	if busy && req.Channel == ChannelREST {
		return refuse(CodeConflict, "another operation on game %s is in progress", req.GameID)
	}
	next := Record{}
	if rec != nil {
		next = *rec
	}
	want := func(d DesiredState) Admission {
		next.DesiredState = d
		next.Generation++
		next.LastErrorCode, next.LastErrorMessage = "", ""
		return Admission{Write: true, Record: next}
	}
	active := rec != nil && (rec.Status == StatusRunning || rec.Status == StatusStarting || rec.Status == StatusStopping)
	switch req.Kind {
	case OpStart:
		if rec == nil {
			next = Record{
				GameID:         req.GameID,
				Status:         StatusStarting,
				EngineEndpoint: EngineEndpoint(req.GameID, s.EnginePort),
				StateDir:       s.StateRootJoin(req.GameID),
			}
			next.DesiredImageRef = req.ImageRef
			return want(DesiredRunning)
		}
		if rec.DesiredState == DesiredRunning && SameImage(rec.DesiredImageRef, req.ImageRef) {
			if rec.Settled() && rec.Status == StatusRunning {
				return Admission{Answer: &Succeeded}
			}
			if !rec.Settled() {
				return Admission{} // joins the pending start
			}
		}
		if rec.DesiredState == DesiredRunning && active && !SameImage(rec.DesiredImageRef, req.ImageRef) {
			return refuse(CodeConflict, "game %s runs %s; patch it to change the image", req.GameID, rec.DesiredImageRef)
		}
		next.DesiredImageRef = req.ImageRef
		next.Status = StatusStarting
		next.EngineEndpoint = EngineEndpoint(req.GameID, s.EnginePort)
		if next.StateDir == "" {
			next.StateDir = s.StateRootJoin(req.GameID)
		}
		return want(DesiredRunning)
	case OpStop:
		// A game whose last stop failed (the daemon refused it) may still run: stop it again.
		if rec.DesiredState != DesiredRunning && rec.Settled() && !active && rec.Status != StatusFailed {
			return Admission{Answer: &Succeeded}
		}
		if rec.DesiredState == DesiredStopped && !rec.Settled() {
			return Admission{}
		}
		return want(DesiredStopped)
	case OpRestart:
		img := rec.CurrentImageRef
		if img == "" {
			img = rec.DesiredImageRef
		}
		if img == "" {
			return refuse(CodeConflict, "game %s has no image to restart", req.GameID)
		}
		next.DesiredImageRef = img
		next.ContainerGeneration = next.Generation + 1
		return want(DesiredRunning)
	case OpPatch:
		if rec.Status != StatusRunning || rec.DesiredState != DesiredRunning {
			return refuse(CodeConflict, "game %s is %s; only a running game can be patched", req.GameID, rec.Status)
		}
		if SameImage(rec.DesiredImageRef, req.ImageRef) && SameImage(rec.CurrentImageRef, req.ImageRef) {
			return Admission{Answer: &Succeeded}
		}
		next.DesiredImageRef = req.ImageRef
		return want(DesiredRunning)
	case OpCleanupContainer:
		if rec.Status == StatusRunning || rec.Status == StatusStarting || rec.DesiredState == DesiredRunning && !rec.Settled() {
			return refuse(CodeRuntimeRunning, "game %s is running; stop it first", req.GameID)
		}
		if rec.Status == StatusRemoved && rec.Settled() {
			return Admission{Answer: &Succeeded}
		}
		return want(DesiredRemoved)
	}
	return refuse(CodeInvalidRequest, "unknown operation %q", req.Kind)
}

// TargetOf returns the desired state an operation kind asks for.
func TargetOf(k OpKind) DesiredState {
	switch k {
	case OpStop:
		return DesiredStopped
	case OpCleanupContainer:
		return DesiredRemoved
	}
	return DesiredRunning
}

// Submission is what became of a submitted request.
type Submission struct {
	// Duplicate: the request was seen before (same channel and request id); nothing was done.
	Duplicate bool
	// Answer is set when the request was answered at once.
	Answer *Answer
	// Discarded: Answer refused the request and nothing was stored (Admission.Discard).
	Discarded bool
	// Request is the request as stored (with its generation).
	Request Request
	// Record is the game's record after the request, nil when it has none.
	Record *Record
}

// Admitter decides what a request does to a record; see Admit.
type Admitter func(rec *Record, busy bool) Admission
