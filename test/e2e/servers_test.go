//go:build integration

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a redis-server of one test's own. RTM has no setting for a Redis logical
// database and its offset keys are fixed, so two RTMs must never share a server: each rig starts
// one (a few milliseconds).
type redisServer struct {
	t        *testing.T
	bind     []string
	Port     int
	Password string
	dir      string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// startRedis starts redis-server on a free port of the bind addresses (127.0.0.1, and the
// host-gateway address when a container must reach it through host.docker.internal), with a
// random password and no persistence. It is stopped when the test ends.
func startRedis(t *testing.T, bind ...string) *redisServer {
	t.Helper()
	var pw [8]byte
	_, _ = rand.Read(pw[:])
	s := &redisServer{t: t, bind: bind, Password: hex.EncodeToString(pw[:]), dir: t.TempDir()}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		s.Port = freePort(t)
		if err = s.spawn(); err == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("starting redis-server: %v", err)
	return nil
}

// Addr is host:port as a host process dials it.
func (s *redisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Client returns a go-redis client for the server, closed when the test ends.
func (s *redisServer) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.Password})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *redisServer) spawn() error {
	logPath := filepath.Join(s.dir, "redis.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append([]string{"--port", strconv.Itoa(s.Port), "--bind"}, s.bind...)
	args = append(args, "--requirepass", s.Password, "--save", "", "--appendonly", "no", "--dir", s.dir,
		"--protected-mode", "no", "--loglevel", "warning")
	cmd := exec.Command("redis-server", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.Password, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			return errors.New("redis-server exited: " + string(b))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (its data is lost: nothing is persisted). Idempotent.
func (s *redisServer) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart starts the server again on the same port, empty.
func (s *redisServer) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		if err = s.spawn(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("restarting redis-server on port %d: %v", s.Port, err)
}

// freePort asks the kernel for a free TCP port.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proxy forwards TCP connections from a listener to a target (TCP or unix socket) and can cut
// the link, the way a dependency going away looks to RTM: open connections drop and new ones are
// refused, until Restore listens again on the same address.
type proxy struct {
	t         *testing.T
	listen    string // host:port to listen on
	network   string // of the target: "tcp" or "unix"
	target    string
	mu        sync.Mutex
	ln        net.Listener
	conns     map[net.Conn]struct{}
	listening sync.WaitGroup
}

// startProxy listens on host:0 (a free port) and forwards to network/target until the test ends.
func startProxy(t *testing.T, host, network, target string) *proxy {
	t.Helper()
	p := &proxy{t: t, network: network, target: target, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p.listen = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.Cut)
	return p
}

// Port is the port the proxy listens on.
func (p *proxy) Port() int {
	_, port, _ := net.SplitHostPort(p.listen)
	n, _ := strconv.Atoi(port)
	return n
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.listening.Add(1)
	go func() {
		defer p.listening.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
}

func (p *proxy) forward(c net.Conn) {
	up, err := net.DialTimeout(p.network, p.target, 5*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // cut meanwhile
		p.mu.Unlock()
		_ = c.Close()
		_ = up.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		_ = dst.Close()
		_ = src.Close()
	}
	go pipe(up, c)
	go pipe(c, up)
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// Cut closes the listener and every forwarded connection. Idempotent.
func (p *proxy) Cut() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
		p.listening.Wait()
	}
}

// Restore listens again on the same address.
func (p *proxy) Restore() {
	p.t.Helper()
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		var ln net.Listener
		if ln, err = net.Listen("tcp", p.listen); err == nil {
			p.serve(ln)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.t.Fatalf("proxy: listening again on %s: %v", p.listen, err)
}
