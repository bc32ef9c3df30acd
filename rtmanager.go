// Package rtmanager holds Runtime Manager's domain vocabulary: game ids, desired and observed
// states, operation kinds and sources, error codes, image references, and the container types the
// Docker adapter and the reconciler exchange. Every spelling here is the one in the external
// contract (shared/spec/CONTRACT.md); peers depend on them.
package rtmanager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Status is a runtime record's observed status.
type Status string

// The statuses of CONTRACT §4.
const (
	StatusStarting Status = "starting"
	StatusRunning  Status = "running"
	StatusStopping Status = "stopping"
	StatusStopped  Status = "stopped"
	StatusExited   Status = "exited"
	StatusFailed   Status = "failed"
	StatusRemoved  Status = "removed"
)

// Statuses lists every status, in the contract's order; gauges report each, also at zero.
var Statuses = []Status{StatusStarting, StatusRunning, StatusStopping, StatusStopped, StatusExited, StatusFailed, StatusRemoved}

// Known reports whether s is one of Statuses.
func (s Status) Known() bool { return slices.Contains(Statuses, s) }

// StatusNames lists Statuses for a message: "starting, running, …".
func StatusNames() string {
	names := make([]string, len(Statuses))
	for i, s := range Statuses {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// DesiredState is what a game should be: what Lobby or an operator asked for last.
type DesiredState string

// The desired states of CONTRACT §4.
const (
	DesiredRunning DesiredState = "running"
	DesiredStopped DesiredState = "stopped"
	DesiredRemoved DesiredState = "removed"
)

// OpKind names an operation in operation_log.
type OpKind string

// The operation kinds of CONTRACT §4.
const (
	OpStart                   OpKind = "start"
	OpStop                    OpKind = "stop"
	OpRestart                 OpKind = "restart"
	OpPatch                   OpKind = "patch"
	OpCleanupContainer        OpKind = "cleanup_container"
	OpReconcileAdopt          OpKind = "reconcile_adopt"
	OpReconcileDispose        OpKind = "reconcile_dispose"
	OpReconcileObservedExited OpKind = "reconcile_observed_exited"
)

// OpSource names who asked for an operation.
type OpSource string

// The operation sources of CONTRACT §4.
const (
	SourceStartJobs    OpSource = "start_jobs"
	SourceStopJobs     OpSource = "stop_jobs"
	SourceAdminREST    OpSource = "admin_rest"
	SourceGMREST       OpSource = "gm_rest"
	SourceReconciler   OpSource = "reconciler"
	SourceDockerEvents OpSource = "docker_events"
)

// Outcome is how an operation ended.
type Outcome string

// The outcomes of CONTRACT §4.
const (
	OutcomeSucceeded Outcome = "succeeded"
	OutcomeFailed    Outcome = "failed"
)

// ErrorCode is a machine-readable failure code, shared by job results, operation_log rows,
// runtime records and the REST error envelope.
type ErrorCode string

// The error codes of CONTRACT §5 and §6.
const (
	CodeImagePullFailed      ErrorCode = "image_pull_failed"
	CodeContainerStartFailed ErrorCode = "container_start_failed"
	CodeStartConfigInvalid   ErrorCode = "start_config_invalid"
	CodeInvalidJob           ErrorCode = "invalid_job"
	CodeConflict             ErrorCode = "conflict"
	CodeRuntimeNotFound      ErrorCode = "runtime_not_found"
	CodeInvalidRequest       ErrorCode = "invalid_request"
	CodeUnauthenticated      ErrorCode = "unauthenticated"
	CodeForbidden            ErrorCode = "forbidden"
	CodeRuntimeRunning       ErrorCode = "runtime_running"
	CodePatchRolledBack      ErrorCode = "patch_rolled_back"
	CodeImageRefNotSemver    ErrorCode = "image_ref_not_semver"
	CodeSemverPatchOnly      ErrorCode = "semver_patch_only"
	CodeServiceUnavailable   ErrorCode = "service_unavailable"
	CodeInternalError        ErrorCode = "internal_error"
)

// Intent names a notification intent; only the three start failures have one.
type Intent string

// IntentFor returns the notification intent of a start failure code, or "" when the code has none.
func IntentFor(code ErrorCode) Intent {
	switch code {
	case CodeImagePullFailed, CodeContainerStartFailed, CodeStartConfigInvalid:
		return Intent("runtime." + string(code))
	}
	return ""
}

// HealthEventType names a health event on the health events stream.
type HealthEventType string

// The event types of CONTRACT §5.
const (
	EventContainerStarted     HealthEventType = "container_started"
	EventContainerExited      HealthEventType = "container_exited"
	EventContainerOOM         HealthEventType = "container_oom"
	EventContainerDisappeared HealthEventType = "container_disappeared"
	EventProbeFailed          HealthEventType = "probe_failed"
	EventProbeRecovered       HealthEventType = "probe_recovered"
	EventInspectUnhealthy     HealthEventType = "inspect_unhealthy"
)

// HealthStatus is a health snapshot's summary.
type HealthStatus string

// The health statuses of CONTRACT §4.
const (
	HealthHealthy   HealthStatus = "healthy"
	HealthUnhealthy HealthStatus = "unhealthy"
	HealthUnknown   HealthStatus = "unknown"
)

// Error is a failure with a contract code. Its message is safe to show to peers.
type Error struct {
	Code    ErrorCode
	Message string
	// Err is the underlying cause, kept for logs and errors.Is; never shown to peers.
	Err error
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// CodeOf returns the contract code carried by err, or fallback when err carries none.
func CodeOf(err error, fallback ErrorCode) ErrorCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return fallback
}

// MessageOf returns the peer-safe message carried by err, or err's text when it carries none.
func MessageOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	if err == nil {
		return ""
	}
	return err.Error()
}

// Labels put on every container RTM creates; the owner label is how RTM recognises its own.
const (
	LabelOwner    = "com.galaxy.owner"
	LabelGameID   = "com.galaxy.game_id"
	LabelImageRef = "com.galaxy.image_ref"
	// LabelGeneration records the record generation a container was created for, so that a
	// restart (which bumps it) is seen as drift from the desired container.
	LabelGeneration = "com.galaxy.generation"
	OwnerValue      = "rtmanager"
)

// ContainerName returns the Docker container name (and network alias) of a game.
func ContainerName(gameID string) string { return "galaxy-game-" + gameID }

// EngineEndpoint returns the stable engine URL of a game on the game network.
func EngineEndpoint(gameID string, port int) string {
	return fmt.Sprintf("http://%s:%d", ContainerName(gameID), port)
}

// EngineProber checks a running engine's /healthz: nil when it answers 2xx in time. The
// reconciler verifies a start or a patch with it; the prober probes every running engine.
type EngineProber interface {
	Probe(ctx context.Context, c Container, endpoint string) error
}

// ContainerState is Docker's state of a container, as RTM sees it.
type ContainerState string

// Docker's container states.
const (
	StateCreated    ContainerState = "created"
	StateRunning    ContainerState = "running"
	StatePaused     ContainerState = "paused"
	StateRestarting ContainerState = "restarting"
	StateRemoving   ContainerState = "removing"
	StateExited     ContainerState = "exited"
	StateDead       ContainerState = "dead"
)

// Container is what the Docker adapter observes of one game container.
type Container struct {
	ID       string
	Name     string
	GameID   string // from the game id label
	Owned    bool   // carries com.galaxy.owner=rtmanager
	ImageRef string // from the image_ref label, else the config's image
	State    ContainerState
	// Health is Docker's healthcheck status ("healthy", "unhealthy", "starting") or "" when the
	// image has no healthcheck. Only inspections fill it.
	Health     string
	ExitCode   int
	OOMKilled  bool
	IP         string // address on the configured network while it runs (inspections and lists fill it)
	Generation int64  // from the generation label; 0 when absent
	Created    time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	// Final is set when the container cannot be started again, only replaced: a terminated Pod
	// on Kubernetes (a Pod runs once). Docker containers are never final.
	Final bool
	// Starting is set when the runtime is bringing the container up by itself, with no further
	// call: a Pod waiting for its node, its image or its volume (not one that shows it cannot
	// start: a pull error). A Docker container never is (a created container waits for a start).
	Starting bool
}

// Running reports whether the container's process is up (running, paused or restarting).
func (c Container) Running() bool {
	return c.State == StateRunning || c.State == StatePaused || c.State == StateRestarting
}

// ContainerSpec is everything needed to create a game's container.
type ContainerSpec struct {
	GameID     string
	ImageRef   string
	Generation int64
	StateDir   string // host path, bind-mounted at StateMount
	StateMount string
	Network    string
	Env        map[string]string
	User       string // "uid:gid" or ""
	// ReadOnlyRoot mounts the container's root file system read-only; the engine writes only
	// to its state dir and /tmp (a small tmpfs).
	ReadOnlyRoot bool
	MemoryBytes  int64
	NanoCPUs     int64
	PidsLimit    int64
}

// DockerEvent is one container event for an owned container.
type DockerEvent struct {
	GameID      string
	ContainerID string
	Action      string // create, start, die, oom, kill, stop, destroy, pause, unpause, health_status…
	ExitCode    int    // die only; -1 when absent
	// Health is the new healthcheck status ("healthy", "unhealthy", "starting") of a
	// health_status event; "" for every other action.
	Health string
	Time   time.Time
}

// Sentinel errors the Docker adapter wraps so that callers can tell failures apart without
// importing the SDK.
var (
	// ErrNotFound: the container, image or network does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the object is in a state that forbids the call (a name already in use).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the daemon (or another dependency) cannot be reached; retry later.
	ErrUnavailable = errors.New("unavailable")
	// ErrUnhealthy: an engine answered its probe but reported itself unhealthy (not 2xx), as
	// opposed to not answering at all (still booting, or hung).
	ErrUnhealthy = errors.New("engine reports itself unhealthy")
	// ErrFenced: a write or a runtime call was refused because the caller no longer holds the
	// game's lease (its fencing epoch is older than the record's, or its lease has ended).
	ErrFenced = errors.New("fenced out: the game's lease is held by a newer holder")
)

// Starting is the error of a start that the runtime has set going but that does not run yet (a
// Pod waiting for its node, its image or its volume): not a failure. The runtime's events say
// when it runs or fails; Within is when to look again at the latest, when the runtime stops
// waiting for it.
type Starting struct {
	ID     string // the container
	Reason string // why it does not run yet, in the runtime's words
	Within time.Duration
}

func (e *Starting) Error() string {
	return fmt.Sprintf("container %s is starting (%s); the runtime gives it %s more", e.ID, e.Reason, e.Within)
}
