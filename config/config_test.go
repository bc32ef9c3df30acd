package config_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/config"
)

const (
	dsnSearchPath = "postgres://u:p@127.0.0.1:5432/galaxy?search_path=rtmanager&sslmode=disable"
	dsnOptions    = "postgres://u:p@127.0.0.1:5432/galaxy?options=-csearch_path%3Drtmanager&sslmode=disable"

	// secret is the password of every DSN the invalid cases use; no error may repeat it.
	secret = "hunter2"
)

// requiredEnv is the smallest environment Load accepts.
func requiredEnv() map[string]string {
	return map[string]string{
		"RTMANAGER_GAME_STATE_ROOT":      "/var/lib/galaxy/games",
		"RTMANAGER_POSTGRES_PRIMARY_DSN": dsnSearchPath,
		"RTMANAGER_REDIS_MASTER_ADDR":    "127.0.0.1:6379",
	}
}

// load runs Load on requiredEnv overlaid with given; a "" in given unsets a variable.
func load(t testing.TB, given map[string]string) (config.Config, error) {
	t.Helper()
	env := requiredEnv()
	maps.Copy(env, given)
	return config.Load(func(k string) string { return env[k] })
}

// base is what Load returns for requiredEnv.
func base() config.Config {
	c := config.Default()
	c.GameStateRoot = "/var/lib/galaxy/games"
	c.PostgresDSN = dsnSearchPath
	c.RedisAddr = "127.0.0.1:6379"
	return c
}

// with returns base changed by f.
func with(f func(c *config.Config)) config.Config {
	c := base()
	f(&c)
	return c
}

// diff lists the fields in which got and want differ, or "" when they are equal.
func diff(got, want config.Config) string {
	var b strings.Builder
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range gv.NumField() {
		g, w := gv.Field(i).Interface(), wv.Field(i).Interface()
		if !reflect.DeepEqual(g, w) {
			fmt.Fprintf(&b, "\n  %s: got %#v, want %#v", gv.Type().Field(i).Name, g, w)
		}
	}
	return b.String()
}

func TestLoad_valid(t *testing.T) {
	tests := []struct {
		name  string
		given map[string]string
		want  config.Config
	}{
		{
			name: "defaults",
			want: base(),
		},
		{
			name:  "dsn with search_path parameter",
			given: map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": dsnSearchPath},
			want:  with(func(c *config.Config) { c.PostgresDSN = dsnSearchPath }),
		},
		{
			name:  "dsn with libpq options",
			given: map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": dsnOptions},
			want:  with(func(c *config.Config) { c.PostgresDSN = dsnOptions }),
		},
		{
			name:  "dsn with options as -c and a space, among other settings",
			given: map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": "postgresql://u@db/galaxy?options=-c%20statement_timeout%3D5000%20-c%20search_path%3Drtmanager,public"},
			want: with(func(c *config.Config) {
				c.PostgresDSN = "postgresql://u@db/galaxy?options=-c%20statement_timeout%3D5000%20-c%20search_path%3Drtmanager,public"
			}),
		},
		{
			name:  "state root cleaned",
			given: map[string]string{"RTMANAGER_GAME_STATE_ROOT": "/var/lib/galaxy//games/"},
			want:  base(),
		},
		{
			name:  "mode without leading zero",
			given: map[string]string{"RTMANAGER_GAME_STATE_DIR_MODE": "700"},
			want:  with(func(c *config.Config) { c.GameStateDirMode = 0o700 }),
		},
		{
			name:  "mode with 0o prefix",
			given: map[string]string{"RTMANAGER_GAME_STATE_DIR_MODE": "0o2770"},
			want:  with(func(c *config.Config) { c.GameStateDirMode = 0o2770 }),
		},
		{
			name:  "engine user follows the state dir owner",
			given: map[string]string{"RTMANAGER_GAME_STATE_OWNER_UID": "1000", "RTMANAGER_GAME_STATE_OWNER_GID": "0"},
			want: with(func(c *config.Config) {
				c.GameStateOwnerUID, c.EngineUser = 1000, "1000:0"
			}),
		},
		{
			name: "explicit engine user wins over the owner",
			given: map[string]string{
				"RTMANAGER_GAME_STATE_OWNER_UID": "1000", "RTMANAGER_GAME_STATE_OWNER_GID": "1001",
				"RTMANAGER_ENGINE_USER": "65534:65534",
			},
			want: with(func(c *config.Config) {
				c.GameStateOwnerUID, c.GameStateOwnerGID, c.EngineUser = 1000, 1001, "65534:65534"
			}),
		},
		{
			name:  "memory in megabytes, upper case with b",
			given: map[string]string{"RTMANAGER_ENGINE_MEMORY_LIMIT": "96MB"},
			want:  with(func(c *config.Config) { c.EngineMemoryBytes = 96 << 20 }),
		},
		{
			name:  "memory as a fraction of a gigabyte",
			given: map[string]string{"RTMANAGER_ENGINE_MEMORY_LIMIT": "1.5g"},
			want:  with(func(c *config.Config) { c.EngineMemoryBytes = 3 << 29 }),
		},
		{
			name:  "memory in bytes",
			given: map[string]string{"RTMANAGER_ENGINE_MEMORY_LIMIT": "536870912"},
			want:  with(func(c *config.Config) { c.EngineMemoryBytes = 512 << 20 }),
		},
		{
			name:  "half a cpu",
			given: map[string]string{"RTMANAGER_ENGINE_CPUS": "0.5"},
			want:  with(func(c *config.Config) { c.EngineNanoCPUs = 5e8 }),
		},
		{
			name:  "allow-list trimmed and in familiar form",
			given: map[string]string{"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": " galaxy/game , docker.io/library/nginx,registry.example.com:5000/galaxy/game"},
			want: with(func(c *config.Config) {
				c.AllowedImageRepositories = []string{"galaxy/game", "nginx", "registry.example.com:5000/galaxy/game"}
			}),
		},
		{
			name:  "internal listener on a random port",
			given: map[string]string{"RTMANAGER_INTERNAL_HTTP_ADDR": "127.0.0.1:0"},
			want:  with(func(c *config.Config) { c.InternalHTTPAddr = "127.0.0.1:0" }),
		},
		{
			name:  "docker over tcp",
			given: map[string]string{"RTMANAGER_DOCKER_HOST": "tcp://10.0.0.5:2376"},
			want:  with(func(c *config.Config) { c.DockerHost = "tcp://10.0.0.5:2376" }),
		},
		{
			name:  "pprof on with 1, read-only rootfs off",
			given: map[string]string{"RTMANAGER_PPROF": "1", "RTMANAGER_ENGINE_READ_ONLY_ROOTFS": "false"},
			want:  with(func(c *config.Config) { c.PProf, c.EngineReadOnlyRoot = true, false }),
		},
		{
			name: "runbook's testing locally environment",
			given: map[string]string{
				"RTMANAGER_GAME_STATE_ROOT":         "/var/lib/galaxy/games",
				"RTMANAGER_DOCKER_NETWORK":          "galaxy-net",
				"RTMANAGER_INTERNAL_HTTP_ADDR":      ":8096",
				"RTMANAGER_DOCKER_HOST":             "unix:///var/run/docker.sock",
				"RTMANAGER_POSTGRES_PRIMARY_DSN":    "postgres://rtmanagerservice:rtmanagerservice@127.0.0.1:5432/galaxy?search_path=rtmanager&sslmode=disable",
				"RTMANAGER_REDIS_MASTER_ADDR":       "127.0.0.1:6379",
				"RTMANAGER_REDIS_PASSWORD":          "local",
				"RTMANAGER_LOBBY_INTERNAL_BASE_URL": "http://127.0.0.1:8095",
			},
			want: with(func(c *config.Config) {
				c.PostgresDSN = "postgres://rtmanagerservice:rtmanagerservice@127.0.0.1:5432/galaxy?search_path=rtmanager&sslmode=disable"
				c.RedisPassword = "local"
				c.LobbyInternalBaseURL = "http://127.0.0.1:8095"
			}),
		},
		{
			name: "cross-field limits just met",
			given: map[string]string{
				"RTMANAGER_PROBE_INTERVAL": "2s", "RTMANAGER_PROBE_TIMEOUT": "1999ms",
				"RTMANAGER_PATCH_VERIFY_TIMEOUT": "2s", "RTMANAGER_GAME_LEASE_TTL": "2s",
				"RTMANAGER_ENGINE_STOP_TIMEOUT": "29s",
			},
			want: with(func(c *config.Config) {
				c.ProbeInterval, c.ProbeTimeout = 2*time.Second, 1999*time.Millisecond
				c.PatchVerifyTimeout, c.GameLeaseTTL = 2*time.Second, 2*time.Second
				c.EngineStopTimeout = 29 * time.Second
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := load(t, tt.given)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if d := diff(got, tt.want); d != "" {
				t.Errorf("Load:%s", d)
			}
		})
	}
}

func TestLoad_invalid(t *testing.T) {
	dsn := func(query string) string { return "postgres://u:" + secret + "@127.0.0.1:5432/galaxy?" + query }
	tests := []struct {
		name  string
		given map[string]string
		want  string // the variable the error names
	}{
		{"internal addr without port", map[string]string{"RTMANAGER_INTERNAL_HTTP_ADDR": "8096"}, "RTMANAGER_INTERNAL_HTTP_ADDR"},
		{"internal addr with service name", map[string]string{"RTMANAGER_INTERNAL_HTTP_ADDR": ":http"}, "RTMANAGER_INTERNAL_HTTP_ADDR"},
		{"internal addr port out of range", map[string]string{"RTMANAGER_INTERNAL_HTTP_ADDR": ":65536"}, "RTMANAGER_INTERNAL_HTTP_ADDR"},
		{"docker host without scheme", map[string]string{"RTMANAGER_DOCKER_HOST": "/var/run/docker.sock"}, "RTMANAGER_DOCKER_HOST"},
		{"docker host with http scheme", map[string]string{"RTMANAGER_DOCKER_HOST": "http://localhost:2375"}, "RTMANAGER_DOCKER_HOST"},
		{"docker host tcp without host", map[string]string{"RTMANAGER_DOCKER_HOST": "tcp://"}, "RTMANAGER_DOCKER_HOST"},
		{"docker network with space", map[string]string{"RTMANAGER_DOCKER_NETWORK": "galaxy net"}, "RTMANAGER_DOCKER_NETWORK"},
		{"state root missing", map[string]string{"RTMANAGER_GAME_STATE_ROOT": ""}, "RTMANAGER_GAME_STATE_ROOT"},
		{"state root relative", map[string]string{"RTMANAGER_GAME_STATE_ROOT": "games"}, "RTMANAGER_GAME_STATE_ROOT"},
		{"mode banana", map[string]string{"RTMANAGER_GAME_STATE_DIR_MODE": "banana"}, "RTMANAGER_GAME_STATE_DIR_MODE"},
		{"mode not octal", map[string]string{"RTMANAGER_GAME_STATE_DIR_MODE": "0789"}, "RTMANAGER_GAME_STATE_DIR_MODE"},
		{"mode too large", map[string]string{"RTMANAGER_GAME_STATE_DIR_MODE": "17777"}, "RTMANAGER_GAME_STATE_DIR_MODE"},
		{"uid negative", map[string]string{"RTMANAGER_GAME_STATE_OWNER_UID": "-1"}, "RTMANAGER_GAME_STATE_OWNER_UID"},
		{"uid a name", map[string]string{"RTMANAGER_GAME_STATE_OWNER_UID": "galaxy"}, "RTMANAGER_GAME_STATE_OWNER_UID"},
		{"gid negative", map[string]string{"RTMANAGER_GAME_STATE_OWNER_GID": "-5"}, "RTMANAGER_GAME_STATE_OWNER_GID"},
		{"gid 2^32-1", map[string]string{"RTMANAGER_GAME_STATE_OWNER_GID": "4294967295"}, "RTMANAGER_GAME_STATE_OWNER_GID"},
		{"dsn missing", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": ""}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"stream retention negative", map[string]string{"RTMANAGER_STREAM_RETENTION": "-1"}, "RTMANAGER_STREAM_RETENTION"},
		{"stream retention a duration", map[string]string{"RTMANAGER_STREAM_RETENTION": "24h"}, "RTMANAGER_STREAM_RETENTION"},
		{"strict env not a boolean", map[string]string{"RTMANAGER_STRICT_ENV": "yes"}, "RTMANAGER_STRICT_ENV"},
		{"dsn without schema", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": dsn("sslmode=disable")}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"dsn with another schema", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": dsn("search_path=public")}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"dsn with another schema first", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": dsn("search_path=public,rtmanager")}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"dsn options with another schema", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": dsn("search_path=rtmanager&options=-csearch_path%3Dpublic")}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"dsn options without search_path", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": dsn("options=-cstatement_timeout%3D5000")}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"dsn with mysql scheme", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": "mysql://u:" + secret + "@127.0.0.1/galaxy?search_path=rtmanager"}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"dsn in key=value form", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": "host=127.0.0.1 password=" + secret + " options='-csearch_path=rtmanager'"}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"dsn unparsable", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": "postgres://u:" + secret + "@127.0.0.1:port/galaxy?search_path=rtmanager"}, "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"redis addr missing", map[string]string{"RTMANAGER_REDIS_MASTER_ADDR": ""}, "RTMANAGER_REDIS_MASTER_ADDR"},
		{"redis addr without host", map[string]string{"RTMANAGER_REDIS_MASTER_ADDR": ":6379"}, "RTMANAGER_REDIS_MASTER_ADDR"},
		{"redis addr without port", map[string]string{"RTMANAGER_REDIS_MASTER_ADDR": "127.0.0.1"}, "RTMANAGER_REDIS_MASTER_ADDR"},
		{"redis addr port 0", map[string]string{"RTMANAGER_REDIS_MASTER_ADDR": "127.0.0.1:0"}, "RTMANAGER_REDIS_MASTER_ADDR"},
		{"start stream with space", map[string]string{"RTMANAGER_REDIS_START_JOBS_STREAM": "runtime: start"}, "RTMANAGER_REDIS_START_JOBS_STREAM"},
		{"stop stream with tab", map[string]string{"RTMANAGER_REDIS_STOP_JOBS_STREAM": "runtime:\tstop"}, "RTMANAGER_REDIS_STOP_JOBS_STREAM"},
		{"job results stream with newline", map[string]string{"RTMANAGER_REDIS_JOB_RESULTS_STREAM": "runtime:results\n"}, "RTMANAGER_REDIS_JOB_RESULTS_STREAM"},
		{"health stream with space", map[string]string{"RTMANAGER_REDIS_HEALTH_EVENTS_STREAM": " "}, "RTMANAGER_REDIS_HEALTH_EVENTS_STREAM"},
		{"intents stream with space", map[string]string{"RTMANAGER_NOTIFICATION_INTENTS_STREAM": "notification intents"}, "RTMANAGER_NOTIFICATION_INTENTS_STREAM"},
		{"streams not distinct", map[string]string{"RTMANAGER_REDIS_JOB_RESULTS_STREAM": "runtime:start_jobs"}, "RTMANAGER_REDIS_JOB_RESULTS_STREAM"},
		{"lobby url without scheme", map[string]string{"RTMANAGER_LOBBY_INTERNAL_BASE_URL": "127.0.0.1:8095"}, "RTMANAGER_LOBBY_INTERNAL_BASE_URL"},
		{"lobby url with ftp scheme", map[string]string{"RTMANAGER_LOBBY_INTERNAL_BASE_URL": "ftp://lobby:8095"}, "RTMANAGER_LOBBY_INTERNAL_BASE_URL"},
		{"shutdown timeout unparsable", map[string]string{"RTMANAGER_SHUTDOWN_TIMEOUT": "30"}, "RTMANAGER_SHUTDOWN_TIMEOUT"},
		{"postgres connect timeout unparsable", map[string]string{"RTMANAGER_POSTGRES_CONNECT_TIMEOUT": "5"}, "RTMANAGER_POSTGRES_CONNECT_TIMEOUT"},
		{"postgres operation timeout zero", map[string]string{"RTMANAGER_POSTGRES_OPERATION_TIMEOUT": "0s"}, "RTMANAGER_POSTGRES_OPERATION_TIMEOUT"},
		{"postgres statement timeout negative", map[string]string{"RTMANAGER_POSTGRES_STATEMENT_TIMEOUT": "-1s"}, "RTMANAGER_POSTGRES_STATEMENT_TIMEOUT"},
		{"postgres lock timeout unparsable", map[string]string{"RTMANAGER_POSTGRES_LOCK_TIMEOUT": "3 s"}, "RTMANAGER_POSTGRES_LOCK_TIMEOUT"},
		{"retry attempts zero", map[string]string{"RTMANAGER_RETRY_ATTEMPTS": "0"}, "RTMANAGER_RETRY_ATTEMPTS"},
		{"retry window unparsable", map[string]string{"RTMANAGER_RETRY_WINDOW": "a minute"}, "RTMANAGER_RETRY_WINDOW"},
		{"no reconcile workers", map[string]string{"RTMANAGER_RECONCILE_WORKERS": "0"}, "RTMANAGER_RECONCILE_WORKERS"},
		{"reconcile rate not a number", map[string]string{"RTMANAGER_RECONCILE_RATE": "fast"}, "RTMANAGER_RECONCILE_RATE"},
		{"negative burst", map[string]string{"RTMANAGER_RECONCILE_BURST": "-1"}, "RTMANAGER_RECONCILE_BURST"},
		{"backoff min unparsable", map[string]string{"RTMANAGER_RECONCILE_BACKOFF_MIN": "5"}, "RTMANAGER_RECONCILE_BACKOFF_MIN"},
		{"backoff max zero", map[string]string{"RTMANAGER_RECONCILE_BACKOFF_MAX": "0s"}, "RTMANAGER_RECONCILE_BACKOFF_MAX"},
		{"backoff min above max", map[string]string{"RTMANAGER_RECONCILE_BACKOFF_MIN": "2m", "RTMANAGER_RECONCILE_BACKOFF_MAX": "1m"}, "RTMANAGER_RECONCILE_BACKOFF_MIN"},
		{"queue buffer empty", map[string]string{"RTMANAGER_RECONCILE_QUEUE_BUFFER": "0"}, "RTMANAGER_RECONCILE_QUEUE_BUFFER"},
		{"redis pool not a number", map[string]string{"RTMANAGER_REDIS_POOL_SIZE": "32 conns"}, "RTMANAGER_REDIS_POOL_SIZE"},
		{"no postgres connections", map[string]string{"RTMANAGER_POSTGRES_MAX_CONNECTIONS": "0"}, "RTMANAGER_POSTGRES_MAX_CONNECTIONS"},
		{"no job parallelism", map[string]string{"RTMANAGER_JOB_PARALLEL": "0"}, "RTMANAGER_JOB_PARALLEL"},
		{"postgres migration lock timeout unparsable", map[string]string{"RTMANAGER_POSTGRES_MIGRATION_LOCK_TIMEOUT": "forever"}, "RTMANAGER_POSTGRES_MIGRATION_LOCK_TIMEOUT"},
		{"reconcile interval zero", map[string]string{"RTMANAGER_RECONCILE_INTERVAL": "0s"}, "RTMANAGER_RECONCILE_INTERVAL"},
		{"inspect interval negative", map[string]string{"RTMANAGER_INSPECT_INTERVAL": "-30s"}, "RTMANAGER_INSPECT_INTERVAL"},
		{"probe interval unparsable", map[string]string{"RTMANAGER_PROBE_INTERVAL": "five seconds"}, "RTMANAGER_PROBE_INTERVAL"},
		{"probe timeout unparsable", map[string]string{"RTMANAGER_PROBE_TIMEOUT": "2"}, "RTMANAGER_PROBE_TIMEOUT"},
		{"probe threshold zero", map[string]string{"RTMANAGER_PROBE_FAILURE_THRESHOLD": "0"}, "RTMANAGER_PROBE_FAILURE_THRESHOLD"},
		{"probe threshold not a number", map[string]string{"RTMANAGER_PROBE_FAILURE_THRESHOLD": "three"}, "RTMANAGER_PROBE_FAILURE_THRESHOLD"},
		{"probe target unknown", map[string]string{"RTMANAGER_PROBE_TARGET": "hostname"}, "RTMANAGER_PROBE_TARGET"},
		{"patch verify timeout unparsable", map[string]string{"RTMANAGER_PATCH_VERIFY_TIMEOUT": "1 minute"}, "RTMANAGER_PATCH_VERIFY_TIMEOUT"},
		{"lease ttl unparsable", map[string]string{"RTMANAGER_GAME_LEASE_TTL": "30x"}, "RTMANAGER_GAME_LEASE_TTL"},
		{"engine port zero", map[string]string{"RTMANAGER_ENGINE_PORT": "0"}, "RTMANAGER_ENGINE_PORT"},
		{"engine port too large", map[string]string{"RTMANAGER_ENGINE_PORT": "70000"}, "RTMANAGER_ENGINE_PORT"},
		{"state mount relative", map[string]string{"RTMANAGER_ENGINE_STATE_MOUNT": "var/lib/galaxy-game"}, "RTMANAGER_ENGINE_STATE_MOUNT"},
		{"state mount root", map[string]string{"RTMANAGER_ENGINE_STATE_MOUNT": "/"}, "RTMANAGER_ENGINE_STATE_MOUNT"},
		{"stop timeout unparsable", map[string]string{"RTMANAGER_ENGINE_STOP_TIMEOUT": "10"}, "RTMANAGER_ENGINE_STOP_TIMEOUT"},
		{"memory with unknown unit", map[string]string{"RTMANAGER_ENGINE_MEMORY_LIMIT": "1x"}, "RTMANAGER_ENGINE_MEMORY_LIMIT"},
		{"memory below the minimum", map[string]string{"RTMANAGER_ENGINE_MEMORY_LIMIT": "4m"}, "RTMANAGER_ENGINE_MEMORY_LIMIT"},
		{"memory negative", map[string]string{"RTMANAGER_ENGINE_MEMORY_LIMIT": "-1g"}, "RTMANAGER_ENGINE_MEMORY_LIMIT"},
		{"memory overflowing", map[string]string{"RTMANAGER_ENGINE_MEMORY_LIMIT": "99999999999g"}, "RTMANAGER_ENGINE_MEMORY_LIMIT"},
		{"cpus zero", map[string]string{"RTMANAGER_ENGINE_CPUS": "0"}, "RTMANAGER_ENGINE_CPUS"},
		{"cpus negative", map[string]string{"RTMANAGER_ENGINE_CPUS": "-1"}, "RTMANAGER_ENGINE_CPUS"},
		{"cpus as a fraction", map[string]string{"RTMANAGER_ENGINE_CPUS": "1/2"}, "RTMANAGER_ENGINE_CPUS"},
		{"cpus too precise", map[string]string{"RTMANAGER_ENGINE_CPUS": "0.0000000001"}, "RTMANAGER_ENGINE_CPUS"},
		{"pids limit zero", map[string]string{"RTMANAGER_ENGINE_PIDS_LIMIT": "0"}, "RTMANAGER_ENGINE_PIDS_LIMIT"},
		{"pids limit not a number", map[string]string{"RTMANAGER_ENGINE_PIDS_LIMIT": "many"}, "RTMANAGER_ENGINE_PIDS_LIMIT"},
		{"engine user by name", map[string]string{"RTMANAGER_ENGINE_USER": "galaxy"}, "RTMANAGER_ENGINE_USER"},
		{"engine user without gid", map[string]string{"RTMANAGER_ENGINE_USER": "1000:"}, "RTMANAGER_ENGINE_USER"},
		{"read-only rootfs not a bool", map[string]string{"RTMANAGER_ENGINE_READ_ONLY_ROOTFS": "yes"}, "RTMANAGER_ENGINE_READ_ONLY_ROOTFS"},
		{"allow-list with empty entry", map[string]string{"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": "galaxy/game,,galaxy/other"}, "RTMANAGER_ALLOWED_IMAGE_REPOSITORIES"},
		{"allow-list with a tag", map[string]string{"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": "galaxy/game:1.0.0"}, "RTMANAGER_ALLOWED_IMAGE_REPOSITORIES"},
		{"allow-list with upper case", map[string]string{"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": "Galaxy/Game"}, "RTMANAGER_ALLOWED_IMAGE_REPOSITORIES"},
		{"exporter unknown", map[string]string{"RTMANAGER_TELEMETRY_EXPORTER": "jaeger"}, "RTMANAGER_TELEMETRY_EXPORTER"},
		{"log level unknown", map[string]string{"RTMANAGER_LOG_LEVEL": "trace"}, "RTMANAGER_LOG_LEVEL"},
		{"log format unknown", map[string]string{"RTMANAGER_LOG_FORMAT": "logfmt"}, "RTMANAGER_LOG_FORMAT"},
		{"rest wait timeout unparsable", map[string]string{"RTMANAGER_REST_WAIT_TIMEOUT": "soon"}, "RTMANAGER_REST_WAIT_TIMEOUT"},
		{"pprof not a bool", map[string]string{"RTMANAGER_PPROF": "on"}, "RTMANAGER_PPROF"},
		{"runtime unknown", map[string]string{"RTMANAGER_RUNTIME": "nomad"}, "RTMANAGER_RUNTIME"},
		{"namespace not a name", map[string]string{"RTMANAGER_KUBE_NAMESPACE": "-games"}, "RTMANAGER_KUBE_NAMESPACE"},
		{"storage class not a name", map[string]string{"RTMANAGER_KUBE_STORAGE_CLASS": "Fast SSD"}, "RTMANAGER_KUBE_STORAGE_CLASS"},
		{"state size not a size", map[string]string{"RTMANAGER_KUBE_STATE_SIZE": "1 GB"}, "RTMANAGER_KUBE_STATE_SIZE"},
		{"start timeout unparsable", map[string]string{"RTMANAGER_KUBE_START_TIMEOUT": "2"}, "RTMANAGER_KUBE_START_TIMEOUT"},
		{"eviction toleration zero", map[string]string{"RTMANAGER_KUBE_EVICTION_TOLERATION": "0s"}, "RTMANAGER_KUBE_EVICTION_TOLERATION"},

		// Cross-field checks name the first variable of the pair.
		{"probe timeout equal to interval", map[string]string{"RTMANAGER_PROBE_TIMEOUT": "5s"}, "RTMANAGER_PROBE_TIMEOUT"},
		{"probe timeout above a shorter interval", map[string]string{"RTMANAGER_PROBE_INTERVAL": "1s"}, "RTMANAGER_PROBE_TIMEOUT"},
		{"patch verify shorter than probe interval", map[string]string{"RTMANAGER_PATCH_VERIFY_TIMEOUT": "4s"}, "RTMANAGER_PATCH_VERIFY_TIMEOUT"},
		{"lease ttl below 2s", map[string]string{"RTMANAGER_GAME_LEASE_TTL": "1999ms"}, "RTMANAGER_GAME_LEASE_TTL"},
		{"stop timeout above a shorter shutdown timeout", map[string]string{"RTMANAGER_SHUTDOWN_TIMEOUT": "5s"}, "RTMANAGER_ENGINE_STOP_TIMEOUT"},
		{"statement timeout above a shorter operation timeout", map[string]string{"RTMANAGER_POSTGRES_OPERATION_TIMEOUT": "4s"}, "RTMANAGER_POSTGRES_STATEMENT_TIMEOUT"},
	}

	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.want] = true
		t.Run(tt.name, func(t *testing.T) {
			loadIt := load
			if strings.HasPrefix(tt.want, "RTMANAGER_KUBE_") {
				loadIt = loadKube
			}
			_, err := loadIt(t, tt.given)
			var cerr *config.Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Load: got error %v (%T), want a *config.Error", err, err)
			}
			if cerr.Var != tt.want {
				t.Errorf("Load: error names %s, want %s (%v)", cerr.Var, tt.want, err)
			}
			if cerr.Reason == "" {
				t.Errorf("Load: error %v has no reason", err)
			}
			if !strings.HasPrefix(err.Error(), tt.want+": ") {
				t.Errorf("Load: error %q does not start with %q", err, tt.want+": ")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Load: error %q repeats the DSN's password", err)
			}
		})
	}

	// Every variable that can hold a bad value has a case above.
	acceptAnything := map[string]bool{"RTMANAGER_REDIS_PASSWORD": true, "RTMANAGER_INTERNAL_TOKEN": true}
	for _, v := range config.Vars() {
		if !covered[v] && !acceptAnything[v] {
			t.Errorf("no invalid case names %s", v)
		}
	}
}

// TestLoad_everyVariable checks that Load reads every variable Vars lists, and nothing else.
func TestLoad_everyVariable(t *testing.T) {
	values := map[string]string{
		"RTMANAGER_INTERNAL_HTTP_ADDR":          "127.0.0.1:9000",
		"RTMANAGER_DOCKER_HOST":                 "ssh://deploy@docker-host",
		"RTMANAGER_DOCKER_NETWORK":              "other-net",
		"RTMANAGER_GAME_STATE_ROOT":             "/srv/games",
		"RTMANAGER_GAME_STATE_DIR_MODE":         "0700",
		"RTMANAGER_GAME_STATE_OWNER_UID":        "1000",
		"RTMANAGER_GAME_STATE_OWNER_GID":        "1000",
		"RTMANAGER_POSTGRES_PRIMARY_DSN":        dsnOptions,
		"RTMANAGER_REDIS_MASTER_ADDR":           "redis:6380",
		"RTMANAGER_REDIS_PASSWORD":              "pw",
		"RTMANAGER_REDIS_START_JOBS_STREAM":     "a",
		"RTMANAGER_REDIS_STOP_JOBS_STREAM":      "b",
		"RTMANAGER_REDIS_JOB_RESULTS_STREAM":    "c",
		"RTMANAGER_REDIS_HEALTH_EVENTS_STREAM":  "d",
		"RTMANAGER_NOTIFICATION_INTENTS_STREAM": "e",
		"RTMANAGER_LOBBY_INTERNAL_BASE_URL":     "https://lobby.internal",
		"RTMANAGER_SHUTDOWN_TIMEOUT":            "45s",
		"RTMANAGER_RECONCILE_INTERVAL":          "1m",
		"RTMANAGER_INSPECT_INTERVAL":            "10s",
		"RTMANAGER_PROBE_INTERVAL":              "6s",
		"RTMANAGER_PROBE_TIMEOUT":               "1s",
		"RTMANAGER_PROBE_FAILURE_THRESHOLD":     "5",
		"RTMANAGER_PROBE_TARGET":                "endpoint",
		"RTMANAGER_PATCH_VERIFY_TIMEOUT":        "2m",
		"RTMANAGER_GAME_LEASE_TTL":              "10s",
		"RTMANAGER_ENGINE_PORT":                 "9090",
		"RTMANAGER_ENGINE_STATE_MOUNT":          "/data",
		"RTMANAGER_ENGINE_STOP_TIMEOUT":         "5s",
		"RTMANAGER_ENGINE_MEMORY_LIMIT":         "256m",
		"RTMANAGER_ENGINE_CPUS":                 "2",
		"RTMANAGER_ENGINE_PIDS_LIMIT":           "64",
		"RTMANAGER_ENGINE_USER":                 "1:1",
		"RTMANAGER_ENGINE_READ_ONLY_ROOTFS":     "false",
		"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES":  "galaxy/game,galaxy/game-beta",
		"RTMANAGER_TELEMETRY_EXPORTER":          "otlp-grpc",
		"RTMANAGER_LOG_LEVEL":                   "debug",
		"RTMANAGER_LOG_FORMAT":                  "text",
		"RTMANAGER_INTERNAL_TOKEN":              "tok",
		"RTMANAGER_REST_WAIT_TIMEOUT":           "10s",
		"RTMANAGER_PPROF":                       "true",
		"RTMANAGER_STREAM_RETENTION":            "5000",
		"RTMANAGER_STRICT_ENV":                  "true",

		"RTMANAGER_POSTGRES_CONNECT_TIMEOUT":        "2s",
		"RTMANAGER_POSTGRES_OPERATION_TIMEOUT":      "20s",
		"RTMANAGER_POSTGRES_STATEMENT_TIMEOUT":      "8s",
		"RTMANAGER_POSTGRES_LOCK_TIMEOUT":           "1s",
		"RTMANAGER_RETRY_ATTEMPTS":                  "7",
		"RTMANAGER_RETRY_WINDOW":                    "90s",
		"RTMANAGER_RECONCILE_WORKERS":               "8",
		"RTMANAGER_RECONCILE_RATE":                  "20",
		"RTMANAGER_RECONCILE_BURST":                 "100",
		"RTMANAGER_RECONCILE_BACKOFF_MIN":           "10ms",
		"RTMANAGER_RECONCILE_BACKOFF_MAX":           "30s",
		"RTMANAGER_RECONCILE_QUEUE_BUFFER":          "1024",
		"RTMANAGER_REDIS_POOL_SIZE":                 "16",
		"RTMANAGER_POSTGRES_MAX_CONNECTIONS":        "10",
		"RTMANAGER_JOB_PARALLEL":                    "3",
		"RTMANAGER_POSTGRES_MIGRATION_LOCK_TIMEOUT": "5m",

		"RTMANAGER_RUNTIME":                  "kubernetes",
		"RTMANAGER_KUBE_NAMESPACE":           "games",
		"RTMANAGER_KUBE_STORAGE_CLASS":       "fast",
		"RTMANAGER_KUBE_STATE_SIZE":          "5Gi",
		"RTMANAGER_KUBE_START_TIMEOUT":       "30s",
		"RTMANAGER_KUBE_EVICTION_TOLERATION": "10s",
	}
	if got, want := slices.Sorted(maps.Keys(values)), config.Vars(); !slices.Equal(got, want) {
		t.Fatalf("test values cover %v, Vars returns %v", got, want)
	}
	// Each runtime's settings are loaded with that runtime: the Docker ones without the
	// Kubernetes ones, and the other way round.
	dockerOnly := []string{"RTMANAGER_DOCKER_HOST", "RTMANAGER_DOCKER_NETWORK", "RTMANAGER_GAME_STATE_ROOT",
		"RTMANAGER_GAME_STATE_DIR_MODE", "RTMANAGER_ENGINE_PIDS_LIMIT"}
	runtimeValues := func(v string) (map[string]string, func(testing.TB, map[string]string) (config.Config, error)) {
		given := maps.Clone(values)
		if strings.HasPrefix(v, "RTMANAGER_KUBE_") {
			for _, d := range dockerOnly {
				delete(given, d)
			}
			return given, loadKube
		}
		for k := range given {
			if k == "RTMANAGER_RUNTIME" || strings.HasPrefix(k, "RTMANAGER_KUBE_") {
				delete(given, k)
			}
		}
		return given, load
	}
	for _, v := range config.Vars() {
		if v == "RTMANAGER_RUNTIME" {
			continue // TestLoad_kubernetes
		}
		t.Run(v, func(t *testing.T) {
			given, loadIt := runtimeValues(v)
			all, err := loadIt(t, given)
			if err != nil {
				t.Fatalf("Load with every variable of the runtime set: %v", err)
			}
			given[v] = ""
			if v == "RTMANAGER_GAME_STATE_ROOT" || v == "RTMANAGER_POSTGRES_PRIMARY_DSN" || v == "RTMANAGER_REDIS_MASTER_ADDR" {
				given[v] = requiredEnv()[v]
			}
			if v == "RTMANAGER_KUBE_NAMESPACE" {
				given[v] = "other"
			}
			got, err := loadIt(t, given)
			if err != nil {
				t.Fatalf("Load without %s: %v", v, err)
			}
			if diff(got, all) == "" {
				t.Errorf("Load ignores %s", v)
			}
		})
	}
}

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		name  string
		given config.Config
		want  string // the variable the error names; "" for no error
	}{
		{"loaded defaults", base(), ""},
		{"bare defaults lack the state root", config.Default(), "RTMANAGER_GAME_STATE_ROOT"},
		{"no dsn", with(func(c *config.Config) { c.PostgresDSN = "" }), "RTMANAGER_POSTGRES_PRIMARY_DSN"},
		{"no redis", with(func(c *config.Config) { c.RedisAddr = "" }), "RTMANAGER_REDIS_MASTER_ADDR"},
		{"empty stream", with(func(c *config.Config) { c.HealthEventsStream = "" }), "RTMANAGER_REDIS_HEALTH_EVENTS_STREAM"},
		{"stop stream equal to start stream", with(func(c *config.Config) { c.StopJobsStream = c.StartJobsStream }), "RTMANAGER_REDIS_STOP_JOBS_STREAM"},
		{"intents equal to health events", with(func(c *config.Config) { c.NotificationIntentsStream = c.HealthEventsStream }), "RTMANAGER_NOTIFICATION_INTENTS_STREAM"},
		{"probe timeout longer than interval", with(func(c *config.Config) { c.ProbeTimeout = 10 * time.Second }), "RTMANAGER_PROBE_TIMEOUT"},
		{"patch verify shorter than probe interval", with(func(c *config.Config) { c.PatchVerifyTimeout = time.Second }), "RTMANAGER_PATCH_VERIFY_TIMEOUT"},
		{"lease ttl 1s", with(func(c *config.Config) { c.GameLeaseTTL = time.Second }), "RTMANAGER_GAME_LEASE_TTL"},
		{"stop timeout longer than shutdown", with(func(c *config.Config) { c.EngineStopTimeout = time.Minute }), "RTMANAGER_ENGINE_STOP_TIMEOUT"},
		{"statement timeout longer than operation", with(func(c *config.Config) { c.PostgresStatementTimeout = time.Minute }), "RTMANAGER_POSTGRES_STATEMENT_TIMEOUT"},
		{"statement timeout equal to operation", with(func(c *config.Config) { c.PostgresStatementTimeout = c.PostgresOperationTimeout }), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.given.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var cerr *config.Error
			if !errors.As(err, &cerr) || cerr.Var != tt.want {
				t.Errorf("Validate: got %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

func TestConfig_Redacted(t *testing.T) {
	tests := []struct {
		name  string
		given config.Config
		want  map[string]string // entries that must be present; others are not checked
	}{
		{
			name:  "defaults",
			given: base(),
			want: map[string]string{
				"RTMANAGER_POSTGRES_PRIMARY_DSN":       "postgres://u:xxxxx@127.0.0.1:5432/galaxy?search_path=rtmanager&sslmode=disable",
				"RTMANAGER_REDIS_PASSWORD":             "",
				"RTMANAGER_INTERNAL_TOKEN":             "",
				"RTMANAGER_GAME_STATE_DIR_MODE":        "0750",
				"RTMANAGER_ENGINE_MEMORY_LIMIT":        "1g",
				"RTMANAGER_ENGINE_CPUS":                "1",
				"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": "galaxy/game",
				"RTMANAGER_PROBE_INTERVAL":             "5s",
			},
		},
		{
			name: "secrets set",
			given: with(func(c *config.Config) {
				c.PostgresDSN = "postgres://rtmanagerservice:" + secret + "@db:5432/galaxy?options=-csearch_path%3Drtmanager"
				c.RedisPassword = secret
				c.InternalToken = secret
			}),
			want: map[string]string{
				"RTMANAGER_POSTGRES_PRIMARY_DSN": "postgres://rtmanagerservice:xxxxx@db:5432/galaxy?options=-csearch_path%3Drtmanager",
				"RTMANAGER_REDIS_PASSWORD":       "[redacted]",
				"RTMANAGER_INTERNAL_TOKEN":       "[redacted]",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.given.Redacted()
			if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, config.Vars()) {
				t.Errorf("Redacted keys %v, want Vars() %v", keys, config.Vars())
			}
			for k, want := range tt.want {
				if got[k] != want {
					t.Errorf("Redacted()[%s] = %q, want %q", k, got[k], want)
				}
			}
			var buf bytes.Buffer
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", "config", tt.given)
			for _, out := range []string{fmt.Sprint(got), buf.String()} {
				if strings.Contains(out, secret) {
					t.Errorf("secret leaked: %s", out)
				}
			}
			if !strings.Contains(buf.String(), `"RTMANAGER_PROBE_INTERVAL":"5s"`) {
				t.Errorf("slog output lacks the settings: %s", buf.String())
			}
		})
	}
}

// TestConfig_Redacted_dsn checks where Redacted finds the DSN's password.
func TestConfig_Redacted_dsn(t *testing.T) {
	tests := []struct{ name, given, want string }{
		{"password as a query parameter",
			"postgres://rtmanagerservice@db/galaxy?password=" + secret + "&search_path=rtmanager",
			"postgres://rtmanagerservice@db/galaxy?password=xxxxx&search_path=rtmanager"},
		{"sslpassword as a query parameter",
			"postgres://u@db/galaxy?search_path=rtmanager&sslpassword=" + secret,
			"postgres://u@db/galaxy?search_path=rtmanager&sslpassword=xxxxx"},
		{"without password shown whole",
			"postgres://u@db/galaxy?search_path=rtmanager", "postgres://u@db/galaxy?search_path=rtmanager"},
		{"unparsable hidden whole", "postgres://u:" + secret + "@db:port/galaxy", "[redacted]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := with(func(c *config.Config) { c.PostgresDSN = tt.given })
			if got := c.Redacted()["RTMANAGER_POSTGRES_PRIMARY_DSN"]; got != tt.want {
				t.Errorf("Redacted() DSN = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestConfig_Redacted_roundTrip checks that, secrets aside, Redacted prints values Load reads back
// unchanged, so an operator can copy them from the start-up log into an environment.
func TestConfig_Redacted_roundTrip(t *testing.T) {
	tests := []struct {
		name  string
		given config.Config
	}{
		{"defaults", with(func(c *config.Config) { c.PostgresDSN = "postgres://u@127.0.0.1/galaxy?search_path=rtmanager" })},
		{"everything changed", with(func(c *config.Config) {
			c.InternalHTTPAddr = "127.0.0.1:0"
			c.DockerHost = "tcp://docker:2376"
			c.GameStateDirMode = 0o2770
			c.GameStateOwnerUID, c.GameStateOwnerGID, c.EngineUser = 1000, 1001, "1000:1001"
			c.PostgresDSN = "postgresql://u@db/galaxy?options=-csearch_path%3Drtmanager"
			c.LobbyInternalBaseURL = "http://lobby:8095"
			c.ReconcileInterval = 90 * time.Second
			c.PostgresOperationTimeout, c.PostgresStatementTimeout = 1500*time.Millisecond, 1500*time.Millisecond
			c.ProbeTarget = config.ProbeTargetEndpoint
			c.EngineMemoryBytes = 100<<20 + 1
			c.EngineNanoCPUs = 1_250_000_000
			c.EngineReadOnlyRoot = false
			c.AllowedImageRepositories = []string{"galaxy/game", "ghcr.io/galaxy/game"}
			c.TelemetryExporter = config.TelemetryStdout
			c.PProf = true
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.given.Redacted()
			got, err := config.Load(func(k string) string { return env[k] })
			if err != nil {
				t.Fatalf("Load(Redacted()): %v", err)
			}
			if d := diff(got, tt.given); d != "" {
				t.Errorf("Load(Redacted()):%s", d)
			}
		})
	}
}

func TestError_Error(t *testing.T) {
	err := &config.Error{Var: "RTMANAGER_GAME_STATE_DIR_MODE", Reason: `"banana" is not an octal file mode`}
	if got, want := err.Error(), `RTMANAGER_GAME_STATE_DIR_MODE: "banana" is not an octal file mode`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestUnknown(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    []config.UnknownVar
	}{
		{name: "only known and foreign names", environ: []string{"PATH=/bin", "RTMANAGER_LOG_LEVEL=debug", "RTMCTL_SERVER=x"}},
		{name: "a letter dropped", environ: []string{"RTMANAGER_REDIS_MASTR_ADDR=redis:6379"},
			want: []config.UnknownVar{{Name: "RTMANAGER_REDIS_MASTR_ADDR", Closest: "RTMANAGER_REDIS_MASTER_ADDR"}}},
		{name: "a word misspelled, and a value with =", environ: []string{
			"RTMANAGER_LOG_FROMAT=text", "RTMANAGER_POSTGRES_DSN=postgres://u:p@h/db?a=b"},
			want: []config.UnknownVar{
				{Name: "RTMANAGER_LOG_FROMAT", Closest: "RTMANAGER_LOG_FORMAT"},
				{Name: "RTMANAGER_POSTGRES_DSN", Closest: "RTMANAGER_POSTGRES_PRIMARY_DSN"},
			}},
		{name: "the prefix alone", environ: []string{"RTMANAGER_="}, want: []config.UnknownVar{{Name: "RTMANAGER_", Closest: "RTMANAGER_PPROF"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := config.Unknown(tt.environ); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Unknown(%q) = %v, want %v", tt.environ, got, tt.want)
			}
		})
	}
}
