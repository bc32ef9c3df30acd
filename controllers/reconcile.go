package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Reconcile brings one game closer to its desired state. Its steps, in order, each of which may
// end it:
//
//  1. observe: the game's container, from the cache or an inspection;
//  2. decide: on the record and that observation, whether anything is to be done at all;
//  3. record drift: what only needs recording is decided again and recorded under the lease
//     (drift.go), on an observation made under the lease;
//  4. lock: take the lease, fence the record (bump its epoch) and observe afresh, and decide again
//     on what is now true;
//  5. act, and commit once: the action's change is written with the lease's epoch, or its
//     failure is retried within the request's budget, or answered and recorded.
//
// result turns the outcome into the controller's answer.
func (r *GameReconciler) Reconcile(ctx context.Context, gameID string) (reconcile.Result, error) {
	ctx, span := r.tracer.Start(ctx, "reconcile", trace.WithAttributes(attribute.String("game_id", gameID)))
	defer span.End()
	o := r.reconcile(ctx, gameID)
	span.SetAttributes(attribute.String("outcome", o.String()))
	if o.err != nil {
		span.RecordError(o.err)
		span.SetStatus(codes.Error, o.err.Error())
	}
	return result(o)
}

func (r *GameReconciler) reconcile(ctx context.Context, gameID string) outcome {
	if err := rtm.ValidateGameID(gameID); err != nil {
		return cannotReconcile(fmt.Errorf("invalid game id %q: %w", gameID, err))
	}
	c, seen, err := r.observe(ctx, gameID)
	if err != nil {
		// The container cannot be observed. Pending work goes on under the lease, where the
		// inspection is tried again and its failures spend the request's retry budget.
		rec, rerr := r.record(ctx, gameID)
		if rerr != nil || rec == nil || rec.Settled() {
			return retryAfterFailure(err)
		}
		return r.lockAndAct(ctx, gameID)
	}
	var (
		act Action
		rec *rtm.Record
	)
	if seen.died {
		// A die event: recorded in one transaction when it is the exit of the record's own
		// container (two PostgreSQL round trips from the event to container_exited).
		var o outcome
		if act, o = r.noteExit(ctx, gameID, c); act == ActObservedExited || o.kind != done {
			return o
		}
	} else {
		if rec, err = r.record(ctx, gameID); err != nil {
			return retryAfterFailure(err)
		}
		act = Decide(rec, c)
	}
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("action", string(act)))
	switch {
	case act == ActAdopt && creating(c):
		// Someone is creating it right now (docker run creates, then starts): adopt it as it
		// will be, not as it is for this instant.
		return waitFor(time.Second)
	case recordsOnly(act):
		return r.noteDrift(ctx, gameID)
	case act == ActNone:
		return finished()
	case act == ActStartExisting && c.Starting:
		// Still on its way since this process started it: its next event will tell.
		if wait, ok := r.starts.wait(gameID, c.ID); ok {
			return waitFor(wait)
		}
	case act == ActSettle && rec != nil && c != nil:
		if o, ok := r.settleStarted(ctx, rec, c); ok {
			return o
		}
	}
	return r.lockAndAct(ctx, gameID)
}

// settleStarted answers and records a start this process began (BeginStart left it under way)
// once its engine runs, in one write made with the epoch the start was begun under, without the
// lease. That is safe because the write is refused unless the record's epoch is still that
// epoch, checked on the record as locked by the write itself: every other holder's first write
// bumps the epoch (Fence, or a drift change), and every holder fences before it acts on the
// runtime, so an unchanged epoch proves that nobody has acted on the game since the start was
// begun, and a holder that fences later does so on the settled record. Settling acts on nothing.
//
// ok is false when the fast path does not apply (the start is not this process's, the record
// has moved on since: a new request, another holder) or was refused; the caller then takes the
// lease as usual.
func (r *GameReconciler) settleStarted(ctx context.Context, rec *rtm.Record, c *rtm.Container) (outcome, bool) {
	gameID := rec.GameID
	if c == nil {
		return outcome{}, false
	}
	w, ok := r.starts.begun(gameID, c.ID)
	if !ok || !c.Running() || rec.DesiredState != rtm.DesiredRunning || rec.FenceEpoch != w.epoch || rec.Generation != w.gen {
		return outcome{}, false
	}
	actx, endSpan := r.continueRequestTrace(ctx, rec, w.pending)
	defer endSpan()
	s := r.newScope(ctx, actx, gameID, ActSettle, rec, c, w.pending)
	err := r.commit(s, r.settle(s))
	var se *storeError
	switch {
	case err == nil:
		s.log.Debug("engine running; start answered", "container_id", c.ID)
		r.budget.forget(gameID)
		r.starts.forget(gameID)
		return finished(), true
	case errors.As(err, &se) && !errors.Is(err, rtm.ErrFenced):
		return retryAfterFailure(err), true
	}
	r.starts.forget(gameID) // fenced meanwhile: the lease's holder decides
	return outcome{}, false
}

// lockAndAct takes the lease and acts on what it finds under it.
func (r *GameReconciler) lockAndAct(ctx context.Context, gameID string) outcome {
	s, release, o := r.lock(ctx, gameID)
	if s == nil {
		return o
	}
	defer release()
	return r.act(s)
}

// scope is what one action works with, all of it read or observed under the game's lease.
type scope struct {
	gameID  string
	act     Action
	rec     *rtm.Record    // the record as fenced: its FenceEpoch is the lease's epoch
	c       *rtm.Container // the game's owned container, observed under the lease (nil: none)
	pending []rtm.Request  // its unanswered requests, oldest first
	// parent is the reconcile's context; ctx is the lease's, which ends when the lease is lost:
	// every runtime call and write of the action runs under it.
	parent context.Context
	ctx    context.Context
	rt     fencedRuntime
	log    *slog.Logger
}

// lock takes the game's lease, fences the record and observes the container afresh, and decides
// again on what it finds. It returns nil and the outcome when there is nothing to act on (or the
// lease is held elsewhere); otherwise the scope to act in and the release of the lease.
func (r *GameReconciler) lock(ctx context.Context, gameID string) (*scope, func(), outcome) {
	lctx, release, err := r.leases.Acquire(ctx, gameID)
	switch {
	case errors.Is(err, rtm.ErrConflict):
		return nil, nil, waitFor(r.opts.LeaseRetry)
	case err != nil:
		return nil, nil, retryAfterFailure(fromStore(err))
	}
	// The world may have moved before we held the lease, and a holder before us may have acted
	// without recording it (it died, or lost the lease, in between): decide again on reads made
	// under the lease. The inspection travels beside the record's read.
	look := make(chan looked, 1)
	go func() {
		c, err := r.inspect(lctx, gameID)
		look <- looked{c, err}
	}()
	rec, pending, err := r.store.Fence(lctx, gameID)
	l := <-look
	err = fromStore(err)
	if err == nil && lctx.Err() != nil {
		err = r.leaseLost(gameID)
	}
	if err == nil && l.err != nil && rec != nil && !rec.Settled() {
		// The container cannot be observed while work is pending: a failure of that work, which
		// spends its retry budget.
		s := r.newScope(ctx, lctx, gameID, pendingAction(rec), rec, nil, pending)
		o := r.failure(s, l.err)
		release()
		return nil, nil, o
	}
	if err == nil {
		err = l.err
	}
	if err != nil {
		release()
		if errors.Is(err, rtm.ErrFenced) {
			return nil, nil, waitFor(r.opts.LeaseRetry)
		}
		return nil, nil, retryAfterFailure(err)
	}
	if l.c != nil && !l.c.Owned {
		l.c = nil // a container RTM does not own counts as none: it is never acted on or recorded
	}
	act := Decide(rec, l.c)
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("action", string(act)))
	switch {
	case act == ActNone:
		release()
		return nil, nil, finished()
	case recordsOnly(act):
		// Moved to something that only needs recording: that is noteDrift's, at once.
		release()
		return nil, nil, waitFor(time.Millisecond)
	}
	actx, endSpan := r.continueRequestTrace(lctx, rec, pending)
	s := r.newScope(ctx, lctx, gameID, act, rec, l.c, pending)
	s.ctx = actx
	return s, func() {
		endSpan()
		if r.opts.Cache != nil {
			r.opts.Cache.Invalidate(gameID) // what we did is not in the cache yet
		}
		release()
	}, outcome{}
}

func (r *GameReconciler) newScope(parent, lctx context.Context, gameID string, act Action, rec *rtm.Record, c *rtm.Container,
	pending []rtm.Request) *scope {
	return &scope{gameID: gameID, act: act, rec: rec, c: c, pending: pending, parent: parent, ctx: lctx,
		rt:  fencedRuntime{rt: r.runtime, lease: lctx, gameID: gameID},
		log: r.log.With("game_id", gameID, "action", string(act))}
}

// pendingAction is the action a record's pending work comes to, as far as the record alone can
// tell: what its failure is answered as when the container cannot even be observed.
func pendingAction(rec *rtm.Record) Action {
	switch rec.DesiredState {
	case rtm.DesiredStopped:
		return ActStop
	case rtm.DesiredRemoved:
		return ActRemove
	}
	return ActCreate
}

// leaseLost is the error of an action whose lease ended under it.
func (r *GameReconciler) leaseLost(gameID string) error {
	return fmt.Errorf("lease of %s lost: %w", gameID, rtm.ErrFenced)
}

// fencedRuntime checks, synchronously and right before every call that changes the world, that
// the lease is still held: a holder whose lease ended (renewals not getting through, or the
// process frozen past it) makes no further Docker mutation. The calls run under the lease's
// context, so losing the lease also cancels a call in flight.
type fencedRuntime struct {
	rt     ContainerRuntime
	lease  context.Context
	gameID string
}

func (f fencedRuntime) check() error {
	if f.lease.Err() != nil {
		return fmt.Errorf("lease of %s lost: %w", f.gameID, rtm.ErrFenced)
	}
	return nil
}

func (f fencedRuntime) Inspect(ctx context.Context, gameID string) (rtm.Container, error) {
	return f.rt.Inspect(ctx, gameID)
}

func (f fencedRuntime) EnsureImage(ctx context.Context, ref string) error {
	if err := f.check(); err != nil {
		return err
	}
	return f.rt.EnsureImage(ctx, ref)
}

func (f fencedRuntime) Create(ctx context.Context, spec rtm.ContainerSpec) (string, error) {
	if err := f.check(); err != nil {
		return "", err
	}
	return f.rt.Create(ctx, spec)
}

func (f fencedRuntime) Start(ctx context.Context, id string) error {
	if err := f.check(); err != nil {
		return err
	}
	return f.rt.Start(ctx, id)
}

// BeginStart is the runtime's BeginStart when it is a StartBeginner, else its Start.
func (f fencedRuntime) BeginStart(ctx context.Context, id string) error {
	if err := f.check(); err != nil {
		return err
	}
	if b, ok := f.rt.(StartBeginner); ok {
		return b.BeginStart(ctx, id)
	}
	return f.rt.Start(ctx, id)
}

func (f fencedRuntime) Stop(ctx context.Context, id string, grace time.Duration) error {
	if err := f.check(); err != nil {
		return err
	}
	return f.rt.Stop(ctx, id, grace)
}

func (f fencedRuntime) Remove(ctx context.Context, id string) error {
	if err := f.check(); err != nil {
		return err
	}
	return f.rt.Remove(ctx, id)
}

// recordsOnly reports whether act changes nothing but the record and what it publishes (no
// Docker call): noteDrift decides and records it in one transaction.
func recordsOnly(act Action) bool {
	switch act {
	case ActAdopt, ActDispose, ActObservedExited, ActSync:
		return true
	}
	return false
}

// creating reports whether c is a container someone is creating right now (created, never
// started, younger than adoptGrace): it is adopted once started, not before.
func creating(c *rtm.Container) bool {
	return c != nil && c.State == rtm.StateCreated && time.Since(c.Created) < adoptGrace
}

// record reads a game's record; nil when it has none.
func (r *GameReconciler) record(ctx context.Context, gameID string) (*rtm.Record, error) {
	rec, err := r.store.Get(ctx, gameID)
	if errors.Is(err, rtm.ErrNotFound) {
		return nil, nil
	}
	return rec, fromStore(err)
}

// looked is the outcome of an inspection.
type looked struct {
	c   *rtm.Container
	err error
}

// sight is how the reconciler came by its view of a container.
type sight struct {
	died     bool      // a die event set it in the cache
	exitedAt time.Time // when that die event was applied
}

// observe returns the game's container from the cache, inspecting (and filling the cache) only
// when the cache cannot tell. What it returns only decides whether to go on: every action and
// every drift record is decided again on an observation made under the lease.
func (r *GameReconciler) observe(ctx context.Context, gameID string) (*rtm.Container, sight, error) {
	if r.opts.Cache != nil {
		if ct, found, known, exitedAt := r.opts.Cache.Lookup(gameID); known {
			if !found {
				return nil, sight{}, nil
			}
			return &ct, sight{died: !exitedAt.IsZero(), exitedAt: exitedAt}, nil
		}
	}
	c, err := r.inspect(ctx, gameID)
	return c, sight{}, err
}

// inspect observes the game's container afresh (nil when it has none; a container without the
// owner label counts as none) and records what it saw in the cache.
func (r *GameReconciler) inspect(ctx context.Context, gameID string) (*rtm.Container, error) {
	var mark uint64
	if r.opts.Cache != nil {
		mark = r.opts.Cache.Begin()
	}
	c, err := r.runtime.Inspect(ctx, gameID)
	found := err == nil
	if errors.Is(err, rtm.ErrNotFound) {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	if r.opts.Cache != nil {
		r.opts.Cache.Put(mark, gameID, c, found)
	}
	if !found {
		return nil, nil
	}
	return &c, nil
}

// continueRequestTrace makes the action part of the trace of the newest pending request that
// carries one (a job sent with a traceparent), so that its Docker calls show under the job.
// With tracing off (the reconcile span records nothing) it costs nothing.
func (r *GameReconciler) continueRequestTrace(ctx context.Context, rec *rtm.Record, pending []rtm.Request) (context.Context, func()) {
	if rec == nil || rec.Settled() || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, func() {}
	}
	for i := len(pending) - 1; i >= 0; i-- {
		if pending[i].TraceParent == "" {
			continue
		}
		rctx := propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": pending[i].TraceParent})
		sc := trace.SpanContextFromContext(rctx)
		if !sc.IsValid() {
			continue
		}
		rctx, span := r.tracer.Start(rctx, "reconcile.act", trace.WithLinks(trace.LinkFromContext(ctx)),
			trace.WithAttributes(attribute.String("game_id", rec.GameID), attribute.String("request_id", pending[i].RequestID)))
		return rctx, func() { span.End() }
	}
	return ctx, func() {}
}

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
		case c.Final:
			return ActReplace // a terminated Pod runs no more: a new one replaces it
		}
		return ActStartExisting
	case rtm.DesiredStopped:
		switch {
		case c != nil && (c.Running() || c.Starting) && pending:
			// A Pod still on its way would run by itself after the stop was answered: it is
			// stopped too.
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
