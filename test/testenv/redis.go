package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	var pw [12]byte
	_, _ = rand.Read(pw[:])
	e.RedisPassword = hex.EncodeToString(pw[:])
	e.redisLog = filepath.Join(e.WorkDir, "redis.log")
	e.RedisManaged = true

	e.redisMu.Lock()
	defer e.redisMu.Unlock()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
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
