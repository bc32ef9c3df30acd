//go:build integration

package e2e

import (
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

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
