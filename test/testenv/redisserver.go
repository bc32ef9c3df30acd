package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	var pw [12]byte
	_, _ = rand.Read(pw[:])
	s := &RedisServer{tb: tb, bind: bind, Password: hex.EncodeToString(pw[:]), dir: tb.TempDir()}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if s.Port, err = freePort(); err != nil {
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
			return nil, fmt.Errorf("testenv: redis-server on port %d exited during start-up:\n%s", a.port, tail(a.log, 10))
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
			return nil, fmt.Errorf("testenv: redis-server on port %d did not answer PING: %w\n%s", a.port, err, tail(a.log, 10))
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
