package rtmanager

import (
	"context"
	"errors"
	"fmt"
)

// ErrGameIDCaseTaken is the store's refusal to record a game whose id differs only in case from a
// recorded game's: Docker's DNS does not tell ids apart by case, so their engines' names would
// collide on the network. Nothing was written.
var ErrGameIDCaseTaken = errors.New("game id differs only in case from a recorded game's")

// Recorder records a request and what admission decides for it in one transaction, under the
// game's record lock (the PostgreSQL store's Submit).
type Recorder interface {
	Submit(ctx context.Context, req Request, admit Admitter) (Submission, error)
}

// Guard refuses a request on the game's record as it stands under the lock (nil when the game has
// none), before the admission rules; it returns nil to let them decide. REST's patch uses it to
// refuse a patch whose game changed image while the patch was checked.
type Guard func(rec *Record) *Answer

// Intake is the one way a request becomes work, whichever channel it came on: the start and stop
// job consumers and the REST API all call Take. It validates the request, admits it under the
// game's record lock (Admit), records it with its admission (desired state, and an answer when
// admission answers at once) and enqueues the game when the reconciler has work to do.
//
// A refusal is recorded for a job, whose result RTM publishes from the record exactly once; a
// REST request's refusal is not (the HTTP answer carries it, and the operation log keeps what RTM
// did or tried to do), so a refused REST request changes nothing.
type Intake struct {
	Store    Recorder
	Enqueue  func(gameID string)
	Settings Settings
	// Allowed lists the image repositories a start may name (RTMANAGER_ALLOWED_IMAGE_REPOSITORIES).
	Allowed []string
}

// Take validates, admits, records and enqueues req (see Intake). A start's image is validated
// against Allowed and stored in its one spelling (ImageRef.Ref); a patch's image is the caller's
// to check, since it depends on the image the game runs. The returned Submission says what became
// of req: Duplicate (a job seen before: nothing was done), Answer (answered at once, recorded
// unless Discarded), or neither (recorded, its game enqueued; the reconciler answers it).
func (in *Intake) Take(ctx context.Context, req Request, guard Guard) (Submission, error) {
	rest := req.Channel == ChannelREST
	var refusal *Answer
	if req.Kind == OpStart {
		img, err := ValidateStartImage(req.ImageRef, in.Allowed)
		if err != nil {
			a := Failed(err, CodeStartConfigInvalid)
			if rest {
				return Submission{Answer: &a, Request: req, Discarded: true}, nil
			}
			refusal = &a
		} else {
			req.ImageRef = img.Ref // one spelling per image: see ImageRef.Ref
		}
	}
	admit := func(rec *Record, busy bool) Admission {
		adm := Admission{Answer: refusal}
		if adm.Answer == nil && guard != nil {
			adm.Answer = guard(rec)
		}
		if adm.Answer == nil {
			adm = Admit(rec, req, busy, in.Settings)
		}
		adm.Discard = rest && adm.Answer != nil && adm.Answer.Outcome != OutcomeSucceeded
		return adm
	}
	sub, err := in.Store.Submit(ctx, req, admit)
	if errors.Is(err, ErrGameIDCaseTaken) {
		a := Answer{Outcome: OutcomeFailed, Code: CodeConflict, Message: fmt.Sprintf(
			"game %s differs only in case from a recorded game; their engines' DNS names would collide", req.GameID)}
		if rest {
			return Submission{Answer: &a, Request: req, Discarded: true}, nil
		}
		// Nothing was written; record the job again, refused.
		sub, err = in.Store.Submit(ctx, req, func(*Record, bool) Admission { return Admission{Answer: &a} })
	}
	if err != nil {
		return Submission{}, fmt.Errorf("recording request %s: %w", req.RequestID, err)
	}
	if !sub.Duplicate && sub.Answer == nil && in.Enqueue != nil {
		in.Enqueue(req.GameID)
	}
	return sub, nil
}

// ValidateStartImage parses ref and checks it against the allow-list; any failure is
// start_config_invalid, the code a start job or a REST start gets. A start must carry the
// returned ImageRef.Ref, not ref: another spelling of the image a game runs is the same image.
func ValidateStartImage(ref string, allowed []string) (ImageRef, error) {
	img, err := ParseImageRef(ref)
	if err != nil {
		return ImageRef{}, &Error{Code: CodeStartConfigInvalid, Message: MessageOf(err), Err: err}
	}
	if err := img.CheckAllowed(allowed); err != nil {
		return ImageRef{}, err
	}
	return img, nil
}

// CheckPatch validates a patch from current to next: both semver (image_ref_not_semver), the
// same major and minor (semver_patch_only), and next's repository allowed (start_config_invalid).
// A patch must carry the returned ImageRef.Ref, next in its canonical spelling.
func CheckPatch(current, next string, allowed []string) (ImageRef, error) {
	cur, err := ParseImageRef(current)
	if err != nil {
		return ImageRef{}, Errorf(CodeImageRefNotSemver, "current image_ref %q: %s", current, MessageOf(err))
	}
	nxt, err := ParseImageRef(next)
	if err != nil {
		if CodeOf(err, "") == CodeImageRefNotSemver {
			return ImageRef{}, err
		}
		return ImageRef{}, Errorf(CodeImageRefNotSemver, "%s", MessageOf(err))
	}
	if cur.Version.Major() != nxt.Version.Major() || cur.Version.Minor() != nxt.Version.Minor() {
		return ImageRef{}, Errorf(CodeSemverPatchOnly, "patch from %s to %s changes the major or minor version", cur.Tag, nxt.Tag)
	}
	if err := nxt.CheckAllowed(allowed); err != nil {
		return ImageRef{}, err
	}
	return nxt, nil
}

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
	// EngineHost, when set, is the host name of a game's engine (the Kubernetes runtime's
	// Service name); nil means ContainerName, the contract's.
	EngineHost func(gameID string) string
}

// Endpoint is the engine_endpoint of a game.
func (s Settings) Endpoint(gameID string) string {
	if s.EngineHost != nil {
		return fmt.Sprintf("http://%s:%d", s.EngineHost(gameID), s.EnginePort)
	}
	return EngineEndpoint(gameID, s.EnginePort)
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
				EngineEndpoint: s.Endpoint(req.GameID),
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
		next.EngineEndpoint = s.Endpoint(req.GameID)
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
