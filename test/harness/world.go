package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// Options say what a world is for.
type Options struct {
	// Name names the temp dir (rtm-<Name>-…) and the databases' test name; its first letter
	// starts Run.
	Name string
	// EngineRepo and EngineVersions are the stand-in engine images to build.
	EngineRepo     string
	EngineVersions []string
	// Keep keeps the work dir (RTM's logs) when the world closes.
	Keep bool
	// Durable turns PostgreSQL's durability back on (testenv turns it off for speed): every
	// commit RTM makes is flushed to disk, as in production. For benchmarks.
	Durable bool
}

// World is everything a run starts: PostgreSQL and Redis (testenv), the engine images, the
// rtmanager binary, a state root and a Docker client. The caller creates its Docker network and
// sets Net; Close removes the containers on it and the network with the rest. Its exported
// fields are read-only after SetUp.
type World struct {
	Env       *testenv.Env
	Root      string // module root
	Work      string // temp dir: binary, state root, logs
	Bin       string // the rtmanager binary
	StateRoot string
	Net       string // the Docker network, set by the caller after SetUp
	Run       string // random prefix of this run's game ids and request ids
	Docker    *client.Client
	RDB       *redis.Client // database 0 of the Redis, 64 connections
	DockerVer string

	opts      Options
	tb        *programTB
	mu        sync.Mutex
	procs     []*Proc
	closeOnce sync.Once
}

// SetUp starts a world. On error what was started is still in w, and Close tears it down: call
// Close in either case.
func SetUp(ctx context.Context, w *World, o Options) error {
	w.opts = o
	Logf("setting up: PostgreSQL, Redis, engine images %s:%s, rtmanager binary, network", o.EngineRepo, strings.Join(o.EngineVersions, ","))
	w.Run = testenv.RunID(o.Name[:1])
	w.tb = &programTB{name: o.Name}
	root, err := testenv.ModuleRoot()
	if err != nil {
		return err
	}
	w.Root = root
	if w.Work, err = os.MkdirTemp("/tmp", "rtm-"+o.Name+"-"); err != nil {
		return err
	}
	// The daemon resolves the bind mounts and the engine may run as another user: every parent
	// of the state root must be traversable.
	if err := os.Chmod(w.Work, 0o755); err != nil {
		return err
	}
	w.StateRoot = filepath.Join(w.Work, "state")
	if err := os.Mkdir(w.StateRoot, 0o755); err != nil {
		return err
	}

	w.Docker, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	v, err := w.Docker.ServerVersion(ctx)
	if err != nil {
		return fmt.Errorf("docker does not answer: %w", err)
	}
	w.DockerVer = fmt.Sprintf("%s (API %s)", v.Version, v.APIVersion)

	// The three slow steps run side by side: the servers, the images, the binary.
	err = testenv.Parallel(
		func() (err error) {
			w.Env, err = testenv.Start(ctx)
			return err
		},
		func() error { return testenv.BuildEngineImages(ctx, o.EngineRepo, o.EngineVersions...) },
		func() error {
			w.Bin = filepath.Join(w.Work, "rtmanager")
			return testenv.GoBuild(ctx, w.Root, w.Bin, "./cmd/manager")
		},
	)
	if err != nil {
		return err
	}
	o2 := w.Env.RedisOptions(0)
	o2.PoolSize = 64
	w.RDB = redis.NewClient(o2)
	if o.Durable {
		return durable(ctx, w.Env.AdminDSN)
	}
	return nil
}

// durable turns PostgreSQL's durability back on and waits until the server's backends have it.
func durable(ctx context.Context, adminDSN string) error {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("connecting to postgres as admin: %w", err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{`ALTER SYSTEM SET fsync = on`, `ALTER SYSTEM SET synchronous_commit = on`,
		`ALTER SYSTEM SET full_page_writes = on`, `SELECT pg_reload_conf()`} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("making postgres durable (%s): %w", q, err)
		}
	}
	// The reload reaches the backends asynchronously.
	var fsync, syncCommit string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); SleepCtx(ctx, 50*time.Millisecond) {
		if err := conn.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('synchronous_commit')`).Scan(&fsync, &syncCommit); err != nil {
			return fmt.Errorf("reading postgres durability settings: %w", err)
		}
		if fsync == "on" && syncCommit == "on" {
			return nil
		}
	}
	return fmt.Errorf("postgres kept fsync=%s synchronous_commit=%s after reload", fsync, syncCommit)
}

// NewDatabase returns the DSN of a fresh database provisioned like production.
func (w *World) NewDatabase(name string) (dsn string, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(tbFatal)
			if !ok {
				panic(r)
			}
			err = errors.New(string(f))
		}
	}()
	w.tb.setName(name)
	return w.Env.NewDatabase(w.tb), nil
}

// RTMEnv is RTM's environment for one database: the addresses, the image allow-list, JSON logs
// at info and pprof; defaults everywhere else. extra is laid over it.
func (w *World) RTMEnv(dsn string, extra map[string]string) map[string]string {
	env := map[string]string{
		"RTMANAGER_INTERNAL_HTTP_ADDR":         "127.0.0.1:0",
		"RTMANAGER_DOCKER_NETWORK":             w.Net,
		"RTMANAGER_GAME_STATE_ROOT":            w.StateRoot,
		"RTMANAGER_POSTGRES_PRIMARY_DSN":       dsn,
		"RTMANAGER_REDIS_MASTER_ADDR":          w.Env.RedisAddr,
		"RTMANAGER_REDIS_PASSWORD":             w.Env.RedisPassword,
		"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": w.opts.EngineRepo,
		"RTMANAGER_LOG_FORMAT":                 "json",
		"RTMANAGER_LOG_LEVEL":                  "info",
		"RTMANAGER_PPROF":                      "1",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// RemoveContainers force-removes every container on network net (running or not) and returns
// how many there were.
func (w *World) RemoveContainers(ctx context.Context, net string) (int, error) {
	return testenv.RemoveContainers(ctx, w.Docker, filters.NewArgs(filters.Arg("network", net)))
}

// RemoveIDs force-removes containers, as testenv.RemoveIDs does.
func (w *World) RemoveIDs(ctx context.Context, ids []string) error {
	return testenv.RemoveIDs(ctx, w.Docker, ids)
}

// Close tears the world down: the RTM processes, the containers on the network, the network,
// the databases, the servers and the work dir. It is safe on a partly set up world and runs once.
func (w *World) Close() { w.closeOnce.Do(w.teardown) }

func (w *World) teardown() {
	Logf("cleaning up")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w.mu.Lock()
	procs := w.procs
	w.procs = nil
	w.mu.Unlock()
	for _, p := range procs {
		p.Terminate(30 * time.Second)
	}
	if w.Docker != nil && w.Net != "" {
		w.removeNetwork(ctx)
	}
	if w.RDB != nil {
		_ = w.RDB.Close()
	}
	if w.tb != nil {
		w.tb.runCleanups()
	}
	if w.Env != nil {
		w.Env.Stop()
	}
	if w.Docker != nil {
		_ = w.Docker.Close()
	}
	if w.Work != "" && !w.opts.Keep {
		_ = os.RemoveAll(w.Work)
	} else if w.Work != "" {
		Logf("kept %s", w.Work)
	}
}

// removeNetwork removes the containers on the network, then the network. A removal the daemon
// reports as already in progress is not done yet, and a busy daemon may still be releasing the
// endpoints of the containers just removed ("has active endpoints"): it lists again until the
// network has no container left. Docker 20.10 may leak an endpoint count for good
// (moby/moby#42119); such a network is left.
func (w *World) removeNetwork(ctx context.Context) {
	start := time.Now()
	removed, leaked := 0, 0
	var err error
	for attempt := 0; attempt < 10 && leaked < 3; attempt++ {
		var n int
		n, err = w.RemoveContainers(ctx, w.Net)
		removed += n
		if err == nil && n == 0 {
			err = w.Docker.NetworkRemove(ctx, w.Net)
			if err == nil || strings.Contains(err.Error(), "not found") {
				err = nil
				break
			}
			if strings.Contains(err.Error(), "active endpoints") {
				leaked++
			}
		}
		SleepCtx(ctx, time.Second)
	}
	if removed > 0 {
		Logf("removed %d containers in %s", removed, time.Since(start).Round(100*time.Millisecond))
	}
	if err != nil && strings.Contains(err.Error(), "active endpoints") {
		Logf("network %s is empty but the daemon will not remove it (%v)", w.Net, err)
	} else if err != nil {
		Logf("removing the containers and network %s: %v", w.Net, err)
	}
}

// programTB is the part of testing.TB that testenv.NewDatabase uses, for a program that is not
// a test. Fatalf panics with tbFatal, which NewDatabase turns into an error.
type programTB struct {
	testing.TB
	mu       sync.Mutex
	name     string
	cleanups []func()
}

type tbFatal string

func (t *programTB) Helper() {}
func (t *programTB) Name() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.name
}
func (t *programTB) setName(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.name = name
}
func (t *programTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *programTB) Logf(format string, args ...any)   { Logf(format, args...) }
func (t *programTB) Errorf(format string, args ...any) { Logf(format, args...) }
func (t *programTB) Fatalf(format string, args ...any) { panic(tbFatal(fmt.Sprintf(format, args...))) }

func (t *programTB) runCleanups() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
