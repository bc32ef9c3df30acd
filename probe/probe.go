// Package probe holds RTM's HTTP clients of other services: the active health probe of a running
// engine (GET /healthz on the engine's port, addressed by the container's IP on the game network
// or by its endpoint's DNS name), the prober worker that runs it over every running engine and
// hands the outcomes to the store, and Lobby's diagnostic lookup. It enqueues nothing.
package probe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// maxBody is how much of an answer's body a probe reads; a longer body ends the connection.
const maxBody = 64 << 10

// HTTP probes engines over HTTP/1.1, keeping one connection per engine between probes.
//
// It speaks HTTP on a plain net.Conn rather than through http.Transport: a kept connection then
// costs a file descriptor and nothing else (the transport keeps two goroutines per idle
// connection, 2,000 at 1,000 engines), and a probe on it is one write and one read: about 30 µs
// of CPU, against about 230 µs for a fresh connection per probe through the transport (the
// alternative that keeps no goroutines; at 1,000 engines probed every 5 s that was most of RTM's
// CPU at rest). A probe takes its
// engine's connection out of the pool while it runs, so two probes of one engine at once use
// two connections and the pool keeps one. Deadlines bound every dial, write and read; the
// context's end cuts a probe short.
type HTTP struct {
	port    int
	byIP    bool
	timeout time.Duration
	dialer  net.Dialer

	mu   sync.Mutex
	idle map[string]*conn // by address (host:port)
}

// conn is a kept connection to one engine.
type conn struct {
	net.Conn
	br   *bufio.Reader
	used time.Time // when its last probe ended
}

// New returns a prober. byIP selects the container's address on the network (the default
// probe target); otherwise the engine_endpoint URL is used.
func New(port int, byIP bool, timeout time.Duration) *HTTP {
	return &HTTP{port: port, byIP: byIP, timeout: timeout, dialer: net.Dialer{Timeout: timeout},
		idle: map[string]*conn{}}
}

// URL returns the probe URL of an engine.
func (p *HTTP) URL(c rtm.Container, endpoint string) string {
	if p.byIP && c.IP != "" {
		return "http://" + net.JoinHostPort(c.IP, strconv.Itoa(p.port)) + "/healthz"
	}
	return strings.TrimSuffix(endpoint, "/") + "/healthz"
}

// Probe answers nil when the engine's /healthz answers 2xx within the timeout. A redirect is an
// answer that is not 2xx: it is not followed.
func (p *HTTP) Probe(ctx context.Context, c rtm.Container, endpoint string) error {
	addr, u, err := p.target(c, endpoint)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	status, err := p.get(ctx, addr, u)
	return verdict(c, status, err)
}

// Sent is a probe request written on a kept connection whose answer is not read yet.
type Sent struct {
	p    *HTTP
	c    rtm.Container
	cn   *conn
	addr string
	u    *url.URL
	at   time.Time // when the request was written
}

// Send writes the probe request of c's engine on the engine's kept connection and returns
// without waiting for the answer; Wait reads it. The prober sends a round's requests first and
// reads the answers after, so that an answer has usually arrived by the time it is read: a probe
// is then one write and one read, with no read that finds nothing and no wait in the poller in
// between (at 1,000 engines those were a third of RTM's CPU at rest). ok is false when the engine
// has no kept connection or the write failed (the connection is dropped): Probe is then the way,
// on a new connection.
func (p *HTTP) Send(c rtm.Container, endpoint string) (*Sent, bool) {
	addr, u, err := p.target(c, endpoint)
	if err != nil {
		return nil, false
	}
	cn := p.take(addr)
	if cn == nil {
		return nil, false
	}
	now := time.Now()
	_ = cn.SetDeadline(now.Add(p.timeout))
	if err := writeRequest(cn, u); err != nil {
		cn.Close()
		return nil, false
	}
	return &Sent{p: p, c: c, cn: cn, addr: addr, u: u, at: now}, true
}

// readyWait is how long Ready waits for an answer to begin.
const readyWait = time.Millisecond

// Ready reports whether the answer to the request has begun to arrive, waiting a moment at most:
// Wait then reads it without waiting, so the prober reads it in the round's own goroutine.
func (s *Sent) Ready() bool {
	_ = s.cn.SetReadDeadline(time.Now().Add(readyWait))
	_, err := s.cn.br.Peek(1)
	return err == nil
}

// lateRead is how long a read that begins after its probe's deadline may still wait: the reads of
// a round can queue behind hanging engines, and an answer that arrived in time is not failed for
// being read late.
const lateRead = 50 * time.Millisecond

// Wait reads the answer to the request Send wrote: nil when the engine answered 2xx within the
// timeout after the send (or before the read began). A kept connection that failed before the
// answer began (the engine closed it while idle, or restarted) is dropped and the probe sent once
// more on a new connection, as Probe does; ctx's end cuts the wait short.
func (s *Sent) Wait(ctx context.Context) error {
	p := s.p
	_ = s.cn.SetDeadline(later(s.at.Add(p.timeout), time.Now().Add(lateRead)))
	status, err := p.read(ctx, s.cn, s.addr, s.u)
	if retry(ctx, err) {
		rctx, cancel := context.WithTimeout(ctx, p.timeout)
		defer cancel()
		status, err = p.dial(rctx, s.addr, s.u)
	}
	return verdict(s.c, status, err)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// target returns the address and URL of c's probe.
func (p *HTTP) target(c rtm.Container, endpoint string) (string, *url.URL, error) {
	raw := p.URL(c, endpoint)
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return "", nil, fmt.Errorf("probing %s: bad probe URL %q", rtm.ContainerName(c.GameID), raw)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return addr, u, nil
}

// verdict is a probe's error from the answer's status or the exchange's error.
func verdict(c rtm.Container, status int, err error) error {
	if err != nil {
		return fmt.Errorf("probing %s: %w", rtm.ContainerName(c.GameID), err)
	}
	if status < 200 || status > 299 {
		return fmt.Errorf("probing %s: status %d: %w", rtm.ContainerName(c.GameID), status, rtm.ErrUnhealthy)
	}
	return nil
}

// get sends GET u to addr and returns the answer's status. A kept connection that fails before
// an answer began (the engine closed it while idle, or restarted) is dropped and the request
// sent once more on a new one: GET /healthz changes nothing, and a kept connection cannot tell
// "closed while idle" from "failed now". A timeout is not retried.
func (p *HTTP) get(ctx context.Context, addr string, u *url.URL) (int, error) {
	if cn := p.take(addr); cn != nil {
		status, err := p.exchange(ctx, cn, addr, u)
		if !retry(ctx, err) {
			return status, err
		}
	}
	return p.dial(ctx, addr, u)
}

// retry reports whether a probe on a kept connection that ended with err is to be sent once more
// on a new connection: it failed before an answer began, and not by a timeout or ctx's end.
func retry(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && !errors.Is(err, os.ErrDeadlineExceeded) && errors.Is(err, errBeforeAnswer)
}

// dial sends GET u to addr on a new connection.
func (p *HTTP) dial(ctx context.Context, addr string, u *url.URL) (int, error) {
	nc, err := p.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	return p.exchange(ctx, &conn{Conn: nc, br: bufio.NewReaderSize(nc, 512)}, addr, u)
}

// errBeforeAnswer marks a failure on a connection before any byte of an answer arrived.
var errBeforeAnswer = errors.New("connection failed before an answer")

// exchange sends the request on cn and reads the answer (read says what becomes of cn).
func (p *HTTP) exchange(ctx context.Context, cn *conn, addr string, u *url.URL) (int, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = cn.SetDeadline(d)
	}
	if err := writeRequest(cn, u); err != nil {
		cn.Close()
		return 0, err
	}
	return p.read(ctx, cn, addr, u)
}

// writeRequest writes GET u on cn.
func writeRequest(cn *conn, u *url.URL) error {
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: rtmanager-probe\r\n\r\n"
	if _, err := io.WriteString(cn, req); err != nil {
		return fmt.Errorf("%w: %w", errBeforeAnswer, err)
	}
	return nil
}

// read reads the answer to the request written on cn, within cn's deadline or until ctx ends;
// cn goes back to the pool when the answer was read whole and the engine keeps the connection,
// and is closed otherwise.
func (p *HTTP) read(ctx context.Context, cn *conn, addr string, u *url.URL) (status int, err error) {
	keep := false
	defer func() {
		if keep {
			p.put(addr, cn)
		} else {
			cn.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { _ = cn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := cn.br.Peek(1); err != nil {
		return 0, fmt.Errorf("%w: %w", errBeforeAnswer, err)
	}
	resp, err := http.ReadResponse(cn.br, &http.Request{Method: http.MethodGet, URL: u})
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody+1))
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	keep = n <= maxBody && !resp.Close && cn.br.Buffered() == 0
	return resp.StatusCode, nil
}

// take returns addr's kept connection, if any, out of the pool.
func (p *HTTP) take(addr string) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cn := p.idle[addr]
	delete(p.idle, addr)
	return cn
}

// put keeps cn as addr's connection, unless one is kept already.
func (p *HTTP) put(addr string, cn *conn) {
	_ = cn.SetDeadline(time.Time{})
	cn.used = time.Now()
	p.mu.Lock()
	if _, ok := p.idle[addr]; !ok {
		p.idle[addr] = cn
		cn = nil
	}
	p.mu.Unlock()
	if cn != nil {
		cn.Close()
	}
}

// CloseIdle closes the kept connections whose last probe ended before t: the engines no one
// probes any more (stopped, moved, or given a new address). The prober calls it after each round.
func (p *HTTP) CloseIdle(before time.Time) int {
	var old []*conn
	p.mu.Lock()
	for addr, cn := range p.idle {
		if cn.used.Before(before) {
			old = append(old, cn)
			delete(p.idle, addr)
		}
	}
	p.mu.Unlock()
	for _, cn := range old {
		cn.Close()
	}
	return len(old)
}

// Close closes every kept connection.
func (p *HTTP) Close() { p.CloseIdle(time.Now().Add(time.Hour)) }
