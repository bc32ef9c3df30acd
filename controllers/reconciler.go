// Package controllers holds the game reconciler: one level-triggered Reconcile per game id that
// compares the desired state in PostgreSQL with the observed container and starts, stops,
// patches, adopts or disposes. It declares the small interfaces it needs; it imports no Docker
// SDK, pgx, Redis or net/http.
//
// A reconcile runs named steps (reconcile.go): observe, decide, lock and decide again, act, and
// one commit. Drift that only needs recording (adopt, dispose, observed_exited, sync) is decided
// and recorded in one transaction under the lease (drift.go); the actions are in actions.go and
// patch.go; how an outcome becomes a requeue decision, and the retry budget, in result.go.
package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	rtm "github.com/galaxy-platform/rtmanager"
)

// DesiredStore is the PostgreSQL side the reconciler reads and writes.
type DesiredStore interface {
	// Get returns a game's record; a game without one is an error wrapping rtm.ErrNotFound.
	Get(ctx context.Context, gameID string) (*rtm.Record, error)
	// Fence bumps the game's fencing epoch and returns the record as bumped (nil when it has
	// none) and its unanswered requests, oldest first, in one round trip. A lease holder calls it
	// first; its later writes carry the epoch it got.
	Fence(ctx context.Context, gameID string) (*rtm.Record, []rtm.Request, error)
	// MarkStopping sets a game's status to stopping, unless its fencing epoch is no longer epoch
	// (an error wrapping rtm.ErrFenced).
	MarkStopping(ctx context.Context, gameID string, epoch int64) error
	// Commit writes c and returns the record as committed (nil when the game has none). A change
	// whose Epoch is not the record's is refused with an error wrapping rtm.ErrFenced.
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

// StartBeginner is a ContainerRuntime whose engines take seconds to run after a start (a Pod
// waits for the scheduler, the image and the volume): BeginStart returns *rtm.Starting instead
// of waiting, and the runtime's events wake the reconciler when the engine runs or fails. A
// start job's reconcile then holds its worker for a few calls, not for the whole start. Patches
// still Start: their verification needs the new engine up within the reconcile.
type StartBeginner interface {
	BeginStart(ctx context.Context, id string) error
}

// Leaser hands out per-game leases. Acquire fails with an error wrapping rtm.ErrConflict when
// another process holds the lease. The returned context ends when the lease is lost, and its
// Err is synchronously accurate: it reports the loss the moment the lease can no longer be
// trusted (also right after the process resumes from a freeze), before any timer fires.
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

// Options are the reconciler's settings.
type Options struct {
	Network    string
	EnginePort int
	// EngineHost, when set, names a game's engine host in its engine_endpoint (the Kubernetes
	// runtime's Service name); nil means the contract's galaxy-game-<id>.
	EngineHost         func(gameID string) string
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
	// RetryAttempts and RetryWindow bound how long a request whose runtime call keeps failing
	// is retried: once it has failed RetryAttempts times and RetryWindow has passed since its
	// first failure, it is answered failed and the record says failed. Defaults 5 and 1m.
	RetryAttempts int
	RetryWindow   time.Duration
	// Cache, when set, lets a reconcile that finds nothing to do cost no Docker call.
	Cache ContainerCache
	// Diagnose, when set, is called once per start (the Lobby diagnostic); it must not block long.
	Diagnose func(ctx context.Context, gameID string)
}

// adoptGrace is how long a created, never started container is left alone before it is adopted.
const adoptGrace = 10 * time.Second

// GameReconciler reconciles one game at a time; the controller guarantees that one game id is
// never reconciled by two workers at once, and the game's lease that no two processes act on it
// at once.
type GameReconciler struct {
	store   DesiredStore
	runtime ContainerRuntime
	leases  Leaser
	dirs    StateDirs
	prober  rtm.EngineProber
	opts    Options
	log     *slog.Logger
	tracer  trace.Tracer
	drift   metric.Int64Counter
	budget  *retryBudget
	starts  *startsUnderWay
}

// New returns a reconciler. tracer and meter may be nil.
func New(store DesiredStore, rt ContainerRuntime, leases Leaser, dirs StateDirs, prober rtm.EngineProber, opts Options,
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
	if opts.RetryAttempts <= 0 {
		opts.RetryAttempts = 5
	}
	if opts.RetryWindow <= 0 {
		opts.RetryWindow = time.Minute
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
		log: log, tracer: tracer, drift: drift, budget: newRetryBudget(opts.RetryAttempts, opts.RetryWindow),
		starts: newStartsUnderWay()}, nil
}

func (r *GameReconciler) countDrift(ctx context.Context, kind string) {
	r.drift.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind)))
}
