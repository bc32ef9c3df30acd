package testenv

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// BlackHole listens on a loopback port, accepts connections and never answers (packets dropped,
// not refused), and returns its host:port. The test's cleanup closes it and every connection it
// accepted.
func BlackHole(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// Proxy is a TCP proxy to a server (the harness's PostgreSQL or Redis) whose path a test can cut:
// while cut, every byte either way is read and thrown away (nothing is refused, nothing answers),
// as when a network drops packets. Healing forwards again and closes the connections that lost
// bytes, as their peers would once the network came back.
type Proxy struct {
	ln       net.Listener
	upstream string
	dropping atomic.Bool

	mu    sync.Mutex
	pairs map[*proxyPair]struct{}
	wg    sync.WaitGroup
}

type proxyPair struct {
	client, server net.Conn
	lost           atomic.Bool
}

func (p *proxyPair) close() { p.client.Close(); p.server.Close() }

// NewProxy starts a proxy to upstream (host:port) on a loopback port; the test's cleanup stops it
// and waits for its goroutines.
func NewProxy(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{ln: ln, upstream: upstream, pairs: map[*proxyPair]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for pr := range p.pairs {
			pr.close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// Addr returns the host:port the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		pr := &proxyPair{client: c, server: s}
		p.mu.Lock()
		p.pairs[pr] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pr, c, s)
		go p.pipe(pr, s, c)
	}
}

// pipe copies from src to dst, dropping what it reads while the path is cut.
func (p *Proxy) pipe(pr *proxyPair, src, dst net.Conn) {
	defer p.wg.Done()
	defer func() {
		pr.close()
		p.mu.Lock()
		delete(p.pairs, pr)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if p.dropping.Load() {
				pr.lost.Store(true)
			} else if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Cut starts dropping everything.
func (p *Proxy) Cut() { p.dropping.Store(true) }

// Heal forwards again and closes the connections that lost bytes.
func (p *Proxy) Heal() {
	p.dropping.Store(false)
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		if pr.lost.Load() {
			pr.close()
		}
	}
}

// SyncBuffer is a bytes.Buffer that a process or a command may write while the test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
