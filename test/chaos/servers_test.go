//go:build chaos

package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
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

// redisServer is a test's own redis-server (RTM has no Redis database setting, so tests that
// restart Redis cannot share one): no persistence, a random password, a fixed port so that a
// restart comes back at the same address, empty.
type redisServer struct {
	t        *testing.T
	port     int
	Password string
	dir      string
	log      string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	var pw [12]byte
	_, _ = rand.Read(pw[:])
	s := &redisServer{t: t, Password: hex.EncodeToString(pw[:]), dir: t.TempDir()}
	s.log = filepath.Join(s.dir, "redis.log")
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if s.port, err = freePort(); err != nil {
			t.Fatal(err)
		}
		if err = s.spawn(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.kill)
	return s
}

// Addr is host:port of the server.
func (s *redisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Client returns a client of the server; closed when the test ends.
func (s *redisServer) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.Password,
		DialTimeout: 2 * time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *redisServer) spawn() error {
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--requirepass", s.Password, "--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = logf, logf // a file: go test waits for inherited pipes
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.Password, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("redis-server on port %d exited at start-up", s.port)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("redis-server on port %d does not answer: %w", s.port, err)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// kill stops the server with SIGKILL, as a crash would.
func (s *redisServer) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// RestartEmpty kills the server and starts a fresh, empty one at the same address.
func (s *redisServer) RestartEmpty() {
	s.t.Helper()
	s.kill()
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		if err = s.spawn(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restarting redis-server: %v", err)
}

// proxy forwards connections from a listener it owns (a unix socket or a loopback TCP port) to
// a target, and can be cut (the listener closed, every open connection dropped: "connection
// refused"), hung (connections accepted and never answered: a wedged daemon) and restored.
type proxy struct {
	network, addr     string // where it listens
	tnetwork, taddr   string // where it forwards to
	mu                sync.Mutex
	ln                net.Listener
	mode              proxyMode
	conns             map[net.Conn]struct{}
	accepted, dropped int
}

type proxyMode int

const (
	proxyForward proxyMode = iota
	proxyRefuse
	proxyHang
)

func (m proxyMode) String() string {
	return [...]string{"forward", "refuse", "hang"}[m]
}

// newProxy listens on network/addr ("unix" and a socket path, or "tcp" and "127.0.0.1:0") and
// forwards to tnetwork/taddr. It is closed when the test ends.
func newProxy(t *testing.T, network, addr, tnetwork, taddr string) *proxy {
	t.Helper()
	p := &proxy{network: network, addr: addr, tnetwork: tnetwork, taddr: taddr, conns: map[net.Conn]struct{}{}}
	if err := p.listen(); err != nil {
		t.Fatal(err)
	}
	p.addr = p.ln.Addr().String() // the port chosen for "127.0.0.1:0"
	t.Cleanup(p.close)
	return p
}

func (p *proxy) listen() error {
	if p.network == "unix" {
		_ = os.Remove(p.addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), p.network, p.addr)
	if err != nil {
		return fmt.Errorf("proxy listening on %s %s: %w", p.network, p.addr, err)
	}
	if p.network == "unix" {
		_ = os.Chmod(p.addr, 0o666)
	}
	p.ln = ln
	go p.accept(ln)
	return nil
}

func (p *proxy) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		if p.ln != ln || mode == proxyRefuse {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.accepted++
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		if mode == proxyHang {
			continue // held open, never read nor answered, until restored
		}
		go p.forward(c)
	}
}

func (p *proxy) forward(c net.Conn) {
	up, err := net.DialTimeout(p.tnetwork, p.taddr, 5*time.Second)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if p.mode != proxyForward {
		p.mu.Unlock()
		_ = up.Close()
		p.drop(c)
		return
	}
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		// Half-close so that the other direction can finish (an HTTP response after the request).
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	go pipe(up, c)
	go pipe(c, up)
	wg.Wait()
	p.drop(c)
	p.drop(up)
}

func (p *proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// dropAll closes every open connection. The caller holds mu.
func (p *proxy) dropAll() {
	for c := range p.conns {
		_ = c.Close()
		p.dropped++
	}
	p.conns = map[net.Conn]struct{}{}
}

// Cut makes the target unreachable through the proxy: open connections are dropped and new
// ones refused (for a unix socket the path disappears, as when a daemon is stopped).
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = proxyRefuse
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	p.dropAll()
}

// Hang makes the target a black hole: open connections are dropped, new ones are accepted and
// never answered, so every call waits for its own timeout.
func (p *proxy) Hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = proxyHang
	p.dropAll()
}

// Restore forwards again: hung connections are dropped (their callers see an error at once) and
// the listener is opened again if it was closed.
func (p *proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropAll()
	p.mode = proxyForward
	if p.ln == nil {
		return p.listen()
	}
	return nil
}

func (p *proxy) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = proxyRefuse
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	p.dropAll()
	if p.network == "unix" {
		_ = os.Remove(p.addr)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
