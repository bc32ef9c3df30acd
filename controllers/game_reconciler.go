// Package controllers holds the game reconciler: one level-triggered Reconcile per game id that
// compares the desired state in PostgreSQL with the observed container and starts, stops,
// patches, adopts or disposes. It declares the small interfaces it needs; it imports no Docker
// SDK, pgx, Redis or net/http.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rtm "github.com/galaxy-platform/rtmanager"
)

// DesiredStore is the PostgreSQL side the reconciler reads and writes.
type DesiredStore interface {
	// Get returns a game's record; a game without one is an error wrapping rtm.ErrNotFound.
	Get(ctx context.Context, gameID string) (*rtm.Record, error)
	// Load returns a game's record (nil when it has none) and its unanswered requests, oldest
	// first, in one round trip.
	Load(ctx context.Context, gameID string) (*rtm.Record, []rtm.Request, error)
	// MarkStopping sets a game's status to stopping.
	MarkStopping(ctx context.Context, gameID string) error
	// Commit writes c and returns the record as committed (nil when the game has none).
	Commit(ctx context.Context, c rtm.Change) (*rtm.Record, error)
	// Update commits the change decide makes of the game's record, read and locked in the same
	// transaction (nil: no change); it returns the record as committed, nil when nothing was.
	Update(ctx context.Context, gameID string, decide func(rec *rtm.Record) *rtm.Change) (*rtm.Record, error)
}

// ContainerRuntime is the Docker side the reconciler observes and acts on.
type ContainerRuntime interface {
	Inspect(ctx context.Context, gameID string) (rtm.Container, error)
	EnsureImage(ctx context.Context, ref string) error
	Create(ctx context.Context, spec rtm.ContainerSpec) (string, error)
	Start(ctx context.Context, id string) error
	Stop(ctx context.Context, id string, grace time.Duration) error
	Remove(ctx context.Context, id string) error
}

// Leaser hands out per-game leases. Acquire fails with an error wrapping rtm.ErrConflict when
// another process holds the lease; the returned context ends if the lease is lost.
type Leaser interface {
	Acquire(ctx context.Context, gameID string) (context.Context, func(), error)
}

// ContainerCache is the reconciler's cached view of the owned containers (filled by list calls,
// invalidated by events, set to exited by die events). Lookup's known is false when the cache
// cannot tell; exitedAt is when a die event set the entry, zero otherwise.
type ContainerCache interface {
	Begin() uint64
	Lookup(gameID string) (c rtm.Container, found, known bool, exitedAt time.Time)
	Put(mark uint64, gameID string, c rtm.Container, found bool)
	Invalidate(gameID string)
}

// StateDirs creates a game's state directory (mode, owner, confinement to the root).
type StateDirs interface {
	Ensure(gameID string) (string, error)
}

// EngineProber checks a running engine's /healthz.
type EngineProber interface {
	Probe(ctx context.Context, c rtm.Container, endpoint string) error
}

// Options are the reconciler's settings.
type Options struct {
	Network            string
	EnginePort         int
	StateMount         string
	StopTimeout        time.Duration
	MemoryBytes        int64
	NanoCPUs           int64
	PidsLimit          int64
	User               string
	ReadOnlyRoot       bool
	PatchVerifyTimeout time.Duration
	ProbeInterval      time.Duration
	ProbeThreshold     int
	// LeaseRetry is how soon a game whose lease is held elsewhere is tried again.
	LeaseRetry time.Duration
	// Cache, when set, lets a reconcile that finds nothing to do cost no Docker call.
	Cache ContainerCache
	// Diagnose, when set, is called once per start (the Lobby diagnostic); it must not block long.
	Diagnose func(ctx context.Context, gameID string)
}

// adoptGrace is how long a created, never started container is left alone before it is adopted.
const adoptGrace = 10 * time.Second

// GameReconciler reconciles one game at a time; the controller guarantees that one game id is
// never reconciled by two workers at once.
type GameReconciler struct {
	store   DesiredStore
	runtime ContainerRuntime
	leases  Leaser
	dirs    StateDirs
	prober  EngineProber
	opts    Options
	log     *slog.Logger
	tracer  trace.Tracer
	drift   metric.Int64Counter
}

// New returns a reconciler. tracer and meter may be nil.
func New(store DesiredStore, rt ContainerRuntime, leases Leaser, dirs StateDirs, prober EngineProber, opts Options,
	log *slog.Logger, tracer trace.Tracer, meter metric.Meter) (*GameReconciler, error) {
	if tracer == nil {
		tracer = tracenoop.NewTracerProvider().Tracer("")
	}
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	if opts.LeaseRetry <= 0 {
		opts.LeaseRetry = 500 * time.Millisecond
	}
	drift, err := meter.Int64Counter("rtmanager.reconcile_drift",
		metric.WithDescription("Drift the reconciler corrected, by kind (adopt, dispose, observed_exited)."))
	if err != nil {
		return nil, fmt.Errorf("creating drift counter: %w", err)
	}
	for _, k := range []string{"adopt", "dispose", "observed_exited"} {
		drift.Add(context.Background(), 0, metric.WithAttributes(attribute.String("kind", k)))
	}
	return &GameReconciler{store: store, runtime: rt, leases: leases, dirs: dirs, prober: prober, opts: opts,
		log: log, tracer: tracer, drift: drift}, nil
}

// Reconcile brings one game closer to its desired state: observe, load, decide, then act and
// record under the game's lease. What only needs recording (adopt, dispose, observed_exited,
// sync) is decided again on the record locked in the transaction that records it (recordDrift);
// every other action is decided again after loading and observing afresh under the lease. A transient
// failure is returned so the rate-limited queue retries it; a terminal one is recorded on the
// game and not retried until its desired state changes; a lease held elsewhere requeues the game.
func (r *GameReconciler) Reconcile(ctx context.Context, gameID string) (res reconcile.Result, err error) {
	ctx, span := r.tracer.Start(ctx, "reconcile", trace.WithAttributes(attribute.String("game_id", gameID)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	if rtm.ValidateGameID(gameID) != nil {
		return reconcile.Result{}, reconcile.TerminalError(fmt.Errorf("invalid game id %q", gameID))
	}
	c, seen, err := r.cachedContainer(ctx, gameID)
	if err != nil {
		return reconcile.Result{}, err
	}
	var rec *rtm.Record
	var act Action
	if seen.died {
		// A die event: the engine exited, by itself unless RTM stopped it. Decided and recorded in
		// one transaction, two PostgreSQL round trips from the event to its container_exited.
		act, rec, err = r.recordDrift(ctx, gameID, c)
	} else {
		if rec, err = r.record(ctx, gameID); err != nil {
			return reconcile.Result{}, err
		}
		if act = Decide(rec, c); recordsOnly(act) {
			if !seen.fresh() { // decided on the cached view: look afresh before recording it
				at := time.Now()
				if c, err = r.inspect(ctx, gameID); err != nil {
					return reconcile.Result{}, err
				}
				seen = sight{at: at}
			}
			act, rec, err = r.recordDrift(ctx, gameID, c)
		}
	}
	span.SetAttributes(attribute.String("action", string(act)))
	switch {
	case errors.Is(err, rtm.ErrConflict):
		return reconcile.Result{RequeueAfter: r.opts.LeaseRetry}, nil // the lease is held elsewhere
	case err != nil:
		return reconcile.Result{}, err
	case act == ActAdopt && creating(c):
		// Someone is creating it right now (docker run creates, then starts): adopt it as it
		// will be, not as it is for this instant.
		return reconcile.Result{RequeueAfter: time.Second}, nil
	case act == ActNone || recordsOnly(act):
		return reconcile.Result{}, nil
	}
	lctx, release, err := r.leases.Acquire(ctx, gameID)
	if errors.Is(err, rtm.ErrConflict) {
		return reconcile.Result{RequeueAfter: r.opts.LeaseRetry}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	defer release()
	// The world may have moved before we held the lease: decide again on fresh reads. An
	// inspection made just now stays good if no one committed anything to the game meanwhile
	// (every action commits, and actions need the lease we now hold). The pending requests come
	// with the record: an interrupted patch and a job's trace are read from them. A view from the
	// cache is looked at again while the record is read, not after.
	var look chan looked
	if !seen.fresh() {
		look = make(chan looked, 1)
		go func() {
			c, err := r.inspect(lctx, gameID)
			look <- looked{c, err}
		}()
	}
	fresh, pending, err := r.store.Load(lctx, gameID)
	if look != nil {
		l := <-look
		if err == nil {
			c, err = l.c, l.err
		}
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if look == nil && !sameVersion(rec, fresh) {
		if c, err = r.inspect(lctx, gameID); err != nil {
			return reconcile.Result{}, err
		}
	}
	rec = fresh
	act = Decide(rec, c)
	span.SetAttributes(attribute.String("action", string(act)))
	switch {
	case act == ActNone:
		return reconcile.Result{}, nil
	case recordsOnly(act):
		// Moved to something that only needs recording: that is recordDrift's, at once.
		return reconcile.Result{RequeueAfter: time.Millisecond}, nil
	}
	lctx, endSpan := r.continueRequestTrace(lctx, rec, pending)
	defer endSpan()
	log := r.log.With("game_id", gameID, "action", string(act))
	if r.opts.Cache != nil {
		defer r.opts.Cache.Invalidate(gameID) // what we did is not in the cache yet
	}
	if err := r.act(lctx, log, act, rec, c, pending); err != nil {
		if ctx.Err() == nil && lctx.Err() != nil {
			return reconcile.Result{RequeueAfter: r.opts.LeaseRetry}, nil // lease lost mid-way
		}
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, nil
}

// recordsOnly reports whether act changes nothing but the record and what it publishes (no
// Docker call): recordDrift decides and records it in one transaction.
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

// recordDrift decides on the game's record as read and locked in the transaction that records the
// outcome, with c observed just now. An action that only records what was observed (adopt,
// dispose, observed_exited, sync) is committed there and then, under the game's lease; any other
// is only returned, with the record it was decided on, for the caller to take under the lease.
//
// The lease is taken while the record is being read, not before: the two round trips (Redis and
// PostgreSQL) overlap, and the change is written only once both are in, so that a die event is two
// PostgreSQL round trips from its container_exited event. Waiting for the lease with the row
// locked cannot deadlock: taking a lease never waits. A lease held elsewhere writes nothing and
// returns an error wrapping rtm.ErrConflict.
func (r *GameReconciler) recordDrift(ctx context.Context, gameID string, c *rtm.Container) (Action, *rtm.Record, error) {
	if c != nil && !c.Owned {
		c = nil
	}
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
		read    *rtm.Record
		done    func(context.Context, *rtm.Record)
		refused error
	)
	got, err := r.store.Update(ctx, gameID, func(rec *rtm.Record) *rtm.Change {
		act, read, done, refused = Decide(rec, c), rec, nil, nil
		if !recordsOnly(act) || act == ActAdopt && creating(c) {
			return nil
		}
		if l := wait(); l.err != nil || l.ctx.Err() != nil {
			refused = l.err
			if refused == nil {
				refused = fmt.Errorf("lease of %s lost: %w", gameID, rtm.ErrConflict)
			}
			return nil
		}
		var ch rtm.Change
		ch, done = r.driftChange(gameID, act, rec, c)
		return &ch
	})
	if err == nil {
		err = refused
	}
	if err != nil {
		return act, nil, err
	}
	if done != nil {
		done(ctx, got)
	}
	return act, read, nil
}

// driftChange returns the change that records act for rec and c, and what to do once it is
// committed (count and log the drift).
func (r *GameReconciler) driftChange(gameID string, act Action, rec *rtm.Record, c *rtm.Container) (rtm.Change, func(context.Context, *rtm.Record)) {
	log := r.log.With("game_id", gameID, "action", string(act))
	switch act {
	case ActAdopt:
		return r.adopt(log, rec, c)
	case ActDispose:
		return r.dispose(log, rec)
	case ActObservedExited:
		return r.observedExited(log, rec, c)
	}
	return r.sync(rec, c), nil
}

// record reads a game's record; nil when it has none.
func (r *GameReconciler) record(ctx context.Context, gameID string) (*rtm.Record, error) {
	rec, err := r.store.Get(ctx, gameID)
	if errors.Is(err, rtm.ErrNotFound) {
		return nil, nil
	}
	return rec, err
}

// sameVersion reports whether two reads of a record show the same committed version.
func sameVersion(a, b *rtm.Record) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.UpdatedAt.Equal(b.UpdatedAt) && a.Generation == b.Generation
}

// looked is the outcome of an inspection.
type looked struct {
	c   *rtm.Container
	err error
}

// sight is how the reconciler came by its view of a container.
type sight struct {
	at   time.Time // when it was observed (an inspection, or the die event that set a cache entry); zero for other cache hits
	died bool      // a die event set it
}

// fresh reports whether the observation is as good as an inspection made now.
func (s sight) fresh() bool { return !s.at.IsZero() && time.Since(s.at) <= time.Second }

// cachedContainer returns the game's container from the cache, inspecting (and filling the
// cache) only when the cache cannot tell.
func (r *GameReconciler) cachedContainer(ctx context.Context, gameID string) (*rtm.Container, sight, error) {
	if r.opts.Cache != nil {
		if ct, found, known, exitedAt := r.opts.Cache.Lookup(gameID); known {
			if !found {
				return nil, sight{}, nil
			}
			return &ct, sight{at: exitedAt, died: !exitedAt.IsZero()}, nil
		}
	}
	at := time.Now()
	c, err := r.inspect(ctx, gameID)
	return c, sight{at: at}, err
}

// inspect observes the game's container afresh (nil when it has none) and records what it saw
// in the cache.
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

// act runs one decided action that needs the lease and records its result; pending are the
// game's unanswered requests.
func (r *GameReconciler) act(ctx context.Context, log *slog.Logger, act Action, rec *rtm.Record, c *rtm.Container, pending []rtm.Request) error {
	if c != nil && !c.Owned {
		c = nil
	}
	switch act {
	case ActSettle, ActCreate, ActStartExisting, ActReplace:
		if old := pendingPatch(rec, pending); old != "" {
			return r.resumePatch(ctx, log, rec, c, old)
		}
		if act == ActSettle {
			return r.settle(ctx, rec, c)
		}
		return r.run(ctx, log, act, rec, c)
	case ActPatch:
		return r.patch(ctx, log, rec, c)
	case ActStop:
		return r.stop(ctx, log, rec, c)
	case ActRemove:
		return r.remove(ctx, log, rec, c)
	}
	return nil
}

func (r *GameReconciler) countDrift(ctx context.Context, kind string) {
	r.drift.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind)))
}

// adopt records an owned container RTM has no live record of (old is nil, or settled), as it
// is; it never touches it.
func (r *GameReconciler) adopt(log *slog.Logger, old *rtm.Record, c *rtm.Container) (rtm.Change, func(context.Context, *rtm.Record)) {
	rec := rtm.Record{
		GameID:              c.GameID,
		DesiredImageRef:     c.ImageRef,
		CurrentImageRef:     c.ImageRef,
		CurrentContainerID:  c.ID,
		EngineEndpoint:      rtm.EngineEndpoint(c.GameID, r.opts.EnginePort),
		Generation:          1,
		ObservedGeneration:  1,
		ContainerGeneration: c.Generation,
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
			adopted.CreatedAt = x.CreatedAt
			*x = adopted
		}
	}
	return ch, func(ctx context.Context, got *rtm.Record) {
		if got != nil && got.CurrentContainerID == c.ID {
			r.countDrift(ctx, "adopt")
			log.InfoContext(ctx, "adopted container", "container_id", c.ID, "status", string(rec.Status))
		}
	}
}

func (r *GameReconciler) dispose(log *slog.Logger, rec *rtm.Record) (rtm.Change, func(context.Context, *rtm.Record)) {
	now := time.Now().UTC()
	ch := rtm.Change{GameID: rec.GameID, Gen: rec.Generation,
		Apply: func(x *rtm.Record, current bool) {
			x.Status = rtm.StatusRemoved
			if current {
				x.DesiredState = rtm.DesiredRemoved
			}
		},
		Ops: []rtm.Operation{{GameID: rec.GameID, Kind: rtm.OpReconcileDispose, Source: rtm.SourceReconciler,
			Outcome: rtm.OutcomeSucceeded, OldImageRef: rec.CurrentImageRef, ContainerID: rec.CurrentContainerID,
			StartedAt: now, FinishedAt: now}},
		Events: []rtm.HealthEvent{{GameID: rec.GameID, Type: rtm.EventContainerDisappeared,
			ContainerID: rec.CurrentContainerID, Message: "the container is gone", ObservedAt: now}},
	}
	return ch, func(ctx context.Context, _ *rtm.Record) {
		r.countDrift(ctx, "dispose")
		log.InfoContext(ctx, "disposed record of vanished container", "container_id", rec.CurrentContainerID)
	}
}

func (r *GameReconciler) observedExited(log *slog.Logger, rec *rtm.Record, c *rtm.Container) (rtm.Change, func(context.Context, *rtm.Record)) {
	now := time.Now().UTC()
	ch := rtm.Change{GameID: rec.GameID, Gen: rec.Generation,
		Apply: func(x *rtm.Record, current bool) {
			x.Status, x.ExitCode, x.CurrentContainerID, x.ExitReportedContainer = rtm.StatusExited, rtm.IntPtr(c.ExitCode), c.ID, c.ID
			if current {
				x.DesiredState = rtm.DesiredStopped
			}
		},
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
	return ch, func(ctx context.Context, _ *rtm.Record) {
		r.countDrift(ctx, "observed_exited")
		log.InfoContext(ctx, "observed engine exit", "container_id", c.ID, "exit_code", c.ExitCode, "oom_killed", c.OOMKilled)
	}
}

// sync brings the record in line with a container nobody asked to change (started or replaced by
// hand): no operation row, but a started event when the game comes up.
func (r *GameReconciler) sync(rec *rtm.Record, c *rtm.Container) rtm.Change {
	ch := rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Apply: func(x *rtm.Record, _ bool) {
		x.CurrentContainerID, x.CurrentImageRef = c.ID, c.ImageRef
		if c.Running() {
			x.Status, x.ExitCode = rtm.StatusRunning, nil
		} else {
			x.Status, x.ExitCode = rtm.StatusExited, rtm.IntPtr(c.ExitCode)
		}
	}}
	if c.Running() && rec.Status != rtm.StatusRunning {
		ch.Events = []rtm.HealthEvent{startedEvent(rec.GameID, c.ID)}
	}
	return ch
}

func startedEvent(gameID, containerID string) rtm.HealthEvent {
	return rtm.HealthEvent{GameID: gameID, Type: rtm.EventContainerStarted, ContainerID: containerID,
		DockerState: string(rtm.StateRunning), Message: "the engine container started", ObservedAt: time.Now().UTC()}
}

// settle records that the world already is as asked and answers the pending requests.
func (r *GameReconciler) settle(ctx context.Context, rec *rtm.Record, c *rtm.Container) error {
	status := settledStatus(rec, c)
	ch := rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Answer: &rtm.Succeeded,
		Apply: func(x *rtm.Record, _ bool) {
			x.Status = status
			x.ObservedGeneration = max(x.ObservedGeneration, rec.Generation)
			if c != nil {
				x.CurrentContainerID, x.CurrentImageRef = c.ID, c.ImageRef
			} else if status == rtm.StatusRemoved {
				x.CurrentContainerID = ""
			}
		}}
	if c != nil {
		ch.ContainerID = c.ID
		if status == rtm.StatusRunning && rec.Status != rtm.StatusRunning {
			ch.Events = []rtm.HealthEvent{startedEvent(rec.GameID, c.ID)}
		}
	}
	_, err := r.store.Commit(ctx, ch)
	return err
}

// fail records a terminal failure of the current generation and answers its requests with it.
func (r *GameReconciler) fail(ctx context.Context, log *slog.Logger, rec *rtm.Record, cause error) error {
	a := rtm.Failed(cause, rtm.CodeContainerStartFailed)
	log.WarnContext(ctx, "operation failed", "error_code", string(a.Code), "error", cause)
	_, err := r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Answer: &a,
		Apply: func(x *rtm.Record, _ bool) {
			x.Status, x.LastErrorCode, x.LastErrorMessage = rtm.StatusFailed, a.Code, a.Message
			x.CurrentContainerID = ""
			x.ObservedGeneration = max(x.ObservedGeneration, rec.Generation)
		}})
	return err
}

// transient reports whether err is worth retrying (the daemon or a store is unreachable).
func transient(err error) bool {
	var e *rtm.Error
	return !errors.As(err, &e)
}

// markStopping records that RTM itself is about to stop the game's container, so that its exit
// is not taken for an incident.
func (r *GameReconciler) markStopping(ctx context.Context, rec *rtm.Record) error {
	return r.store.MarkStopping(ctx, rec.GameID)
}

// run creates (or starts, or recreates) the game's container and records it running.
func (r *GameReconciler) run(ctx context.Context, log *slog.Logger, act Action, rec *rtm.Record, c *rtm.Container) error {
	if r.opts.Diagnose != nil {
		r.opts.Diagnose(ctx, rec.GameID)
	}
	var id string
	var err error
	if act == ActStartExisting {
		id, err = c.ID, r.runtime.Start(ctx, c.ID)
		if err != nil && !transient(err) {
			_ = r.runtime.Remove(ctx, c.ID)
		}
	} else {
		if act == ActReplace && c != nil {
			if c.Running() {
				if err := r.markStopping(ctx, rec); err != nil {
					return err
				}
			}
			if err := r.discard(ctx, c); err != nil {
				return err
			}
		}
		id, err = r.launch(ctx, rec, rec.DesiredImageRef)
	}
	if err != nil {
		if transient(err) {
			return err
		}
		return r.fail(ctx, log, rec, err)
	}
	_, err = r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Answer: &rtm.Succeeded, ContainerID: id,
		Apply: func(x *rtm.Record, _ bool) {
			x.Status, x.CurrentContainerID, x.CurrentImageRef, x.ExitCode = rtm.StatusRunning, id, rec.DesiredImageRef, nil
			x.LastErrorCode, x.LastErrorMessage = "", ""
			x.ObservedGeneration = max(x.ObservedGeneration, rec.Generation)
		},
		Events: []rtm.HealthEvent{startedEvent(rec.GameID, id)}})
	if err == nil {
		log.InfoContext(ctx, "engine started", "container_id", id, "image_ref", rec.DesiredImageRef)
	}
	return err
}

// launch prepares the state dir and creates and starts a container of image, pulling the image
// first only when the daemon does not have it (the create says so): a start of a local image
// costs no image call. A container that was created but would not start is removed again.
func (r *GameReconciler) launch(ctx context.Context, rec *rtm.Record, image string) (string, error) {
	dir, err := r.dirs.Ensure(rec.GameID)
	if err != nil {
		return "", err
	}
	spec := rtm.ContainerSpec{
		GameID: rec.GameID, ImageRef: image, Generation: rec.ContainerGeneration, StateDir: dir,
		StateMount: r.opts.StateMount, Network: r.opts.Network, User: r.opts.User, ReadOnlyRoot: r.opts.ReadOnlyRoot,
		MemoryBytes: r.opts.MemoryBytes, NanoCPUs: r.opts.NanoCPUs, PidsLimit: r.opts.PidsLimit,
		Env: map[string]string{"GALAXY_GAME_ID": rec.GameID, "GALAXY_STATE_DIR": r.opts.StateMount},
	}
	id, err := r.runtime.Create(ctx, spec)
	if rtm.CodeOf(err, "") == rtm.CodeImagePullFailed {
		if err := r.runtime.EnsureImage(ctx, image); err != nil {
			return "", err
		}
		id, err = r.runtime.Create(ctx, spec)
	}
	if errors.Is(err, rtm.ErrConflict) {
		// The name is taken: by a container RTM does not own (terminal), or by one of ours that
		// appeared meanwhile (transient: the next pass observes it).
		if other, ierr := r.runtime.Inspect(ctx, rec.GameID); ierr == nil && !other.Owned {
			return "", rtm.Errorf(rtm.CodeContainerStartFailed, "the name %s is taken by a container RTM does not own", rtm.ContainerName(rec.GameID))
		}
		return "", err
	}
	if err != nil {
		return "", err
	}
	if err := r.runtime.Start(ctx, id); err != nil {
		if !transient(err) {
			_ = r.runtime.Remove(ctx, id)
		}
		return "", err
	}
	return id, nil
}

// discard stops (with the configured grace) and removes a container; a container already gone
// is fine.
func (r *GameReconciler) discard(ctx context.Context, c *rtm.Container) error {
	if c.Running() {
		if err := r.runtime.Stop(ctx, c.ID, r.opts.StopTimeout); err != nil && !errors.Is(err, rtm.ErrNotFound) {
			return err
		}
	}
	if err := r.runtime.Remove(ctx, c.ID); err != nil && !errors.Is(err, rtm.ErrNotFound) {
		return err
	}
	return nil
}

func (r *GameReconciler) stop(ctx context.Context, log *slog.Logger, rec *rtm.Record, c *rtm.Container) error {
	if rec.Status != rtm.StatusStopping {
		if err := r.markStopping(ctx, rec); err != nil {
			return err
		}
	}
	if err := r.runtime.Stop(ctx, c.ID, r.opts.StopTimeout); err != nil && !errors.Is(err, rtm.ErrNotFound) {
		if transient(err) {
			return err
		}
		return r.fail(ctx, log, rec, err)
	}
	exit := rtm.IntPtr(r.exitCode(ctx, rec.GameID, c.ID))
	_, err := r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Answer: &rtm.Succeeded, ContainerID: c.ID,
		Apply: func(x *rtm.Record, _ bool) {
			x.Status, x.ExitCode, x.ExitReportedContainer = rtm.StatusStopped, exit, c.ID
			x.ObservedGeneration = max(x.ObservedGeneration, rec.Generation)
		}})
	if err == nil {
		log.InfoContext(ctx, "engine stopped", "container_id", c.ID)
	}
	return err
}

// exitCode returns the exit code of the stopped container id: the one its die event carried when
// that has reached the cache (usually by the time the stop call returns), else an inspection's;
// 0 when neither can tell.
func (r *GameReconciler) exitCode(ctx context.Context, gameID, id string) int {
	if r.opts.Cache != nil {
		if ct, found, known, exitedAt := r.opts.Cache.Lookup(gameID); known && found && ct.ID == id && !exitedAt.IsZero() {
			return ct.ExitCode
		}
	}
	if after, err := r.runtime.Inspect(ctx, gameID); err == nil {
		return after.ExitCode
	}
	return 0
}

func (r *GameReconciler) remove(ctx context.Context, log *slog.Logger, rec *rtm.Record, c *rtm.Container) error {
	if c.Running() && rec.Status != rtm.StatusStopping {
		if err := r.markStopping(ctx, rec); err != nil {
			return err
		}
	}
	if err := r.discard(ctx, c); err != nil {
		if transient(err) {
			return err
		}
		return r.fail(ctx, log, rec, err)
	}
	_, err := r.store.Commit(ctx, rtm.Change{GameID: rec.GameID, Gen: rec.Generation, Answer: &rtm.Succeeded, ContainerID: c.ID,
		Apply: func(x *rtm.Record, _ bool) {
			x.Status, x.CurrentContainerID, x.ExitReportedContainer = rtm.StatusRemoved, "", c.ID
			x.ObservedGeneration = max(x.ObservedGeneration, rec.Generation)
		}})
	if err == nil {
		log.InfoContext(ctx, "container removed", "container_id", c.ID)
	}
	return err
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
