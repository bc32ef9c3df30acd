package probe_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/probe"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// engine is a stand-in engine: an HTTP server on loopback that counts the connections and the
// requests it gets.
type engine struct {
	srv  *httptest.Server
	port int

	mu       sync.Mutex
	conns    int // connections opened
	closed   int // connections closed
	requests int
	cond     *sync.Cond
}

func newEngine(t *testing.T, h http.HandlerFunc) *engine {
	t.Helper()
	e := &engine{}
	e.cond = sync.NewCond(&e.mu)
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.requests++
		e.mu.Unlock()
		h(w, r)
	}))
	e.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		e.mu.Lock()
		defer e.mu.Unlock()
		switch s {
		case http.StateNew:
			e.conns++
		case http.StateClosed, http.StateHijacked:
			e.closed++
		}
		e.cond.Broadcast()
	}
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	_, port, _ := net.SplitHostPort(e.srv.Listener.Addr().String())
	e.port, _ = strconv.Atoi(port)
	return e
}

func (e *engine) counts() (conns, closed, requests int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.conns, e.closed, e.requests
}

// waitClosed waits until the engine has seen n connections closed.
func (e *engine) waitClosed(t *testing.T, n int) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		e.mu.Lock()
		for e.closed < n {
			e.cond.Wait()
		}
		e.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		e.mu.Lock()
		e.closed = n // releases the waiter
		e.cond.Broadcast()
		e.mu.Unlock()
		<-done
		t.Fatalf("the engine did not see %d connections closed", n)
	}
}

func ok(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }

var local = rtm.Container{GameID: "g1", IP: "127.0.0.1"}

func TestHTTP_Probe_keepsOneConnectionPerEngine(t *testing.T) {
	e := newEngine(t, ok)
	p := probe.New(e.port, true, 5*time.Second)
	defer p.Close()
	for i := range 5 {
		if err := p.Probe(context.Background(), local, ""); err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
	}
	if conns, _, requests := e.counts(); conns != 1 || requests != 5 {
		t.Fatalf("5 probes opened %d connections and sent %d requests, want 1 and 5", conns, requests)
	}
}

func TestHTTP_Probe_answersNot2xxAreUnhealthy(t *testing.T) {
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusFound, http.StatusNotFound} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
				if status == http.StatusFound {
					http.Redirect(w, r, "/elsewhere", status)
					return
				}
				w.WriteHeader(status)
			})
			p := probe.New(e.port, true, 5*time.Second)
			defer p.Close()
			err := p.Probe(context.Background(), local, "")
			if !errors.Is(err, rtm.ErrUnhealthy) || !strings.Contains(err.Error(), "status "+strconv.Itoa(status)) {
				t.Fatalf("Probe = %v, want ErrUnhealthy with status %d", err, status)
			}
			if _, _, requests := e.counts(); requests != 1 {
				t.Fatalf("the engine got %d requests, want 1 (a redirect is not followed)", requests)
			}
		})
	}
}

func TestHTTP_Probe_anEngineThatClosedTheIdleConnectionIsProbedOnANewOne(t *testing.T) {
	e := newEngine(t, ok)
	p := probe.New(e.port, true, 5*time.Second)
	defer p.Close()
	if err := p.Probe(context.Background(), local, ""); err != nil {
		t.Fatal(err)
	}
	e.srv.CloseClientConnections() // as an engine restarting, or timing out idle connections, does
	e.waitClosed(t, 1)
	if err := p.Probe(context.Background(), local, ""); err != nil {
		t.Fatalf("probe after the engine closed the kept connection: %v", err)
	}
	if conns, _, requests := e.counts(); conns != 2 || requests != 2 {
		t.Fatalf("connections %d, requests %d, want 2 and 2", conns, requests)
	}
}

func TestHTTP_Probe_aHangingEngineTimesOutOnceAndItsConnectionIsDropped(t *testing.T) {
	release := make(chan struct{})
	hang := true
	var mu sync.Mutex
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		h := hang
		mu.Unlock()
		if h {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		ok(w, r)
	})
	defer close(release)
	p := probe.New(e.port, true, 300*time.Millisecond)
	defer p.Close()
	err := p.Probe(context.Background(), local, "")
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("Probe of a hanging engine = %v, want a timeout", err)
	}
	if _, _, requests := e.counts(); requests != 1 {
		t.Fatalf("the engine got %d requests, want 1 (a timeout is not retried)", requests)
	}
	mu.Lock()
	hang = false
	mu.Unlock()
	if err := p.Probe(context.Background(), local, ""); err != nil {
		t.Fatal(err)
	}
	if conns, _, _ := e.counts(); conns != 2 {
		t.Fatalf("connections %d, want 2: the timed-out one is not used again", conns)
	}
}

func TestHTTP_Probe_endsWithItsContext(t *testing.T) {
	entered := make(chan struct{}, 1)
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	})
	p := probe.New(e.port, true, time.Minute)
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Probe(ctx, local, "") }()
	<-entered
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("Probe with a cancelled context = nil")
	}
	e.waitClosed(t, 1)
}

func TestHTTP_Probe_aLongAnswerIsReadInPartAndItsConnectionDropped(t *testing.T) {
	e := newEngine(t, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("x", 200<<10)))
	})
	p := probe.New(e.port, true, 5*time.Second)
	defer p.Close()
	for range 2 {
		if err := p.Probe(context.Background(), local, ""); err != nil {
			t.Fatal(err)
		}
	}
	if conns, _, _ := e.counts(); conns != 2 {
		t.Fatalf("connections %d, want 2: a connection with an unread body is not kept", conns)
	}
}

func TestHTTP_Probe_anEngineThatClosesAfterAnsweringIsNotKept(t *testing.T) {
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		ok(w, r)
	})
	p := probe.New(e.port, true, 5*time.Second)
	defer p.Close()
	for range 3 {
		if err := p.Probe(context.Background(), local, ""); err != nil {
			t.Fatal(err)
		}
	}
	if conns, _, requests := e.counts(); conns != 3 || requests != 3 {
		t.Fatalf("connections %d, requests %d, want 3 and 3", conns, requests)
	}
}

func TestHTTP_Probe_byEndpoint(t *testing.T) {
	var path, host string
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		path, host = r.URL.Path, r.Host
		ok(w, r)
	})
	p := probe.New(8080, false, 5*time.Second)
	defer p.Close()
	endpoint := "http://localhost:" + strconv.Itoa(e.port) + "/"
	if err := p.Probe(context.Background(), rtm.Container{GameID: "g1", IP: "10.0.0.9"}, endpoint); err != nil {
		t.Fatal(err)
	}
	if want := "localhost:" + strconv.Itoa(e.port); path != "/healthz" || host != want {
		t.Fatalf("probed %s on host %q, want /healthz on %q", path, host, want)
	}
	if err := p.Probe(context.Background(), local, "ftp://elsewhere"); err == nil {
		t.Fatal("Probe of a non-HTTP endpoint = nil")
	}
}

func TestHTTP_CloseIdle_closesTheConnectionsNotUsedSince(t *testing.T) {
	e := newEngine(t, ok)
	p := probe.New(e.port, true, 5*time.Second)
	defer p.Close()
	if err := p.Probe(context.Background(), local, ""); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Hour)
	if n := p.CloseIdle(before); n != 0 {
		t.Fatalf("CloseIdle(an hour ago) closed %d, want 0", n)
	}
	if n := p.CloseIdle(time.Now().Add(time.Second)); n != 1 {
		t.Fatalf("CloseIdle(now) closed %d, want 1", n)
	}
	e.waitClosed(t, 1)
}

func TestHTTP_Send_needsAKeptConnection(t *testing.T) {
	e := newEngine(t, ok)
	p := probe.New(e.port, true, 5*time.Second)
	defer p.Close()
	if _, sent := p.Send(local, ""); sent {
		t.Fatal("Send wrote without a kept connection, want false (Probe dials)")
	}
	if err := p.Probe(context.Background(), local, ""); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s, sent := p.Send(local, "")
		if !sent {
			t.Fatalf("send %d: not sent on the kept connection", i)
		}
		if err := s.Wait(context.Background()); err != nil {
			t.Fatalf("wait %d: %v", i, err)
		}
	}
	if conns, _, requests := e.counts(); conns != 1 || requests != 4 {
		t.Fatalf("a probe and 3 sends opened %d connections and sent %d requests, want 1 and 4", conns, requests)
	}
}

// The answers of a round are read after all its requests are written, Concurrency at a time: an
// answer that arrived in time counts although its read began after its deadline, behind a
// hanging engine's.
func TestHTTP_Wait_anAnswerInTimeCountsWhenReadLate(t *testing.T) {
	release := make(chan struct{})
	hanging := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	healthy := newEngine(t, ok)
	const timeout = 300 * time.Millisecond
	hp, op := probe.New(hanging.port, true, timeout), probe.New(healthy.port, true, timeout)
	defer hp.Close()
	defer op.Close()
	s := sendOnKept(t, op)
	testenv.WaitFor(t, "the healthy engine has answered", func() bool { _, _, n := healthy.counts(); return n == 2 })
	begun := time.Now()
	if err := hp.Probe(context.Background(), local, ""); err == nil { // the read ahead of it hangs
		t.Fatal("the hanging engine answered")
	}
	if time.Since(begun) < timeout {
		t.Fatalf("the hanging engine's probe ended after %s, before its timeout", time.Since(begun))
	}
	if err := s.Wait(context.Background()); err != nil {
		t.Fatalf("the answer that arrived in time, read %s after the send: %v", timeout, err)
	}
}

func TestHTTP_Wait_aConnectionTheEngineClosedIsProbedOnANewOne(t *testing.T) {
	e := newEngine(t, ok)
	p := probe.New(e.port, true, 5*time.Second)
	defer p.Close()
	if err := p.Probe(context.Background(), local, ""); err != nil {
		t.Fatal(err)
	}
	e.srv.CloseClientConnections()
	e.waitClosed(t, 1)
	s, sent := p.Send(local, "") // a write on a connection closed by its peer succeeds
	if sent {
		if err := s.Wait(context.Background()); err != nil {
			t.Fatalf("wait after the engine closed the kept connection: %v", err)
		}
	} else if err := p.Probe(context.Background(), local, ""); err != nil {
		t.Fatal(err)
	}
	if conns, _, requests := e.counts(); conns != 2 || requests != 2 {
		t.Fatalf("connections %d, requests %d, want 2 and 2", conns, requests)
	}
}

func TestHTTP_Wait_endsWithItsContext(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var mu sync.Mutex
	first := true
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		f := first
		first = false
		mu.Unlock()
		if f {
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	p := probe.New(e.port, true, time.Minute)
	defer p.Close()
	s := sendOnKept(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	testenv.WaitFor(t, "the request has arrived", func() bool { _, _, n := e.counts(); return n == 2 })
	cancel()
	if err := s.Wait(ctx); err == nil {
		t.Fatal("Wait answered nil for a cancelled probe of a hanging engine")
	}
}

func TestHTTP_Ready_saysWhetherTheAnswerHasArrived(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	hang := false
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		h := hang
		mu.Unlock()
		if h {
			<-release
		}
	})
	p := probe.New(e.port, true, 5*time.Second)
	defer p.Close()
	s := sendOnKept(t, p)
	testenv.WaitFor(t, "the answer is ready", s.Ready)
	if err := s.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	hang = true
	mu.Unlock()
	s, sent := p.Send(local, "")
	if !sent {
		t.Fatal("not sent on the kept connection")
	}
	testenv.WaitFor(t, "the request has arrived", func() bool { _, _, n := e.counts(); return n == 3 })
	if s.Ready() {
		t.Fatal("Ready while the engine has not answered")
	}
	close(release)
	if err := s.Wait(context.Background()); err != nil {
		t.Fatalf("the answer after Ready said not yet: %v", err)
	}
}

// sendOnKept probes local's engine once through p, which keeps the connection, and sends the
// next probe's request on it.
func sendOnKept(t *testing.T, p *probe.HTTP) *probe.Sent {
	t.Helper()
	if err := p.Probe(context.Background(), local, ""); err != nil {
		t.Fatal(err)
	}
	s, sent := p.Send(local, "")
	if !sent {
		t.Fatal("not sent on the kept connection")
	}
	return s
}
