// Package testenv is the harness every RTM test shares: a throwaway PostgreSQL cluster and a
// redis-server on free loopback ports, fresh databases provisioned the way production provisions
// them, distinct Redis logical databases, the stand-in engine images, and a Docker gate.
//
// One Env per test package, started in TestMain:
//
//	var env *testenv.Env
//
//	func TestMain(m *testing.M) {
//		var err error
//		env, err = testenv.Start(context.Background())
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		code := m.Run()
//		env.Stop()
//		os.Exit(code)
//	}
//
// Servers can be supplied from outside instead: RTMANAGER_TEST_POSTGRES_DSN (a superuser DSN) and
// RTMANAGER_TEST_REDIS_ADDR (with RTMANAGER_TEST_REDIS_PASSWORD) make Start use them and start
// nothing of that kind; the lifecycle helpers for fault tests then return ErrNotManaged.
//
// A test binary killed before Stop runs (a -timeout panic, SIGKILL) leaves its servers behind;
// the next Start on the machine finds such leftovers by their dead owner pid and removes them.
package testenv

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
)

// Environment variables that point the harness at servers started elsewhere.
const (
	EnvPostgresDSN   = "RTMANAGER_TEST_POSTGRES_DSN"
	EnvRedisAddr     = "RTMANAGER_TEST_REDIS_ADDR"
	EnvRedisPassword = "RTMANAGER_TEST_REDIS_PASSWORD"
	// EnvE2ERequired set to 1 turns RequireDocker's skip into a failure (CI sets it).
	EnvE2ERequired = "RTM_E2E_REQUIRED"
)

// workDirPrefix names the temp dirs Start creates; reapStale looks for it.
const workDirPrefix = "rtm-testenv-"

// ErrNotManaged is returned by the lifecycle helpers (StopPostgres, StartPostgres,
// RestartRedisEmpty) when the server was supplied from outside and the harness cannot control it.
var ErrNotManaged = errors.New("testenv: server not started by the harness")

// Env is a running test environment. Its exported fields are read-only after Start.
type Env struct {
	// AdminDSN is a superuser DSN to the "postgres" database of the cluster.
	AdminDSN string
	// PGHost and PGPort are where PostgreSQL listens (127.0.0.1 and a free port when managed).
	PGHost string
	PGPort int
	// PGBin is the directory holding initdb and pg_ctl; empty when PostgreSQL is external.
	PGBin string
	// PGDataDir is the cluster's data directory; empty when PostgreSQL is external.
	PGDataDir string
	// PostgresManaged reports whether the harness started PostgreSQL (and so can stop it).
	PostgresManaged bool

	// RedisAddr is host:port of the redis-server; RedisPassword its requirepass.
	RedisAddr     string
	RedisPassword string
	// RedisManaged reports whether the harness started redis-server (and so can restart it).
	RedisManaged bool

	// WorkDir is the temp dir holding the data dir, logs and pid files; empty when nothing
	// was started.
	WorkDir string

	pgLog        string
	pgUID, pgGID int // owner of the data dir when we run as root

	redisMu   sync.Mutex
	redisProc *redisProc
	redisPort int
	redisLog  string

	dbMu     sync.Mutex
	dbSeq    int
	roleDone bool

	redisDBMu sync.Mutex
	redisDBN  int

	stopOnce sync.Once
}

// Start brings up the environment: PostgreSQL (unless RTMANAGER_TEST_POSTGRES_DSN is set) and
// redis-server (unless RTMANAGER_TEST_REDIS_ADDR is set). ctx bounds the start-up only; the servers
// run until Stop. On error everything already started is stopped again.
func Start(ctx context.Context) (*Env, error) {
	e := &Env{}
	ok := false
	defer func() {
		if !ok {
			e.Stop()
		}
	}()

	pgDSN := os.Getenv(EnvPostgresDSN)
	redisAddr := os.Getenv(EnvRedisAddr)
	if pgDSN == "" || redisAddr == "" {
		base := os.TempDir()
		if os.Geteuid() == 0 {
			// The postgres user must be able to traverse every parent of the data dir, and a
			// root TMPDIR (say under /root) is not traversable.
			base = "/tmp"
		}
		dir, err := OwnedWorkDir(base, workDirPrefix, reapStale)
		if err != nil {
			return nil, fmt.Errorf("testenv: %w", err)
		}
		e.WorkDir = dir
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, fmt.Errorf("testenv: chmod work dir: %w", err)
		}
	}

	if pgDSN != "" {
		if err := e.usePostgres(pgDSN); err != nil {
			return nil, err
		}
	} else if err := e.startPostgresCluster(ctx); err != nil {
		return nil, err
	}

	if redisAddr != "" {
		e.RedisAddr = redisAddr
		e.RedisPassword = os.Getenv(EnvRedisPassword)
		if err := e.pingRedis(ctx, 10*time.Second); err != nil {
			return nil, fmt.Errorf("testenv: redis at %s (%s): %w", redisAddr, EnvRedisAddr, err)
		}
	} else if err := e.startRedisServer(ctx); err != nil {
		return nil, err
	}

	ok = true
	return e, nil
}

// Stop stops the servers the harness started and removes its work dir. External servers are left
// alone. Stop is idempotent and safe on a partly started Env.
func (e *Env) Stop() {
	e.stopOnce.Do(func() {
		e.redisMu.Lock()
		e.killRedis()
		e.redisMu.Unlock()
		if e.PostgresManaged && e.PGDataDir != "" {
			_ = e.pgCtl(context.Background(), "stop", "-m", "immediate", "-w", "-t", "30")
		}
		if e.WorkDir != "" {
			_ = os.RemoveAll(e.WorkDir)
		}
	})
}

// ModuleRoot returns the directory of the nearest go.mod at or above the working directory
// (the repository root when called from a test in any package of this module).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testenv: working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// RequireDocker skips the test when no Docker daemon answers, or fails it when
// RTM_E2E_REQUIRED=1 (CI must not silently skip the suites that need Docker).
func RequireDocker(tb testing.TB) {
	tb.Helper()
	err := DockerPing(context.Background())
	if err == nil {
		return
	}
	if os.Getenv(EnvE2ERequired) == "1" {
		tb.Fatalf("docker is required (%s=1) but does not answer: %v", EnvE2ERequired, err)
	}
	tb.Skipf("docker not available: %v", err)
}

// RequireSuite is the first call of every test of a suite that TestMain prepares once (the
// e2e and chaos suites): RequireDocker, then it fails the test when the suite has no Env or
// preparing it failed with prepErr.
func RequireSuite(tb testing.TB, env *Env, prepErr error) {
	tb.Helper()
	RequireDocker(tb)
	if prepErr != nil || env == nil {
		tb.Fatalf("the suite was not prepared: %v", prepErr)
	}
}

// GoBuild builds a static linux binary of pkg (relative to the module root root) into out, with
// extra build flags.
func GoBuild(ctx context.Context, root, out, pkg string, flags ...string) error {
	args := append([]string{"build", "-trimpath", "-o", out}, flags...)
	args = append(args, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// DockerPing reports whether a Docker daemon answers `docker version` within 15 s.
func DockerPing(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}").CombinedOutput()
	if err != nil {
		return fmt.Errorf("docker version: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// runLogged runs cmd with its output appended to logPath (a file, not a pipe: a daemon that
// inherits a pipe would keep Wait from returning) and returns the log's tail on failure.
func runLogged(cmd *exec.Cmd, logPath string) error {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, Tail(logPath, 20))
	}
	return nil
}

// reapStale stops the servers a dead run left in its work dir dir (OwnedWorkDir). Only the
// processes recorded there are touched.
func reapStale(dir string) {
	if b, err := os.ReadFile(filepath.Join(dir, "redis.pid")); err == nil {
		if rp, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && processName(rp) == "redis-server" {
			if p, err := os.FindProcess(rp); err == nil {
				_ = p.Kill()
			}
		}
	}
	data := filepath.Join(dir, "pg")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
		if bin, err := findPGBin(); err == nil {
			e := &Env{PGBin: bin, PGDataDir: data, pgLog: filepath.Join(dir, "reap.log")}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = e.pgCtl(ctx, "stop", "-m", "immediate", "-w")
			cancel()
		}
	}
}

func processName(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Main is a package's TestMain body: it starts an Env (failing the run if it cannot), stores it
// in *env, runs the tests and stops the Env. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }
func Main(m *testing.M, env **Env) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	e, err := Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test environment:", err)
		return 1
	}
	defer e.Stop()
	*env = e
	return m.Run()
}

// Terminate stops a child process the way its supervisor would: SIGTERM, then, when done (closed
// once the process has exited and been waited for) is not closed within grace, SIGKILL. It
// returns once the process is gone and reports whether it exited within grace.
func Terminate(p *os.Process, done <-chan struct{}, grace time.Duration) bool {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return true
	case <-time.After(grace):
		_ = p.Kill()
		<-done
		return false
	}
}

// Parallel runs the steps side by side (a suite's slow preparations: the servers, the images,
// the binary) and returns their errors joined once all have returned.
func Parallel(steps ...func() error) error {
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, step := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = step()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// RunID returns prefix and six random hex digits: the prefix that keeps one run's game ids,
// networks and request ids apart from another run's on the same Docker daemon.
func RunID(prefix string) string { return prefix + randomHex(3) }

// randomHex returns n random bytes in hex: passwords and names no other run guesses.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
