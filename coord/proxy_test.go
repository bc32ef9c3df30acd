package coord_test

import (
	"net"
	"sync"
	"testing"
)

// proxy forwards TCP connections to a target. Paused, it stops forwarding without closing
// anything, as a network that black-holes packets does; resumed, it drops the connections it
// holds (with the bytes it held back) and forwards again.
type proxy struct {
	ln     net.Listener
	target string
	done   chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	open  chan struct{} // closed while forwarding
	conns map[net.Conn]chan struct{}
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, done: make(chan struct{}), open: make(chan struct{}), conns: map[net.Conn]chan struct{}{}}
	close(p.open)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		dead := make(chan struct{})
		p.mu.Lock()
		p.conns[c], p.conns[u] = dead, dead
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(u, c, dead)
		go p.pipe(c, u, dead)
	}
}

// pipe copies src to dst, holding each chunk while paused; a chunk held when the connection is
// dropped is never delivered.
func (p *proxy) pipe(dst, src net.Conn, dead chan struct{}) {
	defer p.wg.Done()
	defer p.drop(dst, src)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			open := p.open
			p.mu.Unlock()
			select {
			case <-open:
			case <-dead:
				return
			case <-p.done:
				return
			}
			select {
			case <-dead:
				return
			default:
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// drop closes a connection pair once.
func (p *proxy) drop(a, b net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if dead, ok := p.conns[a]; ok {
		close(dead)
		delete(p.conns, a)
		delete(p.conns, b)
	}
	a.Close()
	b.Close()
}

// pause stops forwarding.
func (p *proxy) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = make(chan struct{})
}

// resume drops every connection, with what it held back, and forwards again.
func (p *proxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	closed := map[chan struct{}]bool{}
	for c, dead := range p.conns {
		if !closed[dead] {
			close(dead)
			closed[dead] = true
		}
		c.Close()
		delete(p.conns, c)
	}
	close(p.open)
}

func (p *proxy) close() {
	close(p.done)
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
