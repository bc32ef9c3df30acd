package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	rtm "github.com/galaxy-platform/rtmanager"
)

// hangingRegistry accepts connections on loopback and answers nothing until closed: a pull from
// it hangs in the daemon until the test lets it fail.
type hangingRegistry struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func newHangingRegistry(t *testing.T) *hangingRegistry {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &hangingRegistry{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conns = append(r.conns, c)
			r.mu.Unlock()
		}
	}()
	t.Cleanup(r.close)
	return r
}

func (r *hangingRegistry) accepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// close refuses every further connection and drops the open ones.
func (r *hangingRegistry) close() {
	_ = r.ln.Close()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		_ = c.Close()
	}
	r.conns = nil
}

func TestDocker_EnsureImage_concurrentCallsShareOnePull(t *testing.T) {
	reg := newHangingRegistry(t)
	spans := tracetest.NewSpanRecorder()
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)).Tracer("test")
	d := newDocker(t, Options{Tracer: tracer, PullTimeout: 60 * time.Second})
	ref := fmt.Sprintf("%s/rtm-runtime-test/game:9.9.9", reg.ln.Addr())

	const callers = 5
	errs := make(chan error, callers)
	for range callers {
		go func() { errs <- d.EnsureImage(context.Background(), ref) }()
	}
	// Every caller waits on the pull, which the daemon has begun (it reached the registry).
	deadline := time.Now().Add(60 * time.Second)
	for d.pullWaiters.Load() < callers || reg.accepted() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("waiters %d, registry connections %d", d.pullWaiters.Load(), reg.accepted())
		}
		time.Sleep(5 * time.Millisecond) // polling the condition above
	}
	reg.close()
	for range callers {
		err := <-errs
		var rerr *rtm.Error
		if !errors.As(err, &rerr) || rerr.Code != rtm.CodeImagePullFailed {
			t.Errorf("EnsureImage = %v, want code %s", err, rtm.CodeImagePullFailed)
		}
	}
	pulls := 0
	for _, s := range spans.Ended() {
		if s.Name() == "docker.pull" {
			pulls++
		}
	}
	if pulls != 1 {
		t.Errorf("%d pulls for %d concurrent callers, want 1", pulls, callers)
	}
}

func TestDocker_EnsureImage_callerGivesUpAlone(t *testing.T) {
	reg := newHangingRegistry(t)
	d := newDocker(t, Options{PullTimeout: 60 * time.Second})
	ref := fmt.Sprintf("%s/rtm-runtime-test/game:9.9.8", reg.ln.Addr())

	ctx, cancel := context.WithCancel(context.Background())
	quitter := make(chan error, 1)
	go func() { quitter <- d.EnsureImage(ctx, ref) }()
	stayer := make(chan error, 1)
	go func() { stayer <- d.EnsureImage(context.Background(), ref) }()
	deadline := time.Now().Add(60 * time.Second)
	for d.pullWaiters.Load() < 2 || reg.accepted() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("waiters %d, registry connections %d", d.pullWaiters.Load(), reg.accepted())
		}
		time.Sleep(5 * time.Millisecond) // polling the condition above
	}
	cancel()
	if err := <-quitter; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that gave up got %v, want context.Canceled", err)
	}
	select {
	case err := <-stayer:
		t.Fatalf("the other caller's wait ended with the first's: %v", err)
	default:
	}
	reg.close()
	var rerr *rtm.Error
	if err := <-stayer; !errors.As(err, &rerr) || rerr.Code != rtm.CodeImagePullFailed {
		t.Fatalf("EnsureImage = %v, want code %s", err, rtm.CodeImagePullFailed)
	}
}
