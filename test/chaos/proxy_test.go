//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// proxy stands between an RTM process and one of its dependencies: it listens on a socket it owns
// (a unix socket or a loopback TCP port) and forwards each connection to the target, byte for
// byte, or hands it to serve (the Docker proxy's HTTP server). The test breaks the path in the
// ways a real network or daemon breaks:
//
//   - Cut: refused (the listener closed, open connections dropped), as a stopped daemon;
//   - Hang: open connections dropped, new ones accepted and never answered, as a wedged daemon;
//   - Pause: every connection stays open and no byte flows either way; new connections are
//     accepted and wait; on Restore everything flows again, held bytes included (a partition TCP
//     rides out);
//   - Blackhole: every byte sent either way on a connection open now or opened before Restore is
//     dropped, for good, and no connection is ever closed by the proxy (a peer that vanished
//     without a reset: only the client's own deadline frees it); Restore forwards new connections.
type proxy struct {
	network, addr   string // where it listens
	tnetwork, taddr string // where it forwards to
	serve           func(net.Conn)

	mu                sync.Mutex
	ln                net.Listener
	mode              proxyMode
	resume            chan struct{} // closed when a pause ends
	links             map[*link]struct{}
	accepted, dropped int
}

// link is one accepted connection and, once dialled, its upstream.
type link struct {
	client, up net.Conn
	holed      atomic.Bool // black-holed: bytes either way are discarded for good
}

type proxyMode int

const (
	proxyForward proxyMode = iota
	proxyRefuse
	proxyHang
	proxyPause
	proxyBlackhole
)

func (m proxyMode) String() string {
	return [...]string{"forward", "refuse", "hang", "pause", "blackhole"}[m]
}

// newProxy listens on network/addr ("unix" and a socket path, or "tcp" and "127.0.0.1:0") and
// forwards to tnetwork/taddr. It is closed when the test ends.
func newProxy(t *testing.T, network, addr, tnetwork, taddr string) *proxy {
	t.Helper()
	p := &proxy{network: network, addr: addr, tnetwork: tnetwork, taddr: taddr, links: map[*link]struct{}{}}
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}

// start opens the listener; addr becomes the address actually bound (the port of "127.0.0.1:0").
func (p *proxy) start() error {
	if p.links == nil {
		p.links = map[*link]struct{}{}
	}
	if err := p.listen(); err != nil {
		return err
	}
	p.addr = p.ln.Addr().String()
	return nil
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
			continue
		}
		l := &link{client: c}
		l.holed.Store(mode == proxyBlackhole)
		p.accepted++
		p.links[l] = struct{}{}
		p.mu.Unlock()
		switch mode {
		case proxyHang:
			// Held open, never read nor answered, until restored.
		case proxyBlackhole:
			go p.swallow(l)
		default:
			go p.forward(l)
		}
	}
}

// flowing waits while the proxy is paused.
func (p *proxy) flowing() {
	for {
		p.mu.Lock()
		mode, ch := p.mode, p.resume
		p.mu.Unlock()
		if mode != proxyPause {
			return
		}
		<-ch
	}
}

func (p *proxy) forward(l *link) {
	p.flowing() // a connection opened during a pause waits for its end
	if p.serve != nil {
		p.serve(&trackedConn{Conn: l.client, onClose: func() { p.forget(l) }})
		return
	}
	up, err := net.DialTimeout(p.tnetwork, p.taddr, 5*time.Second)
	if err != nil {
		p.drop(l)
		return
	}
	p.mu.Lock()
	if _, live := p.links[l]; !live || p.mode == proxyRefuse || p.mode == proxyHang {
		p.mu.Unlock()
		_ = up.Close()
		p.drop(l)
		return
	}
	l.up = up
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(l, up, l.client, true) }()
	go func() { defer wg.Done(); p.pipe(l, l.client, up, false) }()
	wg.Wait()
	p.drop(l)
}

// pipe copies src to dst while the link is forwarding, holds the bytes while the proxy is
// paused, and discards them once the link is black-holed.
func (p *proxy) pipe(l *link, dst, src net.Conn, fromClient bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.flowing()
			if !l.holed.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err == nil {
			continue
		}
		switch {
		case l.holed.Load() && fromClient:
			_ = dst.Close() // the client gave up on the hole: free the upstream (and the other pipe)
		case l.holed.Load():
			// The target went away: a black hole never tells the client.
		default:
			// Half-close so that the other direction can finish (an HTTP response after the request).
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
		}
		return
	}
}

// swallow reads a black-holed connection's bytes until its client closes it.
func (p *proxy) swallow(l *link) {
	buf := make([]byte, 32<<10)
	for {
		if _, err := l.client.Read(buf); err != nil {
			p.drop(l)
			return
		}
	}
}

func (p *proxy) forget(l *link) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

func (p *proxy) drop(l *link) {
	p.forget(l)
	_ = l.client.Close()
	if l.up != nil {
		_ = l.up.Close()
	}
}

// dropAll closes every open connection. The caller holds mu.
func (p *proxy) dropAll() {
	for l := range p.links {
		_ = l.client.Close()
		if l.up != nil {
			_ = l.up.Close()
		}
		p.dropped++
	}
	p.links = map[*link]struct{}{}
}

// setMode switches to m, first ending a pause so that no copier stays parked. The caller holds mu.
func (p *proxy) setMode(m proxyMode) {
	if p.mode == proxyPause {
		close(p.resume)
	}
	p.mode = m
	if m == proxyPause {
		p.resume = make(chan struct{})
	}
}

// Cut makes the target unreachable through the proxy: open connections are dropped and new
// ones refused (for a unix socket the path disappears, as when a daemon is stopped).
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setMode(proxyRefuse)
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	p.dropAll()
}

// Hang makes the target a wedged daemon: open connections are dropped, new ones are accepted and
// never answered, so every call waits for its own timeout.
func (p *proxy) Hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setMode(proxyHang)
	p.dropAll()
}

// Pause stops every byte: connections stay open, nothing flows either way, new connections are
// accepted and wait. Restore lets it all flow again.
func (p *proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setMode(proxyPause)
}

// Blackhole drops, from now on and for good, every byte of every connection open now or opened
// before Restore; none of them is ever closed by the proxy.
func (p *proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setMode(proxyBlackhole)
	for l := range p.links {
		l.holed.Store(true)
	}
}

// Restore forwards new connections again. Held connections of a hang are dropped (their callers
// see an error at once); a pause's connections carry on where they stopped; black-holed ones
// stay black holes until their client closes them. The listener is opened again if it was cut.
func (p *proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == proxyHang {
		p.dropAll()
	}
	p.setMode(proxyForward)
	if p.ln == nil {
		return p.listen()
	}
	return nil
}

// holes counts the black-holed connections still open: connections their client has not given
// up on.
func (p *proxy) holes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for l := range p.links {
		if l.holed.Load() {
			n++
		}
	}
	return n
}

// close cuts the proxy for good and removes its socket file (addr is fixed once started).
func (p *proxy) close() {
	p.Cut()
	if p.network == "unix" {
		_ = os.Remove(p.addr)
	}
}

// trackedConn tells the proxy when the server it was handed to closes it.
type trackedConn struct {
	net.Conn
	once    sync.Once
	onClose func()
}

func (c *trackedConn) Close() error {
	c.once.Do(c.onClose)
	return c.Conn.Close()
}
