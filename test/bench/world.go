package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// Engine image of the benchmark: the stand-in engine of test/engine, FROM scratch.
const (
	engineRepo    = "rtm-bench/game"
	engineVersion = "1.0.0"
	engineImage   = engineRepo + ":" + engineVersion
	// benchLabel marks the network the benchmark creates.
	benchLabel = "rtm.bench"
)

// world is everything the benchmark starts: PostgreSQL and Redis (testenv), the engine image,
// the rtmanager binary, a Docker network and a state root. close tears it all down again.
type world struct {
	env       *testenv.Env
	tb        *benchTB
	root      string // module root
	work      string // temp dir: binary, state root, logs, proxy socket
	bin       string // the rtmanager binary
	stateRoot string
	net       string
	run       string // random prefix of this run's game ids
	docker    *client.Client
	raw       *runtime.Docker // RTM's own adapter, used directly for the raw baselines
	rdb       *redis.Client
	dockerVer string

	mu        sync.Mutex
	rtms      []*rtmProc
	closeOnce sync.Once
	keep      bool   // keep the work dir
	logLevel  string // RTMANAGER_LOG_LEVEL
	extraEnv  map[string]string
}

// setUp starts the world; on error whatever was started is torn down by close.
func setUp(ctx context.Context, w *world) error {
	var b [3]byte
	_, _ = rand.Read(b[:])
	w.run = "b" + hex.EncodeToString(b[:])
	w.tb = &benchTB{name: "bench"}
	root, err := testenv.ModuleRoot()
	if err != nil {
		return err
	}
	w.root = root
	if w.work, err = os.MkdirTemp("/tmp", "rtm-bench-"); err != nil {
		return err
	}
	// The daemon resolves the bind mounts and the engine may run as another user: every parent
	// of the state root must be traversable.
	if err := os.Chmod(w.work, 0o755); err != nil {
		return err
	}
	w.stateRoot = filepath.Join(w.work, "state")
	if err := os.Mkdir(w.stateRoot, 0o755); err != nil {
		return err
	}

	w.docker, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	v, err := w.docker.ServerVersion(ctx)
	if err != nil {
		return fmt.Errorf("docker does not answer: %w", err)
	}
	w.dockerVer = fmt.Sprintf("%s (API %s)", v.Version, v.APIVersion)

	// The three slow steps run side by side: the servers, the image, the binary.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		w.env, errs[0] = testenv.Start(ctx)
	}()
	go func() {
		defer wg.Done()
		errs[1] = testenv.BuildEngineImages(ctx, engineRepo, engineVersion)
	}()
	go func() {
		defer wg.Done()
		w.bin = filepath.Join(w.work, "rtmanager")
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", w.bin, "./cmd/manager")
		cmd.Dir = w.root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			errs[2] = fmt.Errorf("building rtmanager: %w\n%s", err, out)
		}
	}()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := durable(ctx, w.env.AdminDSN); err != nil {
		return err
	}

	if err := w.createNetwork(ctx); err != nil {
		return err
	}
	w.raw, err = runtime.New(runtime.Options{Network: w.net})
	if err != nil {
		return err
	}
	o := w.env.RedisOptions(0)
	o.PoolSize = 64
	w.rdb = redis.NewClient(o)
	return nil
}

// benchNetwork is the benchmark's Docker network. Its name is fixed, so that a network the daemon
// cannot remove is reused by the next run rather than left behind for good: Docker 20.10 may
// leak an endpoint count when a thousand containers go at once ("has active endpoints" with
// none attached, moby/moby#42119, only a daemon restart clears it), and every leaked network
// holds an address pool. One benchmark runs on a host at a time.
const benchNetwork = "rtm-bench"

// createNetwork creates the network, or takes over the one an earlier run left: its containers
// (only the benchmark's run there) are removed first, and a network that cannot be removed
// (a leaked endpoint count) is used as it is.
func (w *world) createNetwork(ctx context.Context) error {
	w.net = benchNetwork
	if _, err := w.docker.NetworkInspect(ctx, w.net, network.InspectOptions{}); err == nil {
		if _, err := w.removeContainers(ctx); err != nil {
			return fmt.Errorf("removing what an earlier run left on network %s: %w", w.net, err)
		}
		if err := w.docker.NetworkRemove(ctx, w.net); err != nil {
			logf("reusing network %s, which an earlier run left (%v)", w.net, err)
			return nil
		}
	}
	if _, err := w.docker.NetworkCreate(ctx, w.net, network.CreateOptions{Driver: "bridge",
		Labels: map[string]string{benchLabel: "1"}}); err != nil {
		return fmt.Errorf("creating network %s: %w", w.net, err)
	}
	return nil
}

// durable turns PostgreSQL's durability back on (the test harness turns it off for speed): every
// commit RTM makes in the benchmark is flushed to disk, as in production.
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
	var fsync, sync string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := conn.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('synchronous_commit')`).Scan(&fsync, &sync); err != nil {
			return fmt.Errorf("reading postgres durability settings: %w", err)
		}
		if fsync == "on" && sync == "on" {
			return nil
		}
	}
	return fmt.Errorf("postgres kept fsync=%s synchronous_commit=%s after reload", fsync, sync)
}

// newDatabase returns the DSN of a fresh database provisioned like production.
func (w *world) newDatabase(name string) (dsn string, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(tbFatal)
			if !ok {
				panic(r)
			}
			err = errors.New(string(f))
		}
	}()
	w.tb.name = name
	return w.env.NewDatabase(w.tb), nil
}

// rtmEnv is RTM's environment for one database: defaults everywhere but the addresses, the
// image allow-list and pprof.
func (w *world) rtmEnv(dsn string) map[string]string {
	env := map[string]string{
		"RTMANAGER_INTERNAL_HTTP_ADDR":         "127.0.0.1:0",
		"RTMANAGER_DOCKER_NETWORK":             w.net,
		"RTMANAGER_GAME_STATE_ROOT":            w.stateRoot,
		"RTMANAGER_POSTGRES_PRIMARY_DSN":       dsn,
		"RTMANAGER_REDIS_MASTER_ADDR":          w.env.RedisAddr,
		"RTMANAGER_REDIS_PASSWORD":             w.env.RedisPassword,
		"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": engineRepo,
		"RTMANAGER_LOG_FORMAT":                 "json",
		"RTMANAGER_PPROF":                      "1",
		"RTMANAGER_LOG_LEVEL":                  w.logLevel,
	}
	for k, v := range w.extraEnv {
		env[k] = v
	}
	return env
}

// config reads an RTM environment with the product's own config package, so the raw baseline
// uses exactly the values RTM uses.
func rtmConfig(env map[string]string) (config.Config, error) {
	return config.Load(func(k string) string { return env[k] })
}

// removeContainers force-removes every container on the benchmark's network (running or
// not).
func (w *world) removeContainers(ctx context.Context) (int, error) {
	list, err := w.docker.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("network", w.net))})
	if err != nil {
		return 0, err
	}
	ids := make([]string, 0, len(list))
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	return len(ids), w.removeIDs(ctx, ids)
}

// removeIDs force-removes containers, 8 at a time (more gains nothing, the daemon does one
// at a time underneath, and under load has leaked a network endpoint).
func (w *world) removeIDs(ctx context.Context, ids []string) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, id := range ids {
		if id == "" {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			if err := w.docker.ContainerRemove(rctx, id, container.RemoveOptions{Force: true}); err != nil &&
				!strings.Contains(err.Error(), "No such container") && !strings.Contains(err.Error(), "is already in progress") {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// close tears the world down: RTM processes, the containers on the network, the network, the
// databases, the servers and the work dir. It is safe on a partly set up world.
func (w *world) close() { w.closeOnce.Do(w.teardown) }

func (w *world) teardown() {
	logf("cleaning up")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w.mu.Lock()
	rtms := w.rtms
	w.rtms = nil
	w.mu.Unlock()
	for _, p := range rtms {
		p.stop(20 * time.Second)
	}
	if w.docker != nil && w.net != "" {
		start := time.Now()
		removed := 0
		// A removal the daemon reports as already in progress is not done yet: list again until
		// the network has no container left, then remove it.
		var err error
		leaked := 0
		for attempt := 0; attempt < 10 && leaked < 3; attempt++ {
			var n int
			n, err = w.removeContainers(ctx)
			removed += n
			if err == nil && n == 0 {
				err = w.docker.NetworkRemove(ctx, w.net)
				if err == nil || strings.Contains(err.Error(), "not found") {
					err = nil
					break
				}
				if strings.Contains(err.Error(), "active endpoints") {
					leaked++
				}
			}
			sleepCtx(ctx, time.Second)
		}
		if removed > 0 {
			logf("removed %d containers in %s", removed, time.Since(start).Round(100*time.Millisecond))
		}
		if err != nil && strings.Contains(err.Error(), "active endpoints") {
			logf("network %s is empty but the daemon will not remove it (%v); the next run reuses it", w.net, err)
		} else if err != nil {
			logf("removing the containers and network %s: %v", w.net, err)
		}
	}
	if w.rdb != nil {
		_ = w.rdb.Close()
	}
	if w.raw != nil {
		_ = w.raw.Close()
	}
	if w.tb != nil {
		w.tb.runCleanups()
	}
	if w.env != nil {
		w.env.Stop()
	}
	if w.docker != nil {
		_ = w.docker.Close()
	}
	if w.work != "" && !w.keep {
		_ = os.RemoveAll(w.work)
	} else if w.work != "" {
		logf("kept %s", w.work)
	}
}

// benchTB is the part of testing.TB that testenv.NewDatabase uses, for a program that is not a
// test. Fatalf panics with tbFatal, which newDatabase turns into an error.
type benchTB struct {
	testing.TB
	name     string
	mu       sync.Mutex
	cleanups []func()
}

type tbFatal string

func (t *benchTB) Helper()      {}
func (t *benchTB) Name() string { return t.name }
func (t *benchTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *benchTB) Logf(format string, args ...any)   { logf(format, args...) }
func (t *benchTB) Errorf(format string, args ...any) { logf(format, args...) }
func (t *benchTB) Fatalf(format string, args ...any) { panic(tbFatal(fmt.Sprintf(format, args...))) }

func (t *benchTB) runCleanups() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// logf writes a progress line to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
