package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisDBs is how many logical databases NewRedisDB cycles through (1..15; 0 is left alone).
const redisDBs = 15

// RedisOptions returns client options for logical database db of the environment's Redis.
func (e *Env) RedisOptions(db int) *redis.Options {
	return &redis.Options{Addr: e.RedisAddr, Password: e.RedisPassword, DB: db}
}

// NewRedisDB hands out a logical database number (1..15, cycling, so distinct for up to 15 live
// users in one package), empties it, and registers a cleanup that empties it again. Failing to
// empty it fails the test.
func (e *Env) NewRedisDB(tb testing.TB) int {
	tb.Helper()
	e.redisDBMu.Lock()
	db := e.redisDBN%redisDBs + 1
	e.redisDBN++
	e.redisDBMu.Unlock()

	if err := e.flushDB(db); err != nil {
		tb.Fatalf("testenv: flushing redis db %d: %v", db, err)
	}
	tb.Cleanup(func() {
		if err := e.flushDB(db); err != nil {
			tb.Logf("testenv: flushing redis db %d: %v", db, err)
		}
	})
	return db
}

func (e *Env) flushDB(db int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := redis.NewClient(e.RedisOptions(db))
	defer c.Close()
	return c.FlushDB(ctx).Err()
}

// RestartRedisEmpty kills the harness's redis-server and starts a fresh, empty one with the same
// address and password, returning once it answers PING: the "Redis lost everything" fault.
// Clients see their connections drop. It returns ErrNotManaged for an external server.
func (e *Env) RestartRedisEmpty() error {
	if !e.RedisManaged {
		return ErrNotManaged
	}
	e.redisMu.Lock()
	defer e.redisMu.Unlock()
	e.killRedis()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The old listener's port is free again at once (redis sets SO_REUSEADDR), but retry
	// briefly in case the kernel is slow to let go of it.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = e.spawnRedis(ctx); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// startRedisServer starts redis-server on a free loopback port with a random password, without
// persistence. A missing redis-server is installed with apt-get when we are root.
func (e *Env) startRedisServer(ctx context.Context) error {
	if _, err := exec.LookPath("redis-server"); err != nil {
		if err := installRedis(ctx); err != nil {
			return err
		}
	}
	e.RedisPassword = randomHex(12)
	e.redisLog = filepath.Join(e.WorkDir, "redis.log")
	e.RedisManaged = true

	e.redisMu.Lock()
	defer e.redisMu.Unlock()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			return err
		}
		e.redisPort = port
		e.RedisAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = e.spawnRedis(ctx); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

func installRedis(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("testenv: redis-server not found and not root to install it (apt-get install redis-server), or set " + EnvRedisAddr)
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{{"update"}, {"install", "-y", "redis-server"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("testenv: apt-get %v: %w\n%s", args, err, out)
		}
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return fmt.Errorf("testenv: redis-server still missing after apt-get install: %w", err)
	}
	return nil
}

// spawnRedis starts redis-server as a child process on e.redisPort and waits until it answers.
// The caller holds redisMu.
func (e *Env) spawnRedis(ctx context.Context) error {
	p, err := spawnRedis(ctx, redisArgs{port: e.redisPort, password: e.RedisPassword, bind: []string{"127.0.0.1"},
		dir: e.WorkDir, log: e.redisLog})
	if err != nil {
		return err
	}
	e.redisProc = p
	_ = os.WriteFile(filepath.Join(e.WorkDir, "redis.pid"), []byte(strconv.Itoa(p.cmd.Process.Pid)), 0o644)
	return nil
}

// killRedis stops the child redis-server, if any. The caller holds redisMu.
func (e *Env) killRedis() {
	e.redisProc.stop()
	e.redisProc = nil
}

// MustRedis returns a client of a fresh logical database of the environment's Redis
// (NewRedisDB), closed when tb ends.
func (e *Env) MustRedis(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(e.RedisOptions(e.NewRedisDB(tb)))
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func (e *Env) pingRedis(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	opts := e.RedisOptions(0)
	opts.MaxRetries = -1
	c := redis.NewClient(opts)
	defer c.Close()
	return c.Ping(ctx).Err()
}

// RedisServer is a redis-server of one test's own, for the suites that run the rtmanager
// binary: RTM has no setting for a Redis logical database and its offset keys are fixed, so two
// RTMs must never share a server, and a test that restarts Redis must not take others' data with
// it. It has a random password, no persistence, and keeps its port across restarts.
type RedisServer struct {
	Port     int
	Password string

	tb   testing.TB
	bind []string
	dir  string

	mu   sync.Mutex
	proc *redisProc
}

// StartRedisServer starts redis-server on a free port of the bind addresses (127.0.0.1 when none
// is given; add the host-gateway address when a container must reach it through
// host.docker.internal). It is stopped when the test ends.
func StartRedisServer(tb testing.TB, bind ...string) *RedisServer {
	tb.Helper()
	if len(bind) == 0 {
		bind = []string{"127.0.0.1"}
	}
	s := &RedisServer{tb: tb, bind: bind, Password: randomHex(12), dir: tb.TempDir()}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if s.Port, err = FreePort(); err != nil {
			tb.Fatal(err)
		}
		if err = s.spawn(); err == nil {
			tb.Cleanup(s.Stop)
			return s
		}
	}
	tb.Fatalf("starting redis-server: %v", err)
	return nil
}

// Addr is host:port as a host process dials it.
func (s *RedisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Client returns a client of the server, closed when the test ends; tune adjusts its options.
func (s *RedisServer) Client(tune ...func(*redis.Options)) *redis.Client {
	o := &redis.Options{Addr: s.Addr(), Password: s.Password}
	for _, f := range tune {
		f(o)
	}
	c := redis.NewClient(o)
	s.tb.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *RedisServer) spawn() error {
	p, err := spawnRedis(context.Background(), redisArgs{port: s.Port, password: s.Password, bind: s.bind,
		dir: s.dir, log: filepath.Join(s.dir, "redis.log")})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

// Stop stops the server with SIGTERM (its data is lost: nothing is persisted). Idempotent.
func (s *RedisServer) Stop() { s.take().stop() }

// Kill stops the server with SIGKILL, as a crash would. Idempotent.
func (s *RedisServer) Kill() { s.take().kill() }

func (s *RedisServer) take() *redisProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	s.proc = nil
	return p
}

// Restart stops the server if it runs and starts it again on the same port, empty.
func (s *RedisServer) Restart() {
	s.tb.Helper()
	s.Stop()
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		if err = s.spawn(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.tb.Fatalf("restarting redis-server on port %d: %v", s.Port, err)
}

// redisArgs say how to run one redis-server.
type redisArgs struct {
	port     int
	password string
	bind     []string
	dir      string // its working directory
	log      string // its output goes here
}

// redisProc is a running redis-server child process.
type redisProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// spawnRedis starts redis-server without persistence and waits until it answers PING.
func spawnRedis(ctx context.Context, a redisArgs) (*redisProc, error) {
	logf, err := os.OpenFile(a.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testenv: redis log: %w", err)
	}
	defer logf.Close()
	args := append([]string{"--port", strconv.Itoa(a.port), "--bind"}, a.bind...)
	args = append(args, "--requirepass", a.password, "--save", "", "--appendonly", "no",
		"--dir", a.dir, "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning")
	cmd := exec.Command("redis-server", args...)
	cmd.Dir = a.dir
	// Output goes to a file, never an inherited pipe: go test waits for its pipes to close.
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testenv: starting redis-server: %w", err)
	}
	p := &redisProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()

	c := redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(a.port)),
		Password: a.password, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-p.done:
			return nil, fmt.Errorf("testenv: redis-server on port %d exited during start-up:\n%s", a.port, Tail(a.log, 10))
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Ping(pctx).Err()
		cancel()
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.kill()
			return nil, fmt.Errorf("testenv: redis-server on port %d did not answer PING: %w\n%s", a.port, err, Tail(a.log, 10))
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// stop sends SIGTERM and kills after 5 s. A nil p is stopped already.
func (p *redisProc) stop() {
	if p == nil {
		return
	}
	Terminate(p.cmd.Process, p.done, 5*time.Second)
}

// kill sends SIGKILL. A nil p is stopped already.
func (p *redisProc) kill() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}
