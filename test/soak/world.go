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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// The soak's engine images: the stand-in engine of test/engine, FROM scratch, in two patch
// versions so that REST patches can go back and forth.
const (
	engineRepo = "rtm-soak/game"
	versionA   = "1.4.1"
	versionB   = "1.4.2"
	imageA     = engineRepo + ":" + versionA
	imageB     = engineRepo + ":" + versionB
	// soakLabel marks the network the soak creates; its value is the owning process's pid, so a
	// later run can remove what a killed run left behind.
	soakLabel = "rtm.soak.pid"
)

// otherImage is the image a patch or a churn start switches to.
func otherImage(img string) string {
	if img == imageA {
		return imageB
	}
	return imageA
}

// world is everything the soak starts: PostgreSQL and Redis (testenv), the engine images, the
// rtmanager binary, a Docker network and a state root. close tears it all down again.
type world struct {
	env       *testenv.Env
	tb        *soakTB
	root      string // module root
	work      string // temp dir: binary, state root, RTM's log
	bin       string
	stateRoot string
	net       string
	run       string // random prefix of this run's game ids and request ids
	docker    *client.Client
	rdb       *redis.Client
	dockerVer string
	keep      bool

	mu        sync.Mutex
	rtm       *rtmProc
	closeOnce sync.Once
}

// setUp starts the world; on error whatever was started is torn down by close.
func setUp(ctx context.Context, w *world) error {
	var b [3]byte
	_, _ = rand.Read(b[:])
	w.run = "s" + hex.EncodeToString(b[:])
	w.tb = &soakTB{name: "soak"}
	root, err := testenv.ModuleRoot()
	if err != nil {
		return err
	}
	w.root = root
	if w.work, err = os.MkdirTemp("/tmp", "rtm-soak-"); err != nil {
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
	w.reapStale(ctx)

	// The three slow steps run side by side: the servers, the images, the binary.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		w.env, errs[0] = testenv.Start(ctx)
	}()
	go func() {
		defer wg.Done()
		errs[1] = testenv.BuildEngineImages(ctx, engineRepo, versionA, versionB)
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

	w.net = "rtm-soak-" + w.run
	if _, err := w.docker.NetworkCreate(ctx, w.net, network.CreateOptions{Driver: "bridge",
		Labels: map[string]string{soakLabel: strconv.Itoa(os.Getpid())}}); err != nil {
		return fmt.Errorf("creating network %s: %w", w.net, err)
	}
	o := w.env.RedisOptions(0)
	o.PoolSize = 64
	w.rdb = redis.NewClient(o)
	return nil
}

// reapStale removes the networks (and the containers on them) of earlier soak runs whose
// process is gone: a run killed with SIGKILL or a second Ctrl-C could not clean up.
func (w *world) reapStale(ctx context.Context) {
	nets, err := w.docker.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", soakLabel))})
	if err != nil {
		return
	}
	for _, n := range nets {
		pid, err := strconv.Atoi(n.Labels[soakLabel])
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) == nil {
			continue
		}
		list, err := w.docker.ContainerList(ctx, container.ListOptions{All: true,
			Filters: filters.NewArgs(filters.Arg("network", n.Name))})
		if err != nil {
			continue
		}
		ids := make([]string, 0, len(list))
		for _, c := range list {
			ids = append(ids, c.ID)
		}
		if err := w.removeIDs(ctx, ids); err != nil {
			logf("removing containers of stale network %s: %v", n.Name, err)
		}
		if err := w.docker.NetworkRemove(ctx, n.ID); err == nil {
			logf("removed stale network %s (%d containers) of dead pid %d", n.Name, len(ids), pid)
		}
	}
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

// rtmEnv is RTM's environment: the probe and inspect intervals, pprof, the addresses
// and the image allow-list; defaults everywhere else.
func (w *world) rtmEnv(dsn string, extra map[string]string) map[string]string {
	env := map[string]string{
		"RTMANAGER_INTERNAL_HTTP_ADDR":         "127.0.0.1:0",
		"RTMANAGER_DOCKER_NETWORK":             w.net,
		"RTMANAGER_GAME_STATE_ROOT":            w.stateRoot,
		"RTMANAGER_POSTGRES_PRIMARY_DSN":       dsn,
		"RTMANAGER_REDIS_MASTER_ADDR":          w.env.RedisAddr,
		"RTMANAGER_REDIS_PASSWORD":             w.env.RedisPassword,
		"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": engineRepo,
		"RTMANAGER_PROBE_INTERVAL":             "1s",
		"RTMANAGER_PROBE_TIMEOUT":              "500ms",
		"RTMANAGER_INSPECT_INTERVAL":           "5s",
		"RTMANAGER_PPROF":                      "1",
		"RTMANAGER_LOG_FORMAT":                 "json",
		"RTMANAGER_LOG_LEVEL":                  "info",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// removeContainers force-removes every container on the soak's network.
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

// removeIDs force-removes containers, 8 at a time.
func (w *world) removeIDs(ctx context.Context, ids []string) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, id := range ids {
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

// close tears the world down: RTM, the containers on the network, the network, the database,
// the servers and the work dir. It is safe on a partly set up world and runs once.
func (w *world) close() { w.closeOnce.Do(w.teardown) }

func (w *world) teardown() {
	logf("cleaning up")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w.mu.Lock()
	p := w.rtm
	w.rtm = nil
	w.mu.Unlock()
	if p != nil {
		p.stop(30 * time.Second)
	}
	if w.docker != nil && w.net != "" {
		start := time.Now()
		n, err := w.removeContainers(ctx)
		if err != nil {
			logf("removing containers: %v", err)
		}
		if n > 0 {
			logf("removed %d containers in %s", n, time.Since(start).Round(100*time.Millisecond))
		}
		// A busy daemon may still be releasing the endpoints of the containers just removed
		// ("has active endpoints"), or one may have been created while we listed: retry.
		for attempt := 0; ; attempt++ {
			err := w.docker.NetworkRemove(ctx, w.net)
			if err == nil || strings.Contains(err.Error(), "not found") {
				break
			}
			if attempt == 10 || ctx.Err() != nil {
				logf("removing network %s: %v", w.net, err)
				break
			}
			sleepCtx(ctx, 2*time.Second)
			if _, err := w.removeContainers(ctx); err != nil {
				logf("removing containers: %v", err)
			}
		}
	}
	if w.rdb != nil {
		_ = w.rdb.Close()
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

// soakTB is the part of testing.TB that testenv.NewDatabase uses, for a program that is not a
// test. Fatalf panics with tbFatal, which newDatabase turns into an error.
type soakTB struct {
	testing.TB
	name     string
	mu       sync.Mutex
	cleanups []func()
}

type tbFatal string

func (t *soakTB) Helper()      {}
func (t *soakTB) Name() string { return t.name }
func (t *soakTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *soakTB) Logf(format string, args ...any)   { logf(format, args...) }
func (t *soakTB) Errorf(format string, args ...any) { logf(format, args...) }
func (t *soakTB) Fatalf(format string, args ...any) { panic(tbFatal(fmt.Sprintf(format, args...))) }

func (t *soakTB) runCleanups() {
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
