package rtmanager

import (
	"context"
	"log/slog"
	"maps"
	"time"
)

// Record is a game's runtime record: what it should be (desired_*) and what RTM last saw it be.
// Its JSON is the REST representation and mirrors the runtime_records columns.
type Record struct {
	GameID             string       `json:"game_id"`
	Status             Status       `json:"status"`
	DesiredState       DesiredState `json:"desired_state"`
	DesiredImageRef    string       `json:"desired_image_ref"`
	CurrentImageRef    string       `json:"current_image_ref"`
	CurrentContainerID string       `json:"current_container_id"`
	EngineEndpoint     string       `json:"engine_endpoint"`
	StateDir           string       `json:"state_dir"`
	LastErrorCode      ErrorCode    `json:"last_error_code"`
	LastErrorMessage   string       `json:"last_error_message"`
	ExitCode           *int         `json:"exit_code"`
	// Generation counts the requests that changed what the game should be; ObservedGeneration is
	// the one the reconciler last settled. They differ while work is pending.
	Generation          int64 `json:"generation"`
	ObservedGeneration  int64 `json:"observed_generation"`
	ContainerGeneration int64 `json:"container_generation"`
	// ExitReportedContainer is the container whose exit was already published.
	ExitReportedContainer string `json:"-"`
	// FenceEpoch is bumped by every lease acquisition on the game (Store.Fence); a reconciler's
	// write carrying an older epoch is refused with ErrFenced.
	FenceEpoch int64     `json:"-"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Settled reports whether the reconciler has caught up with the latest request.
func (r *Record) Settled() bool { return r.ObservedGeneration >= r.Generation }

// Channel names where a request came from, for de-duplication: the same request id on the same
// channel is the same request.
type Channel string

// Request channels.
const (
	ChannelStartJobs Channel = "start_jobs"
	ChannelStopJobs  Channel = "stop_jobs"
	ChannelREST      Channel = "rest"
)

// Request is one ask to change a game: a start or stop job, or a REST mutation.
type Request struct {
	Channel     Channel
	RequestID   string
	GameID      string
	Kind        OpKind
	Source      OpSource
	ImageRef    string // start and patch: the image asked for
	OldImageRef string // patch: the image replaced
	Reason      string // stop
	Generation  int64  // the record generation the request produced or joined
	TraceParent string // W3C traceparent of the span that received it
	ReceivedAt  time.Time
}

// Job returns the job field of a job result ("start" or "stop"), or "" for REST requests.
func (r Request) Job() string {
	switch r.Channel {
	case ChannelStartJobs:
		return "start"
	case ChannelStopJobs:
		return "stop"
	}
	return ""
}

// Answer is how a request ended.
type Answer struct {
	Outcome Outcome
	Code    ErrorCode
	Message string
}

// Succeeded is the answer of a request that reached what it asked for.
var Succeeded = Answer{Outcome: OutcomeSucceeded}

// For returns the answer as a request of kind gets it when one reconcile answers several pending
// requests together: patch_rolled_back is the patch's own answer, and internal_error and
// service_unavailable are a stop's or a removal's (the daemon refused it, or could not be
// reached); a start, restart or patch answered with one of those learns that its engine could not
// be started, container_start_failed, with the message as it is. (A start queued behind a stop of
// the old container, the stop failing until the retry budget runs out, is answered so.)
func (a Answer) For(kind OpKind) Answer {
	if a.Outcome != OutcomeFailed || kind == OpStop || kind == OpCleanupContainer {
		return a
	}
	switch {
	case a.Code == CodePatchRolledBack && kind != OpPatch,
		a.Code == CodeInternalError, a.Code == CodeServiceUnavailable:
		a.Code = CodeContainerStartFailed
	}
	return a
}

// Failed returns the failed answer for err, with its contract code (fallback when it has none).
func Failed(err error, fallback ErrorCode) Answer {
	return Answer{Outcome: OutcomeFailed, Code: CodeOf(err, fallback), Message: MessageOf(err)}
}

// Operation is one operation_log row.
type Operation struct {
	ID           int64     `json:"id"`
	GameID       string    `json:"game_id"`
	Kind         OpKind    `json:"op_kind"`
	Source       OpSource  `json:"op_source"`
	Outcome      Outcome   `json:"outcome"`
	ErrorCode    ErrorCode `json:"error_code"`
	ErrorMessage string    `json:"error_message"`
	RequestID    string    `json:"request_id"`
	OldImageRef  string    `json:"old_image_ref"`
	NewImageRef  string    `json:"new_image_ref"`
	ContainerID  string    `json:"container_id"`
	StartedAt    time.Time `json:"started_at"`
	FinishedAt   time.Time `json:"finished_at"`
}

// HealthSnapshot is a game's latest health summary (health_snapshots).
type HealthSnapshot struct {
	GameID                   string          `json:"game_id"`
	Status                   HealthStatus    `json:"status"`
	LastEventType            HealthEventType `json:"last_event_type"`
	ConsecutiveProbeFailures int             `json:"consecutive_probe_failures"`
	LastProbeAt              *time.Time      `json:"last_probe_at"`
	ExitCode                 *int            `json:"exit_code"`
	OOMKilled                bool            `json:"oom_killed"`
	DockerState              string          `json:"docker_state"`
	UpdatedAt                time.Time       `json:"updated_at"`
}

// HealthEvent is one entry for the health events stream.
type HealthEvent struct {
	GameID      string
	Type        HealthEventType
	ContainerID string
	ExitCode    *int
	OOMKilled   bool
	DockerState string
	Message     string
	ObservedAt  time.Time
}

// Status is the health status an event leaves a game in.
func (e HealthEvent) Status() HealthStatus {
	switch e.Type {
	case EventContainerStarted, EventProbeRecovered:
		return HealthHealthy
	}
	return HealthUnhealthy
}

// IntPtr returns a pointer to v.
func IntPtr(v int) *int { return &v }

// Change is what one reconcile writes, all in one transaction.
type Change struct {
	GameID string
	// Gen is the record generation the reconciler acted for.
	Gen int64
	// Epoch, when not zero, is the fencing epoch the writer holds: the change is refused, and
	// nothing written, unless the record's FenceEpoch still equals it.
	Epoch int64
	// Insert adopts a container: the record is created (nothing happens if one exists by then).
	Insert *Record
	// Apply mutates the record; current reports that no request arrived since Gen was read, so
	// desired state may be changed too. It may be nil.
	Apply func(r *Record, current bool)
	// Answer, when set, answers every pending request with a generation up to Gen.
	Answer *Answer
	// ContainerID goes into the answered requests' operation rows and results.
	ContainerID string
	// Ops are drift rows (op_source reconciler); Events go to the outbox and the snapshot.
	Ops    []Operation
	Events []HealthEvent
}

// ListFilter selects records for List.
type ListFilter struct {
	Status Status // "" for all
	After  string // list game ids greater than this (the paging cursor)
	Limit  int
}

// RunningGame is what the prober and inspector need of a running game.
type RunningGame struct {
	GameID      string
	ContainerID string
	Endpoint    string
	UpdatedAt   time.Time
}

// ForgetStopped deletes from state, what the prober or the inspector keeps by game id between
// rounds, the games that are not among running.
func ForgetStopped[V any](state map[string]V, running []RunningGame) {
	live := make(map[string]bool, len(running))
	for _, g := range running {
		live[g.GameID] = true
	}
	maps.DeleteFunc(state, func(gameID string, _ V) bool { return !live[gameID] })
}

// EveryRunningRound runs round every interval as EveryRound does, over the running games as list
// (the store's RunningGames) gives them at the round's start: the loop of the prober and the
// inspector. A round whose list fails is not run; the failure is logged as the round's.
func EveryRunningRound(ctx context.Context, interval time.Duration, list func(context.Context) ([]RunningGame, error),
	round func(context.Context, []RunningGame) error, log *slog.Logger, worker, msg string) {
	EveryRound(ctx, interval, func(ctx context.Context) error {
		games, err := list(ctx)
		if err != nil {
			return err
		}
		return round(ctx, games)
	}, log, worker, msg)
}

// ProbeOutcome is one probe of a running engine, as a prober saw it.
type ProbeOutcome struct {
	GameID      string
	ContainerID string // the container probed
	OK          bool
	// Grace marks a failure within the container's grace period after it was first seen: it
	// is recorded as the latest probe but does not count.
	Grace bool
	Error string // why the probe failed; "" when OK
	At    time.Time
}
