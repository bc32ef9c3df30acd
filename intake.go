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
