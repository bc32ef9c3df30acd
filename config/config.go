// Package config reads Runtime Manager's configuration from the environment into one typed,
// validated struct. It imports no other package of the project.
//
// Load is the only way main builds a Config: it starts from Default, reads every RTMANAGER_*
// variable (an empty value counts as unset and keeps the default), parses it, and finally runs
// Validate. Any failure is a *Error naming the variable, so main can log one line and exit 2
// before opening anything.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/distribution/reference"
)

// Config is every setting of CONTRACT §1, parsed and validated.
type Config struct {
	// Runtime is where games run: RuntimeDocker (one Docker host, the default) or
	// RuntimeKubernetes (one namespace of a cluster). A setting of the other runtime is refused.
	Runtime string // RTMANAGER_RUNTIME

	InternalHTTPAddr string // RTMANAGER_INTERNAL_HTTP_ADDR
	DockerHost       string // RTMANAGER_DOCKER_HOST
	DockerNetwork    string // RTMANAGER_DOCKER_NETWORK

	GameStateRoot     string // RTMANAGER_GAME_STATE_ROOT (required, absolute)
	GameStateDirMode  uint32 // RTMANAGER_GAME_STATE_DIR_MODE (octal)
	GameStateOwnerUID int    // RTMANAGER_GAME_STATE_OWNER_UID
	GameStateOwnerGID int    // RTMANAGER_GAME_STATE_OWNER_GID

	PostgresDSN string // RTMANAGER_POSTGRES_PRIMARY_DSN (required)

	PostgresConnectTimeout       time.Duration // RTMANAGER_POSTGRES_CONNECT_TIMEOUT
	PostgresOperationTimeout     time.Duration // RTMANAGER_POSTGRES_OPERATION_TIMEOUT
	PostgresStatementTimeout     time.Duration // RTMANAGER_POSTGRES_STATEMENT_TIMEOUT (<= the operation timeout)
	PostgresLockTimeout          time.Duration // RTMANAGER_POSTGRES_LOCK_TIMEOUT
	PostgresMigrationLockTimeout time.Duration // RTMANAGER_POSTGRES_MIGRATION_LOCK_TIMEOUT

	RedisAddr     string // RTMANAGER_REDIS_MASTER_ADDR (required, host:port)
	RedisPassword string // RTMANAGER_REDIS_PASSWORD

	StartJobsStream           string // RTMANAGER_REDIS_START_JOBS_STREAM
	StopJobsStream            string // RTMANAGER_REDIS_STOP_JOBS_STREAM
	JobResultsStream          string // RTMANAGER_REDIS_JOB_RESULTS_STREAM
	HealthEventsStream        string // RTMANAGER_REDIS_HEALTH_EVENTS_STREAM
	NotificationIntentsStream string // RTMANAGER_NOTIFICATION_INTENTS_STREAM
	// StreamRetention is about how many entries each output stream keeps (XADD MAXLEN ~); 0
	// keeps every entry.
	StreamRetention int64 // RTMANAGER_STREAM_RETENTION

	LobbyInternalBaseURL string // RTMANAGER_LOBBY_INTERNAL_BASE_URL (empty: diagnostic off)

	ShutdownTimeout   time.Duration // RTMANAGER_SHUTDOWN_TIMEOUT
	ReconcileInterval time.Duration // RTMANAGER_RECONCILE_INTERVAL
	InspectInterval   time.Duration // RTMANAGER_INSPECT_INTERVAL

	ProbeInterval         time.Duration // RTMANAGER_PROBE_INTERVAL
	ProbeTimeout          time.Duration // RTMANAGER_PROBE_TIMEOUT
	ProbeFailureThreshold int           // RTMANAGER_PROBE_FAILURE_THRESHOLD
	ProbeTarget           string        // RTMANAGER_PROBE_TARGET: ProbeTargetContainerIP or ProbeTargetEndpoint

	PatchVerifyTimeout time.Duration // RTMANAGER_PATCH_VERIFY_TIMEOUT
	GameLeaseTTL       time.Duration // RTMANAGER_GAME_LEASE_TTL

	// A request whose runtime work keeps failing is answered failed once it has failed
	// RetryAttempts times and RetryWindow has passed since its first failure.
	RetryAttempts int           // RTMANAGER_RETRY_ATTEMPTS
	RetryWindow   time.Duration // RTMANAGER_RETRY_WINDOW

	// The reconciler's work queue: ReconcileWorkers games are reconciled at once; reconciles
	// start at most ReconcileRate a second (bursts of ReconcileBurst); a game whose reconcile
	// failed waits from ReconcileBackoffMin, doubling, up to ReconcileBackoffMax; the sources'
	// hand-off to the queue buffers ReconcileQueueBuffer game ids.
	ReconcileWorkers     int           // RTMANAGER_RECONCILE_WORKERS
	ReconcileRate        int           // RTMANAGER_RECONCILE_RATE (reconciles started per second)
	ReconcileBurst       int           // RTMANAGER_RECONCILE_BURST
	ReconcileBackoffMin  time.Duration // RTMANAGER_RECONCILE_BACKOFF_MIN
	ReconcileBackoffMax  time.Duration // RTMANAGER_RECONCILE_BACKOFF_MAX
	ReconcileQueueBuffer int           // RTMANAGER_RECONCILE_QUEUE_BUFFER

	// JobParallel is how many games' jobs of one read each job consumer records at once (each
	// game's in stream order).
	JobParallel int // RTMANAGER_JOB_PARALLEL

	RedisPoolSize    int // RTMANAGER_REDIS_POOL_SIZE (connections)
	PostgresMaxConns int // RTMANAGER_POSTGRES_MAX_CONNECTIONS (connections)

	EnginePort         int           // RTMANAGER_ENGINE_PORT
	EngineStateMount   string        // RTMANAGER_ENGINE_STATE_MOUNT
	EngineStopTimeout  time.Duration // RTMANAGER_ENGINE_STOP_TIMEOUT
	EngineMemoryBytes  int64         // RTMANAGER_ENGINE_MEMORY_LIMIT ("1g", "96m", "512k", bytes)
	EngineNanoCPUs     int64         // RTMANAGER_ENGINE_CPUS ("1", "0.5") in units of 1e-9 CPUs
	EnginePidsLimit    int64         // RTMANAGER_ENGINE_PIDS_LIMIT
	EngineUser         string        // RTMANAGER_ENGINE_USER ("uid:gid"; default: the state dir owner when non-zero)
	EngineReadOnlyRoot bool          // RTMANAGER_ENGINE_READ_ONLY_ROOTFS (default true)

	AllowedImageRepositories []string // RTMANAGER_ALLOWED_IMAGE_REPOSITORIES (comma list)

	TelemetryExporter string // RTMANAGER_TELEMETRY_EXPORTER: otlp-grpc, otlp-http, stdout, none
	LogLevel          string // RTMANAGER_LOG_LEVEL: debug, info, warn, error
	LogFormat         string // RTMANAGER_LOG_FORMAT: json, text

	InternalToken   string        // RTMANAGER_INTERNAL_TOKEN
	RESTWaitTimeout time.Duration // RTMANAGER_REST_WAIT_TIMEOUT
	PProf           bool          // RTMANAGER_PPROF=1 exposes /debug/pprof on the internal listener

	// The Kubernetes runtime (RTMANAGER_RUNTIME=kubernetes; credentials from KUBECONFIG, else
	// the Pod's service account).
	KubeNamespace         string        // RTMANAGER_KUBE_NAMESPACE (required with kubernetes)
	KubeStorageClass      string        // RTMANAGER_KUBE_STORAGE_CLASS ("": the cluster's default class)
	KubeStateSize         string        // RTMANAGER_KUBE_STATE_SIZE (a quantity: 1Gi, 500Mi)
	KubeStartTimeout      time.Duration // RTMANAGER_KUBE_START_TIMEOUT (a Pod unplaced, or placed and not running, for that long fails its start)
	KubeEvictionTolerance time.Duration // RTMANAGER_KUBE_EVICTION_TOLERATION (a lost node's Pods go after it)

	// StrictEnv makes an unknown RTMANAGER_* variable (see Unknown) stop the start-up, exit 2,
	// instead of a warning.
	StrictEnv bool // RTMANAGER_STRICT_ENV
}

// Probe targets: how the prober reaches an engine's GET /healthz.
const (
	ProbeTargetContainerIP = "container_ip" // the container's address on the configured network
	ProbeTargetEndpoint    = "endpoint"     // the DNS name of engine_endpoint
	// ProbeTargetReadiness trusts the Pod's readiness, which the kubelet probes (Kubernetes
	// only; the default there when RTM runs outside the cluster and cannot reach Pod IPs).
	ProbeTargetReadiness = "readiness"
)

// Runtimes accepted by RTMANAGER_RUNTIME.
const (
	RuntimeDocker     = "docker"
	RuntimeKubernetes = "kubernetes"
)

// Telemetry exporters accepted by RTMANAGER_TELEMETRY_EXPORTER.
const (
	TelemetryOTLPGRPC = "otlp-grpc"
	TelemetryOTLPHTTP = "otlp-http"
	TelemetryStdout   = "stdout"
	TelemetryNone     = "none"
)

// minEngineMemory is the smallest memory limit the Docker daemon accepts (daemon_unix.go's
// linuxMinMemory); a smaller one would only fail later, at the first container create.
const minEngineMemory = 6 << 20

// minEngineNanoCPUs is the smallest CPU limit the Docker daemon accepts (0.01 CPUs: below it the
// CFS quota falls under the kernel's 1ms minimum).
const minEngineNanoCPUs = 1e7

// minGameLeaseTTL keeps the lease long enough to be renewed at least once between two beats.
const minGameLeaseTTL = 2 * time.Second

// Error is the only error Load and Validate return: the variable at fault and why, so that main
// can log one line naming it and exit 2. Reason never repeats a secret (the DSN, the Redis
// password or the internal token).
type Error struct {
	Var    string // the environment variable, e.g. "RTMANAGER_PROBE_TIMEOUT"
	Reason string // what is wrong with its value
}

// Error returns "<VAR>: <reason>".
func (e *Error) Error() string { return e.Var + ": " + e.Reason }

// Default returns every default of CONTRACT §1. The required settings (GameStateRoot,
// PostgresDSN, RedisAddr) are left empty, so Default().Validate() fails until they are set.
func Default() Config {
	return Config{
		Runtime:          RuntimeDocker,
		InternalHTTPAddr: ":8096",
		DockerHost:       "unix:///var/run/docker.sock",
		DockerNetwork:    "galaxy-net",

		GameStateDirMode:  0o750,
		GameStateOwnerUID: 0,
		GameStateOwnerGID: 0,

		PostgresConnectTimeout:       5 * time.Second,
		PostgresOperationTimeout:     10 * time.Second,
		PostgresStatementTimeout:     5 * time.Second,
		PostgresLockTimeout:          3 * time.Second,
		PostgresMigrationLockTimeout: time.Minute,

		StartJobsStream:           "runtime:start_jobs",
		StopJobsStream:            "runtime:stop_jobs",
		JobResultsStream:          "runtime:job_results",
		HealthEventsStream:        "runtime:health_events",
		NotificationIntentsStream: "notification:intents",
		StreamRetention:           100000,

		ShutdownTimeout:   30 * time.Second,
		ReconcileInterval: 5 * time.Minute,
		InspectInterval:   30 * time.Second,

		ProbeInterval:         5 * time.Second,
		ProbeTimeout:          2 * time.Second,
		ProbeFailureThreshold: 3,
		ProbeTarget:           ProbeTargetContainerIP,

		PatchVerifyTimeout: 60 * time.Second,
		GameLeaseTTL:       30 * time.Second,

		RetryAttempts: 5,
		RetryWindow:   time.Minute,

		ReconcileWorkers:     16,
		ReconcileRate:        50,
		ReconcileBurst:       300,
		ReconcileBackoffMin:  5 * time.Millisecond,
		ReconcileBackoffMax:  time.Minute,
		ReconcileQueueBuffer: 8192,
		RedisPoolSize:        32,
		PostgresMaxConns:     20,
		JobParallel:          8,

		EnginePort:         8080,
		EngineStateMount:   "/var/lib/galaxy-game",
		EngineStopTimeout:  10 * time.Second,
		EngineMemoryBytes:  1 << 30,
		EngineNanoCPUs:     1e9,
		EnginePidsLimit:    512,
		EngineUser:         "",
		EngineReadOnlyRoot: true,

		AllowedImageRepositories: []string{"galaxy/game"},

		TelemetryExporter: TelemetryNone,
		LogLevel:          "info",
		LogFormat:         "json",

		RESTWaitTimeout: 30 * time.Second,

		KubeStateSize:         "1Gi",
		KubeStartTimeout:      2 * time.Minute,
		KubeEvictionTolerance: 30 * time.Second,
	}
}

// Load builds the configuration from getenv (os.Getenv in main; a map lookup in tests). It starts
// from Default, reads every variable of Vars in the order of CONTRACT §1, treating an empty value
// as unset, and parses it; a missing required variable or an unparsable value stops it at once.
// RTMANAGER_ENGINE_USER, when unset, becomes "uid:gid" of the state dir owner unless both are 0.
// It then runs Validate. On failure it returns the zero Config and a *Error.
func Load(getenv func(string) string) (Config, error) {
	cfg := Default()
	vars := variables()
	// The runtime decides which of the others apply: read it first.
	for _, v := range vars {
		if val := getenv(v.name); v.name == "RTMANAGER_RUNTIME" && val != "" {
			if err := v.set(&cfg, val); err != nil {
				return Config{}, &Error{Var: v.name, Reason: err.Error()}
			}
		}
	}
	for _, v := range vars {
		val := getenv(v.name)
		if val == "" {
			if v.required && v.applies(cfg.Runtime) {
				return Config{}, &Error{Var: v.name, Reason: "required but not set"}
			}
			continue
		}
		if !v.applies(cfg.Runtime) {
			return Config{}, &Error{Var: v.name, Reason: fmt.Sprintf("applies only to RTMANAGER_RUNTIME=%s (this runtime is %s); unset it", v.only, cfg.Runtime)}
		}
		if err := v.set(&cfg, val); err != nil {
			return Config{}, &Error{Var: v.name, Reason: err.Error()}
		}
	}
	if getenv("RTMANAGER_ENGINE_USER") == "" && (cfg.GameStateOwnerUID != 0 || cfg.GameStateOwnerGID != 0) {
		cfg.EngineUser = strconv.Itoa(cfg.GameStateOwnerUID) + ":" + strconv.Itoa(cfg.GameStateOwnerGID)
	}
	if cfg.Runtime == RuntimeKubernetes {
		kubeDefaults(&cfg, getenv)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks what no single variable can: the required settings are present, the stream
// names are non-empty and pairwise distinct, ProbeTimeout < ProbeInterval, PatchVerifyTimeout >=
// ProbeInterval, GameLeaseTTL >= 2s, PostgresStatementTimeout <= PostgresOperationTimeout and
// EngineStopTimeout <= ShutdownTimeout, ReconcileBackoffMin <= ReconcileBackoffMax. It returns the first failure as a *Error naming the
// variable to change (the first of a pair; for two equal streams, the later one in CONTRACT §1's
// order), or nil.
func (c Config) Validate() error {
	for _, v := range variables() {
		if v.required && v.applies(c.Runtime) && v.get(c) == "" {
			return &Error{Var: v.name, Reason: "required but not set"}
		}
	}

	streams := []struct{ name, value string }{
		{"RTMANAGER_REDIS_START_JOBS_STREAM", c.StartJobsStream},
		{"RTMANAGER_REDIS_STOP_JOBS_STREAM", c.StopJobsStream},
		{"RTMANAGER_REDIS_JOB_RESULTS_STREAM", c.JobResultsStream},
		{"RTMANAGER_REDIS_HEALTH_EVENTS_STREAM", c.HealthEventsStream},
		{"RTMANAGER_NOTIFICATION_INTENTS_STREAM", c.NotificationIntentsStream},
	}
	for i, s := range streams {
		if s.value == "" {
			return &Error{Var: s.name, Reason: "stream name must not be empty"}
		}
		for _, earlier := range streams[:i] {
			if s.value == earlier.value {
				return &Error{Var: s.name, Reason: fmt.Sprintf("stream %q is already used by %s; every stream needs its own name", s.value, earlier.name)}
			}
		}
	}

	switch {
	case c.ProbeTarget == ProbeTargetReadiness && c.Runtime != RuntimeKubernetes:
		return &Error{Var: "RTMANAGER_PROBE_TARGET", Reason: fmt.Sprintf("%q applies only to RTMANAGER_RUNTIME=%s", c.ProbeTarget, RuntimeKubernetes)}
	case c.ProbeTimeout >= c.ProbeInterval:
		return &Error{Var: "RTMANAGER_PROBE_TIMEOUT", Reason: fmt.Sprintf("%s must be shorter than RTMANAGER_PROBE_INTERVAL (%s)", c.ProbeTimeout, c.ProbeInterval)}
	case c.PatchVerifyTimeout < c.ProbeInterval:
		return &Error{Var: "RTMANAGER_PATCH_VERIFY_TIMEOUT", Reason: fmt.Sprintf("%s must be at least RTMANAGER_PROBE_INTERVAL (%s), or a patched engine is never probed", c.PatchVerifyTimeout, c.ProbeInterval)}
	case c.GameLeaseTTL < minGameLeaseTTL:
		return &Error{Var: "RTMANAGER_GAME_LEASE_TTL", Reason: fmt.Sprintf("%s is shorter than the minimum %s", c.GameLeaseTTL, minGameLeaseTTL)}
	case c.PostgresStatementTimeout > c.PostgresOperationTimeout:
		return &Error{Var: "RTMANAGER_POSTGRES_STATEMENT_TIMEOUT", Reason: fmt.Sprintf("%s must not exceed RTMANAGER_POSTGRES_OPERATION_TIMEOUT (%s), or statements keep running after RTM gave up on them", c.PostgresStatementTimeout, c.PostgresOperationTimeout)}
	case c.ReconcileBackoffMin > c.ReconcileBackoffMax:
		return &Error{Var: "RTMANAGER_RECONCILE_BACKOFF_MIN", Reason: fmt.Sprintf("%s is longer than RTMANAGER_RECONCILE_BACKOFF_MAX (%s)", c.ReconcileBackoffMin, c.ReconcileBackoffMax)}
	case c.EngineStopTimeout > c.ShutdownTimeout:
		return &Error{Var: "RTMANAGER_ENGINE_STOP_TIMEOUT", Reason: fmt.Sprintf("%s must not exceed RTMANAGER_SHUTDOWN_TIMEOUT (%s), or a stop in flight cannot finish during shutdown", c.EngineStopTimeout, c.ShutdownTimeout)}
	}
	return nil
}

// Redacted returns every setting keyed by its environment variable, formatted the way Load reads
// it (so a value can be copied back into the environment), with the secrets hidden: the DSN's
// password (in the user info or a password query parameter) becomes "xxxxx", and the Redis
// password and the internal token become "[redacted]" when set ("" when not). A DSN that does not
// parse is hidden whole.
func (c Config) Redacted() map[string]string {
	vars := variables()
	out := make(map[string]string, len(vars))
	for _, v := range vars {
		val := v.get(c)
		if !v.applies(c.Runtime) {
			val = "" // not a setting of this runtime: Load would refuse it
		}
		if v.redact != nil {
			val = v.redact(val)
		}
		out[v.name] = val
	}
	return out
}

// LogValue makes a Config safe to hand to log/slog: it logs as a group of Redacted's entries,
// sorted by variable name, never the secrets.
func (c Config) LogValue() slog.Value {
	r := c.Redacted()
	attrs := make([]slog.Attr, 0, len(r))
	for _, n := range Vars() {
		attrs = append(attrs, slog.String(n, r[n]))
	}
	return slog.GroupValue(attrs...)
}

// Vars returns the sorted names of every environment variable Load reads.
func Vars() []string {
	vars := variables()
	names := make([]string, 0, len(vars))
	for _, v := range vars {
		names = append(names, v.name)
	}
	slices.Sort(names)
	return names
}

// variable is one environment variable: how Load parses it into a Config and how Redacted prints
// it back.
type variable struct {
	name     string
	required bool
	only     string                          // the one runtime the variable applies to; "": every runtime
	set      func(c *Config, v string) error // v is non-empty; the error's text becomes Error.Reason
	get      func(c Config) string
	redact   func(v string) string // nil: the value is not secret
}

// variables lists every variable in the order of CONTRACT §1; Load reads them in this order, so
// the first bad one is the one reported.
func variables() []variable {
	return []variable{
		oneOf("RTMANAGER_RUNTIME", func(c *Config) *string { return &c.Runtime }, RuntimeDocker, RuntimeKubernetes),
		checked("RTMANAGER_INTERNAL_HTTP_ADDR", func(c *Config) *string { return &c.InternalHTTPAddr }, hostPort(0, false)),
		checked("RTMANAGER_DOCKER_HOST", func(c *Config) *string { return &c.DockerHost }, checkDockerHost).hiddenBy(redactURL).of(RuntimeDocker),
		objectName("RTMANAGER_DOCKER_NETWORK", func(c *Config) *string { return &c.DockerNetwork }).of(RuntimeDocker),
		parsed("RTMANAGER_GAME_STATE_ROOT", func(c *Config) *string { return &c.GameStateRoot }, parseHostPath, verbatim).mandatory().of(RuntimeDocker),
		parsed("RTMANAGER_GAME_STATE_DIR_MODE", func(c *Config) *uint32 { return &c.GameStateDirMode }, parseDirMode, formatDirMode).of(RuntimeDocker),
		id("RTMANAGER_GAME_STATE_OWNER_UID", "uid", func(c *Config) *int { return &c.GameStateOwnerUID }),
		id("RTMANAGER_GAME_STATE_OWNER_GID", "gid", func(c *Config) *int { return &c.GameStateOwnerGID }),
		checked("RTMANAGER_POSTGRES_PRIMARY_DSN", func(c *Config) *string { return &c.PostgresDSN }, checkPostgresDSN).mandatory().hiddenBy(redactDSN),
		duration("RTMANAGER_POSTGRES_CONNECT_TIMEOUT", func(c *Config) *time.Duration { return &c.PostgresConnectTimeout }),
		duration("RTMANAGER_POSTGRES_OPERATION_TIMEOUT", func(c *Config) *time.Duration { return &c.PostgresOperationTimeout }),
		duration("RTMANAGER_POSTGRES_STATEMENT_TIMEOUT", func(c *Config) *time.Duration { return &c.PostgresStatementTimeout }),
		duration("RTMANAGER_POSTGRES_LOCK_TIMEOUT", func(c *Config) *time.Duration { return &c.PostgresLockTimeout }),
		duration("RTMANAGER_POSTGRES_MIGRATION_LOCK_TIMEOUT", func(c *Config) *time.Duration { return &c.PostgresMigrationLockTimeout }),
		checked("RTMANAGER_REDIS_MASTER_ADDR", func(c *Config) *string { return &c.RedisAddr }, hostPort(1, true)).mandatory(),
		checked("RTMANAGER_REDIS_PASSWORD", func(c *Config) *string { return &c.RedisPassword }, anything).hiddenBy(redactSecret),
		objectName("RTMANAGER_REDIS_START_JOBS_STREAM", func(c *Config) *string { return &c.StartJobsStream }),
		objectName("RTMANAGER_REDIS_STOP_JOBS_STREAM", func(c *Config) *string { return &c.StopJobsStream }),
		objectName("RTMANAGER_REDIS_JOB_RESULTS_STREAM", func(c *Config) *string { return &c.JobResultsStream }),
		objectName("RTMANAGER_REDIS_HEALTH_EVENTS_STREAM", func(c *Config) *string { return &c.HealthEventsStream }),
		objectName("RTMANAGER_NOTIFICATION_INTENTS_STREAM", func(c *Config) *string { return &c.NotificationIntentsStream }),
		int64From("RTMANAGER_STREAM_RETENTION", 0, "a number of entries (0 keeps every entry)", func(c *Config) *int64 { return &c.StreamRetention }),
		checked("RTMANAGER_LOBBY_INTERNAL_BASE_URL", func(c *Config) *string { return &c.LobbyInternalBaseURL }, checkHTTPURL).hiddenBy(redactURL),
		duration("RTMANAGER_SHUTDOWN_TIMEOUT", func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
		duration("RTMANAGER_RECONCILE_INTERVAL", func(c *Config) *time.Duration { return &c.ReconcileInterval }),
		duration("RTMANAGER_INSPECT_INTERVAL", func(c *Config) *time.Duration { return &c.InspectInterval }),
		duration("RTMANAGER_PROBE_INTERVAL", func(c *Config) *time.Duration { return &c.ProbeInterval }),
		duration("RTMANAGER_PROBE_TIMEOUT", func(c *Config) *time.Duration { return &c.ProbeTimeout }),
		atLeastOne("RTMANAGER_PROBE_FAILURE_THRESHOLD", func(c *Config) *int { return &c.ProbeFailureThreshold }),
		oneOf("RTMANAGER_PROBE_TARGET", func(c *Config) *string { return &c.ProbeTarget }, ProbeTargetContainerIP, ProbeTargetEndpoint, ProbeTargetReadiness),
		duration("RTMANAGER_PATCH_VERIFY_TIMEOUT", func(c *Config) *time.Duration { return &c.PatchVerifyTimeout }),
		duration("RTMANAGER_GAME_LEASE_TTL", func(c *Config) *time.Duration { return &c.GameLeaseTTL }),
		atLeastOne("RTMANAGER_RETRY_ATTEMPTS", func(c *Config) *int { return &c.RetryAttempts }),
		duration("RTMANAGER_RETRY_WINDOW", func(c *Config) *time.Duration { return &c.RetryWindow }),
		atLeastOne("RTMANAGER_RECONCILE_WORKERS", func(c *Config) *int { return &c.ReconcileWorkers }),
		atLeastOne("RTMANAGER_RECONCILE_RATE", func(c *Config) *int { return &c.ReconcileRate }),
		atLeastOne("RTMANAGER_RECONCILE_BURST", func(c *Config) *int { return &c.ReconcileBurst }),
		duration("RTMANAGER_RECONCILE_BACKOFF_MIN", func(c *Config) *time.Duration { return &c.ReconcileBackoffMin }),
		duration("RTMANAGER_RECONCILE_BACKOFF_MAX", func(c *Config) *time.Duration { return &c.ReconcileBackoffMax }),
		atLeastOne("RTMANAGER_RECONCILE_QUEUE_BUFFER", func(c *Config) *int { return &c.ReconcileQueueBuffer }),
		atLeastOne("RTMANAGER_REDIS_POOL_SIZE", func(c *Config) *int { return &c.RedisPoolSize }),
		atLeastOne("RTMANAGER_POSTGRES_MAX_CONNECTIONS", func(c *Config) *int { return &c.PostgresMaxConns }),
		atLeastOne("RTMANAGER_JOB_PARALLEL", func(c *Config) *int { return &c.JobParallel }),
		parsed("RTMANAGER_ENGINE_PORT", func(c *Config) *int { return &c.EnginePort }, func(v string) (int, error) { return parsePort(v, 1) }, strconv.Itoa),
		parsed("RTMANAGER_ENGINE_STATE_MOUNT", func(c *Config) *string { return &c.EngineStateMount }, parseMountPath, verbatim),
		duration("RTMANAGER_ENGINE_STOP_TIMEOUT", func(c *Config) *time.Duration { return &c.EngineStopTimeout }),
		parsed("RTMANAGER_ENGINE_MEMORY_LIMIT", func(c *Config) *int64 { return &c.EngineMemoryBytes }, parseMemory, formatMemory),
		parsed("RTMANAGER_ENGINE_CPUS", func(c *Config) *int64 { return &c.EngineNanoCPUs }, parseCPUs, formatCPUs),
		int64From("RTMANAGER_ENGINE_PIDS_LIMIT", 1, "a positive integer", func(c *Config) *int64 { return &c.EnginePidsLimit }).of(RuntimeDocker),
		checked("RTMANAGER_ENGINE_USER", func(c *Config) *string { return &c.EngineUser }, checkUser),
		boolean("RTMANAGER_ENGINE_READ_ONLY_ROOTFS", func(c *Config) *bool { return &c.EngineReadOnlyRoot }),
		parsed("RTMANAGER_ALLOWED_IMAGE_REPOSITORIES", func(c *Config) *[]string { return &c.AllowedImageRepositories }, parseRepositories,
			func(repos []string) string { return strings.Join(repos, ",") }),
		oneOf("RTMANAGER_TELEMETRY_EXPORTER", func(c *Config) *string { return &c.TelemetryExporter },
			TelemetryOTLPGRPC, TelemetryOTLPHTTP, TelemetryStdout, TelemetryNone),
		oneOf("RTMANAGER_LOG_LEVEL", func(c *Config) *string { return &c.LogLevel }, "debug", "info", "warn", "error"),
		oneOf("RTMANAGER_LOG_FORMAT", func(c *Config) *string { return &c.LogFormat }, "json", "text"),
		checked("RTMANAGER_INTERNAL_TOKEN", func(c *Config) *string { return &c.InternalToken }, anything).hiddenBy(redactSecret),
		duration("RTMANAGER_REST_WAIT_TIMEOUT", func(c *Config) *time.Duration { return &c.RESTWaitTimeout }),
		boolean("RTMANAGER_PPROF", func(c *Config) *bool { return &c.PProf }),
		boolean("RTMANAGER_STRICT_ENV", func(c *Config) *bool { return &c.StrictEnv }),
		checked("RTMANAGER_KUBE_NAMESPACE", func(c *Config) *string { return &c.KubeNamespace }, checkDNSLabel).mandatory().of(RuntimeKubernetes),
		checked("RTMANAGER_KUBE_STORAGE_CLASS", func(c *Config) *string { return &c.KubeStorageClass }, checkDNSSubdomain).of(RuntimeKubernetes),
		checked("RTMANAGER_KUBE_STATE_SIZE", func(c *Config) *string { return &c.KubeStateSize }, checkQuantity).of(RuntimeKubernetes),
		duration("RTMANAGER_KUBE_START_TIMEOUT", func(c *Config) *time.Duration { return &c.KubeStartTimeout }).of(RuntimeKubernetes),
		duration("RTMANAGER_KUBE_EVICTION_TOLERATION", func(c *Config) *time.Duration { return &c.KubeEvictionTolerance }).of(RuntimeKubernetes),
	}
}

// applies reports whether v is a setting of runtime.
func (v variable) applies(runtime string) bool { return v.only == "" || v.only == runtime }

// of marks v as a setting of one runtime only: set under another, it stops the start-up.
func (v variable) of(runtime string) variable {
	v.only = runtime
	return v
}

// kubeDefaults fills what the Kubernetes runtime defaults differently from Docker, where the
// environment leaves it unset: the probe reaches Pod IPs only from inside the cluster (outside,
// it trusts the Pods' readiness), and a reconcile waits on API round trips (and a restart or a
// patch for its Pod to run: seconds, not Docker's tens of milliseconds), so more reconciles run
// at once.
func kubeDefaults(c *Config, getenv func(string) string) {
	if getenv("RTMANAGER_PROBE_TARGET") == "" {
		c.ProbeTarget = ProbeTargetReadiness
		if getenv("KUBERNETES_SERVICE_HOST") != "" && getenv("KUBECONFIG") == "" {
			c.ProbeTarget = ProbeTargetContainerIP
		}
	}
	for name, set := range map[string]func(){
		"RTMANAGER_RECONCILE_WORKERS": func() { c.ReconcileWorkers = KubeReconcileWorkers },
		"RTMANAGER_RECONCILE_RATE":    func() { c.ReconcileRate = KubeReconcileRate },
		"RTMANAGER_RECONCILE_BURST":   func() { c.ReconcileBurst = KubeReconcileBurst },
	} {
		if getenv(name) == "" {
			set()
		}
	}
}

// The work queue's defaults on Kubernetes (see kubeDefaults). The workers bound the POSTs RTM
// keeps in flight during a burst of starts; each also spends part of its reconcile on PostgreSQL
// and Redis, so RTM needs more workers than a bare client needs requests in flight to keep the
// API server as busy. On the benchmark's 2-core control plane (kernel 6.18) RTM answered 1,000
// starts in 12.7–13.6 s with 256 workers against 13.4–15.6 s with 128 and 13.4–14.0 s with 64,
// and the bare client was fastest at 256 in flight (docs/kubernetes.md).
const (
	KubeReconcileWorkers = 256
	KubeReconcileRate    = 500
	KubeReconcileBurst   = 2000
)

// mandatory marks v as one Load refuses to start without.
func (v variable) mandatory() variable {
	v.required = true
	return v
}

// hiddenBy makes Redacted print v's value through redact.
func (v variable) hiddenBy(redact func(string) string) variable {
	v.redact = redact
	return v
}

// parsed is a variable that parse reads into field (its error names what is wrong with the value)
// and format prints back in the form parse reads. Every kind of variable below is one.
func parsed[T any](n string, field func(*Config) *T, parse func(string) (T, error), format func(T) string) variable {
	return variable{
		name: n,
		set: func(c *Config, v string) error {
			x, err := parse(v)
			if err != nil {
				return err
			}
			*field(c) = x
			return nil
		},
		get: func(c Config) string { return format(*field(&c)) },
	}
}

// checked is a string variable kept as written once check accepts it.
func checked(n string, field func(*Config) *string, check func(string) error) variable {
	return parsed(n, field, func(v string) (string, error) { return v, check(v) }, verbatim)
}

// verbatim prints a string setting as it is.
func verbatim(s string) string { return s }

// anything accepts every value (a password, a token).
func anything(string) error { return nil }

// duration is a variable read with time.ParseDuration; zero and negative values are refused.
func duration(n string, field func(*Config) *time.Duration) variable {
	return parsed(n, field, func(v string) (time.Duration, error) {
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration (e.g. 500ms, 30s, 5m)", v)
		}
		if d <= 0 {
			return 0, fmt.Errorf("%q must be positive", v)
		}
		return d, nil
	}, time.Duration.String)
}

// int64From is a variable holding an integer of at least lowest; what names such a value in the
// error ("a positive integer").
func int64From(n string, lowest int64, what string, field func(*Config) *int64) variable {
	return parsed(n, field, func(v string) (int64, error) {
		i, err := strconv.ParseInt(v, 10, 64)
		if err != nil || i < lowest {
			return 0, fmt.Errorf("%q is not %s", v, what)
		}
		return i, nil
	}, func(i int64) string { return strconv.FormatInt(i, 10) })
}

// atLeastOne is a variable holding an integer of at least 1 (and at most 2^31-1).
func atLeastOne(n string, field func(*Config) *int) variable {
	return parsed(n, field, func(v string) (int, error) {
		i, err := strconv.ParseInt(v, 10, 32)
		if err != nil || i < 1 {
			return 0, fmt.Errorf("%q is not an integer of at least 1", v)
		}
		return int(i), nil
	}, strconv.Itoa)
}

// boolean is a variable read with strconv.ParseBool (1, t, true, 0, f, false, …).
func boolean(n string, field func(*Config) *bool) variable {
	return parsed(n, field, func(v string) (bool, error) {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("%q is not a boolean (true, false, 1 or 0)", v)
		}
		return b, nil
	}, strconv.FormatBool)
}

// oneOf is a variable whose value must be one of allowed, spelled exactly.
func oneOf(n string, field func(*Config) *string, allowed ...string) variable {
	return checked(n, field, func(v string) error {
		if !slices.Contains(allowed, v) {
			return fmt.Errorf("%q is not one of %s", v, strings.Join(allowed, ", "))
		}
		return nil
	})
}

// objectName is a variable holding a Docker or Redis name: anything without white space or control
// characters, which would break the operators' docker and redis-cli command lines.
func objectName(n string, field func(*Config) *string) variable {
	return checked(n, field, func(v string) error {
		if strings.ContainsFunc(v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
			return fmt.Errorf("%q contains white space or control characters", v)
		}
		return nil
	})
}

// id is a variable holding a numeric uid or gid.
func id(n, what string, field func(*Config) *int) variable {
	return parsed(n, field, func(v string) (int, error) {
		if !isID(v) {
			return 0, fmt.Errorf("%q is not a numeric %s (0 to 4294967294)", v, what)
		}
		i, _ := strconv.Atoi(v)
		return i, nil
	}, strconv.Itoa)
}

// hostPort checks a host:port address as net.Listen and net.Dial take it: a port of at least
// minPort and, with needHost, a host.
func hostPort(minPort int, needHost bool) func(string) error {
	return func(v string) error {
		_, err := parseHostPort(v, minPort, needHost)
		return err
	}
}

// dnsLabel is a Kubernetes namespace name (RFC 1123 label); dnsSubdomain a storage class name.
var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	// quantity is a storage size as Kubernetes writes one: a number and a binary or decimal
	// suffix (1Gi, 500Mi, 10G).
	quantity = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$`)
)

func checkDNSLabel(v string) error {
	if !dnsLabel.MatchString(v) {
		return fmt.Errorf("%q is not a namespace name (lower-case letters, digits and '-', at most 63)", v)
	}
	return nil
}

func checkDNSSubdomain(v string) error {
	if !dnsSubdomain.MatchString(v) {
		return fmt.Errorf("%q is not a storage class name (lower-case letters, digits, '-' and '.')", v)
	}
	return nil
}

func checkQuantity(v string) error {
	m := quantity.FindStringSubmatch(v)
	if m == nil {
		return fmt.Errorf("%q is not a storage size (e.g. 1Gi, 500Mi)", v)
	}
	if n, err := strconv.ParseFloat(m[1], 64); err != nil || n == 0 {
		return fmt.Errorf("%q is not a storage size (e.g. 1Gi, 500Mi)", v)
	}
	return nil
}

// parseHostPath reads an absolute path of the host, cleaned.
func parseHostPath(v string) (string, error) {
	if !filepath.IsAbs(v) {
		return "", fmt.Errorf("%q is not an absolute path", v)
	}
	return filepath.Clean(v), nil
}

// parseMountPath reads an absolute path inside the Linux container below /, cleaned (hence path,
// not filepath).
func parseMountPath(v string) (string, error) {
	p := path.Clean(v)
	if !path.IsAbs(p) || p == "/" {
		return "", fmt.Errorf("%q is not an absolute path below /", v)
	}
	return p, nil
}

// parseDirMode reads an octal file mode, "0750", "750" or "0o750".
func parseDirMode(v string) (uint32, error) {
	digits := v
	if len(v) > 2 && (v[:2] == "0o" || v[:2] == "0O") {
		digits = v[2:]
	}
	m, err := strconv.ParseUint(digits, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fmt.Errorf("%q is not an octal file mode between 0000 and 7777 (e.g. 0750)", v)
	}
	return uint32(m), nil
}

// formatDirMode prints a file mode as four octal digits, as parseDirMode reads it.
func formatDirMode(m uint32) string { return fmt.Sprintf("%04o", m) }

// checkHTTPURL accepts an http:// or https:// URL with a host.
func checkHTTPURL(v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("not an http:// or https:// URL with a host (e.g. http://127.0.0.1:8095)")
	}
	return nil
}

// checkUser accepts a numeric uid:gid.
func checkUser(v string) error {
	uid, gid, ok := strings.Cut(v, ":")
	if !ok || !isID(uid) || !isID(gid) {
		return fmt.Errorf("%q is not a numeric uid:gid (e.g. 1000:1000)", v)
	}
	return nil
}

// isID reports whether s is a decimal uid or gid: 0 to 2^32-2 (2^32-1 is the kernel's "no id").
func isID(s string) bool {
	n, err := strconv.ParseUint(s, 10, 32)
	return err == nil && n < math.MaxUint32
}

// parsePort reads a decimal port between minPort and 65535; service names are refused.
func parsePort(s string, minPort int) (int, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || int(p) < minPort {
		return 0, fmt.Errorf("port %q is not a number between %d and 65535", s, minPort)
	}
	return int(p), nil
}

// parseHostPort checks a host:port address as net.Listen and net.Dial take it and returns the
// port.
func parseHostPort(addr string, minPort int, needHost bool) (int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("%q is not a host:port address", addr)
	}
	if needHost && host == "" {
		return 0, fmt.Errorf("%q has no host", addr)
	}
	return parsePort(port, minPort)
}

// checkDockerHost accepts what the Docker client's DOCKER_HOST accepts: unix:// and npipe://
// with a path, tcp:// and ssh:// with a host.
func checkDockerHost(v string) error {
	u, err := url.Parse(v)
	if err != nil || u.Scheme == "" {
		return errors.New("not a URL such as unix:///var/run/docker.sock or tcp://host:2376")
	}
	switch u.Scheme {
	case "unix", "npipe":
		if u.Path == "" {
			return fmt.Errorf("%s:// needs a socket path, e.g. unix:///var/run/docker.sock", u.Scheme)
		}
	case "tcp", "ssh":
		if u.Host == "" {
			return fmt.Errorf("%s:// needs a host, e.g. %s://host:2376", u.Scheme, u.Scheme)
		}
	default:
		return fmt.Errorf("scheme %q is not one of unix, tcp, npipe, ssh", u.Scheme)
	}
	return nil
}

// checkPostgresDSN accepts a postgres:// or postgresql:// URL that puts the session in schema
// rtmanager, through search_path=rtmanager (pgx reads it as a run-time parameter) or through
// libpq's options=-csearch_path%3Drtmanager (which psql also understands). A search_path whose
// first schema is not rtmanager, in either place, is refused. Its messages never echo the DSN, as
// it holds a password.
func checkPostgresDSN(v string) error {
	u, err := url.Parse(v)
	if err != nil || u.Opaque != "" {
		return errors.New("not a valid URL (want postgres://user:password@host:5432/db?search_path=rtmanager)")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return errors.New("not a postgres:// or postgresql:// URL")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return errors.New("its query string is malformed")
	}
	paths := slices.Clone(q["search_path"])
	for _, opts := range q["options"] {
		paths = append(paths, searchPathsInOptions(opts)...)
	}
	if len(paths) == 0 {
		return errors.New("does not select schema rtmanager: add search_path=rtmanager or options=-csearch_path%3Drtmanager")
	}
	for _, p := range paths {
		if first := firstSchema(p); first != "rtmanager" {
			return fmt.Errorf("sets search_path to %q, whose first schema must be rtmanager", p)
		}
	}
	return nil
}

// searchPathsInOptions returns the values given to search_path in a libpq options string, which
// holds server command-line switches: "-csearch_path=x", "-c search_path=x" or "--search_path=x".
func searchPathsInOptions(opts string) []string {
	var paths []string
	words := splitOptions(opts)
	for i := 0; i < len(words); i++ {
		w := words[i]
		var setting string
		switch {
		case w == "-c" && i+1 < len(words):
			i++
			setting = words[i]
		case strings.HasPrefix(w, "--"):
			setting = w[2:]
		case strings.HasPrefix(w, "-c"):
			setting = w[2:]
		default:
			continue
		}
		key, val, ok := strings.Cut(setting, "=")
		if ok && strings.ReplaceAll(strings.ToLower(key), "-", "_") == "search_path" {
			paths = append(paths, val)
		}
	}
	return paths
}

// splitOptions splits a libpq options string at white space; a backslash keeps the next
// character literally, as libpq does.
func splitOptions(s string) []string {
	var (
		words   []string
		b       strings.Builder
		inWord  bool
		escaped bool
	)
	for _, r := range s {
		switch {
		case escaped:
			b.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped, inWord = true, true
		case unicode.IsSpace(r):
			if inWord {
				words = append(words, b.String())
				b.Reset()
				inWord = false
			}
		default:
			b.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, b.String())
	}
	return words
}

// firstSchema returns the first schema of a search_path list, unquoted.
func firstSchema(searchPath string) string {
	first, _, _ := strings.Cut(searchPath, ",")
	return strings.Trim(strings.TrimSpace(first), `"`)
}

// memoryPattern is Docker's memory syntax restricted to the units that make sense for an engine:
// a number, an optional k, m or g (powers of 1024) and an optional b, in any case.
var memoryPattern = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)([kmg]?)b?$`)

// parseMemory reads a memory limit like docker run --memory: "1g", "96m", "512k", "1.5g" or a
// number of bytes. Fractions of a byte are dropped, as Docker does.
func parseMemory(v string) (int64, error) {
	m := memoryPattern.FindStringSubmatch(strings.ToLower(v))
	if m == nil {
		return 0, fmt.Errorf("%q is not a memory size (bytes, or a number with suffix b, k, m or g, e.g. 1g)", v)
	}
	size, _ := new(big.Rat).SetString(m[1])
	unit := map[string]int64{"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m[2]]
	size.Mul(size, new(big.Rat).SetInt64(unit))
	bytes := new(big.Int).Quo(size.Num(), size.Denom())
	if !bytes.IsInt64() {
		return 0, fmt.Errorf("%q is too large", v)
	}
	if bytes.Int64() < minEngineMemory {
		return 0, fmt.Errorf("%q is below Docker's minimum of 6m", v)
	}
	return bytes.Int64(), nil
}

// formatMemory prints bytes in the largest unit that divides it exactly, so parseMemory reads it
// back unchanged.
func formatMemory(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// cpusPattern is a plain positive decimal number: no sign, exponent or fraction bar.
var cpusPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// parseCPUs reads a CPU limit like docker run --cpus ("1", "0.5", "2.25") into NanoCPUs.
func parseCPUs(v string) (int64, error) {
	if !cpusPattern.MatchString(v) {
		return 0, fmt.Errorf("%q is not a positive decimal number of CPUs (e.g. 1 or 0.5)", v)
	}
	cpus, _ := new(big.Rat).SetString(v)
	nano := cpus.Mul(cpus, big.NewRat(1e9, 1))
	switch {
	case !nano.IsInt():
		return 0, fmt.Errorf("%q is too precise (at most 9 decimals)", v)
	case !nano.Num().IsInt64():
		return 0, fmt.Errorf("%q is too large", v)
	case nano.Num().Int64() < minEngineNanoCPUs:
		return 0, fmt.Errorf("%q is below Docker's minimum of 0.01", v)
	}
	return nano.Num().Int64(), nil
}

// formatCPUs prints NanoCPUs as the decimal parseCPUs reads back.
func formatCPUs(nano int64) string {
	s := big.NewRat(nano, 1e9).FloatString(9)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// parseRepositories reads the comma-separated allow-list. Each entry must be a repository name
// without tag or digest; it is stored in Docker's familiar form ("docker.io/library/x" becomes
// "x"), the form image references are compared in.
func parseRepositories(v string) ([]string, error) {
	var repos []string
	for i, entry := range strings.Split(v, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			return nil, fmt.Errorf("entry %d is empty", i+1)
		}
		named, err := reference.ParseNormalizedNamed(entry)
		if err != nil {
			return nil, fmt.Errorf("%q is not a repository name: %v", entry, err)
		}
		if !reference.IsNameOnly(named) {
			return nil, fmt.Errorf("%q must name a repository without tag or digest", entry)
		}
		repos = append(repos, reference.FamiliarName(named))
	}
	return repos, nil
}

// redactSecret hides a secret but shows whether it is set.
func redactSecret(v string) string {
	if v == "" {
		return ""
	}
	return "[redacted]"
}

// redactURL hides the password of a URL's user info, if any.
func redactURL(v string) string {
	u, err := url.Parse(v)
	if err != nil {
		return v
	}
	return u.Redacted()
}

// redactDSN replaces the DSN's password, in the user info and in a password or sslpassword query
// parameter, with "xxxxx". A DSN that does not parse is hidden whole, as the password cannot be
// found in it.
func redactDSN(v string) string {
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil {
		return "[redacted]"
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return "[redacted]"
	}
	changed := false
	for _, key := range []string{"password", "sslpassword"} {
		if q.Has(key) {
			q.Set(key, "xxxxx")
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// UnknownVar is an RTMANAGER_* variable of the environment that Load does not read (a misspelled
// name, or one a later version dropped), with the known name closest to it.
type UnknownVar struct {
	Name    string
	Closest string
}

// Unknown returns, in environ's order, the RTMANAGER_* variables of environ ("NAME=value", as
// os.Environ gives them) that Load does not read, each with the name of Vars closest to it (the
// fewest single-character insertions, deletions and substitutions; the first in Vars' order on a
// tie). It returns nil when there are none.
func Unknown(environ []string) []UnknownVar {
	known := Vars()
	var out []UnknownVar
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "RTMANAGER_") || slices.Contains(known, name) {
			continue
		}
		u := UnknownVar{Name: name}
		best := -1
		for _, k := range known {
			if d := editDistance(name, k); best < 0 || d < best {
				best, u.Closest = d, k
			}
		}
		out = append(out, u)
	}
	return out
}

// editDistance is the Levenshtein distance between a and b, by bytes (the names are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
