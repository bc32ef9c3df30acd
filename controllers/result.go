package controllers

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rtm "github.com/galaxy-platform/rtmanager"
)

// outcome is how one reconcile ended. Every step returns one; result turns it into the
// controller's answer in one place.
type outcome struct {
	kind  outcomeKind
	after time.Duration // waiting: how soon to look again
	err   error         // transient and terminal: why
}

type outcomeKind int

const (
	// done: the game is as asked, or its request is answered and recorded. Nothing to do until
	// something changes (a request, an event, a sweep).
	done outcomeKind = iota
	// waiting: something outside RTM must happen first (another process holds the lease, a
	// container is being created by hand): look again after a given time.
	waiting
	// transient: a dependency failed; back off and retry (the rate limiter's per-game
	// exponential backoff), within the request's retry budget.
	transient
	// terminal: the game id cannot be reconciled at all; never retried.
	terminal
)

func finished() outcome                   { return outcome{kind: done} }
func waitFor(d time.Duration) outcome     { return outcome{kind: waiting, after: d} }
func retryAfterFailure(err error) outcome { return outcome{kind: transient, err: err} }
func cannotReconcile(err error) outcome   { return outcome{kind: terminal, err: err} }

func (o outcome) String() string {
	return [...]string{"done", "waiting", "transient", "terminal"}[o.kind]
}

// result is the one place an outcome becomes controller-runtime's answer: done forgets the game,
// waiting requeues it after the given time, transient returns the error (the rate limiter backs
// off), terminal is never retried.
func result(o outcome) (reconcile.Result, error) {
	switch o.kind {
	case waiting:
		return reconcile.Result{RequeueAfter: o.after}, nil
	case transient:
		return reconcile.Result{}, o.err
	case terminal:
		return reconcile.Result{}, reconcile.TerminalError(o.err)
	}
	return reconcile.Result{}, nil
}

// storeError marks a failure of the store (PostgreSQL): retried without spending the request's
// retry budget, since nothing can be recorded while the store is away anyway.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

func fromStore(err error) error {
	if err == nil {
		return nil
	}
	return &storeError{err}
}

// retryBudget counts, per game and generation, how often a request's runtime work has failed and
// since when. It lives in memory: a restarted process starts counting again, which bounds the
// extra tries to one budget per restart.
type retryBudget struct {
	attempts int
	window   time.Duration
	now      func() time.Time

	mu     sync.Mutex
	byGame map[string]spent
}

type spent struct {
	gen   int64
	n     int
	first time.Time
}

func newRetryBudget(attempts int, window time.Duration) *retryBudget {
	return &retryBudget{attempts: attempts, window: window, now: time.Now, byGame: map[string]spent{}}
}

// spend records one failure of gen's work on gameID and reports whether it may be retried: it
// may until it has failed attempts times and window has passed since its first failure. The
// error it returns when not says how long and how often it was tried.
func (b *retryBudget) spend(gameID string, gen int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.byGame[gameID]
	if !ok || s.gen != gen {
		s = spent{gen: gen, first: b.now()}
	}
	s.n++
	b.byGame[gameID] = s
	if elapsed := b.now().Sub(s.first); s.n >= b.attempts && elapsed >= b.window {
		return fmt.Errorf("gave up after %d attempts in %s", s.n, elapsed.Round(time.Millisecond))
	}
	return nil
}

// forget drops gameID's count: its work is done or answered.
func (b *retryBudget) forget(gameID string) {
	b.mu.Lock()
	delete(b.byGame, gameID)
	b.mu.Unlock()
}

// startsUnderWay remembers, per game, the container this process left starting (a Pod on its
// way: *rtm.Starting), until when the runtime gives it, and the lease's epoch and the requests it
// was started for, so that
//   - a reconcile woken by an event that does not change that (the Pod appeared, was scheduled)
//     ends on the cache's word, without the lease and its fencing write;
//   - once the engine runs, the start is settled by one write made on that epoch, again without
//     the lease and a second fencing write (settleStarted).
//
// An event that does change it (the engine runs, it cannot start, it is gone) makes the cache
// say so, and the reconcile goes on.
type startsUnderWay struct {
	now func() time.Time

	mu     sync.Mutex
	byGame map[string]underWay
}

type underWay struct {
	id       string
	deadline time.Time
	// epoch and gen are the fenced record's when the start was begun; pending, its requests.
	epoch, gen int64
	pending    []rtm.Request
}

func newStartsUnderWay() *startsUnderWay {
	return &startsUnderWay{now: time.Now, byGame: map[string]underWay{}}
}

// note remembers that container id, begun in scope s, is starting for within more.
func (u *startsUnderWay) note(s *scope, id string, within time.Duration) {
	u.mu.Lock()
	u.byGame[s.gameID] = underWay{id: id, deadline: u.now().Add(within),
		epoch: s.rec.FenceEpoch, gen: s.rec.Generation, pending: s.pending}
	u.mu.Unlock()
}

// begun returns what was noted of gameID's start when container id is the one this process left
// starting.
func (u *startsUnderWay) begun(gameID, id string) (underWay, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	w, ok := u.byGame[gameID]
	return w, ok && w.id == id
}

// wait returns how long to leave gameID alone when its container id is the one left starting
// and the runtime's time for it has not run out; ok is false otherwise (and the note is dropped).
func (u *startsUnderWay) wait(gameID, id string) (time.Duration, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	w, ok := u.byGame[gameID]
	if !ok {
		return 0, false
	}
	left := w.deadline.Sub(u.now())
	if w.id != id || left <= 0 {
		delete(u.byGame, gameID)
		return 0, false
	}
	return left, true
}

func (u *startsUnderWay) forget(gameID string) {
	u.mu.Lock()
	delete(u.byGame, gameID)
	u.mu.Unlock()
}

// retryable reports whether a failure of act is worth retrying within the budget: any failure
// of a stop or a removal (the daemon may refuse for a while: a container being restarted, a
// busy daemon), and for the others any failure that carries no contract code (a daemon or store
// that cannot be reached). A failure with a code (an image that cannot be pulled, an engine that
// will not start) is the answer at once.
func retryable(act Action, err error) bool {
	var coded *rtm.Error
	switch {
	case errors.As(err, &coded) && act != ActStop && act != ActRemove:
		return false
	case errors.Is(err, rtm.ErrFenced):
		return false
	}
	return true
}

// answerFor is the failed answer of act for err: the code err carries, else the action's
// fallback (container_start_failed for what starts an engine; service_unavailable for a stop or
// removal that could not reach the daemon, internal_error for one the daemon refused), with the
// daemon's own words as the message.
func answerFor(act Action, err error) rtm.Answer {
	fallback := rtm.CodeContainerStartFailed
	if act == ActStop || act == ActRemove {
		fallback = rtm.CodeInternalError
		if errors.Is(err, rtm.ErrUnavailable) {
			fallback = rtm.CodeServiceUnavailable
		}
	}
	return rtm.Failed(err, fallback)
}
