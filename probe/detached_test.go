//go:build unix

package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// TestHTTP_keptConnectionIsDetachedAndServesLaterProbes checks that a connection kept between
// probes is out of Go's poller and that the next probes use it, including one whose answer
// arrives only after the read has begun to wait.
func TestHTTP_keptConnectionIsDetachedAndServesLaterProbes(t *testing.T) {
	slow := make(chan time.Duration, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		select {
		case d := <-slow:
			time.Sleep(d)
		default:
		}
	}))
	defer srv.Close()
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	p := New(n, true, 5*time.Second)
	defer p.Close()
	c := rtm.Container{GameID: "g", IP: host}
	if err := p.Probe(context.Background(), c, ""); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(host, port)
	p.mu.Lock()
	cn := p.idle[addr]
	p.mu.Unlock()
	if cn == nil || cn.attached() != nil || cn.fd < 0 {
		t.Fatalf("kept connection %+v: want one detached from the poller", cn)
	}
	slow <- 150 * time.Millisecond // the read waits in poll for this one
	s, ok := p.Send(c, "")
	if !ok {
		t.Fatal("Send found no kept connection")
	}
	if err := s.Wait(context.Background()); err != nil {
		t.Fatalf("a late answer on a detached connection: %v", err)
	}
	if err := p.Probe(context.Background(), c, ""); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	again := p.idle[addr]
	p.mu.Unlock()
	if again != cn {
		t.Fatal("the later probes did not keep using the detached connection")
	}
}
