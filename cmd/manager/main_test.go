package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// envRunMain makes the test binary run the command itself (run, then exit with its code)
// instead of the tests: the tests start it as a child process, as an operator starts rtmanager.
const envRunMain = "RTM_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunMain) == "1" {
		os.Exit(run())
	}
	os.Exit(m.Run())
}

// slack is what a loaded test machine may add to a bound.
const slack = 3 * time.Second

// blackHole listens on loopback, accepts connections and never answers (packets dropped, not
// refused). The test's cleanup closes it and what it accepted.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
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
	t.Cleanup(func() {
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

func TestRun_blackHoledPostgresFailsStartUpWithinTheConnectTimeout(t *testing.T) {
	const connect = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // kills a hung child
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRunMain+"=1",
		// No sslmode: the TLS attempt and the plain one share the connect timeout.
		"RTMANAGER_POSTGRES_PRIMARY_DSN=postgres://rtmanagerservice:pw@"+blackHole(t)+"/galaxy?search_path=rtmanager",
		"RTMANAGER_POSTGRES_CONNECT_TIMEOUT="+connect.String(),
		"RTMANAGER_GAME_STATE_ROOT="+t.TempDir(),
		"RTMANAGER_REDIS_MASTER_ADDR=127.0.0.1:1",
		"RTMANAGER_LOG_FORMAT=json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitStart {
		t.Fatalf("rtmanager with postgres black-holed: %v after %s, want exit code %d\n%s", err, took, exitStart, stderr.String())
	}
	if took > connect+slack {
		t.Errorf("rtmanager with postgres black-holed exited after %s; the connect timeout is %s", took, connect)
	}
	var failed map[string]any
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == "start-up failed" {
			failed = line
		}
	}
	if failed == nil || failed["step"] != "postgres migrations" || !strings.Contains(failed["error"].(string), "postgres unavailable") {
		t.Errorf("no line start-up failed naming step postgres migrations and postgres unavailable; got %v", failed)
	}
}

// TestShutdown_drainAndClose_stayWithinTheBudgetWhateverHangs stops a listener with a request
// that never ends, a worker that ignores cancellation and a close that blocks (a black-holed
// database): drain and close together take the budget plus at most shutdownMargin, not a budget
// per phase nor forever.
func TestShutdown_drainAndClose_stayWithinTheBudgetWhateverHangs(t *testing.T) {
	const budget = time.Second
	release := make(chan struct{}) // ends everything that hangs, once measured
	var bg sync.WaitGroup
	defer bg.Wait()
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()

	inFlight := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		close(inFlight)
		<-release
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bg.Add(2)
	go func() { defer bg.Done(); _ = srv.Serve(ln) }()
	go func() {
		defer bg.Done()
		if resp, err := http.Get("http://" + ln.Addr().String()); err == nil {
			resp.Body.Close()
		}
	}()
	<-inFlight

	var workers sync.WaitGroup
	workers.Add(1)
	go func() { defer workers.Done(); <-release }() // ignores cancellation
	bg.Add(1)
	go func() { defer bg.Done(); workers.Wait() }()

	stop := newShutdown(budget)
	var flushRan, flushed atomic.Bool
	bg.Add(1)
	stop.onClose(func(context.Context) { defer bg.Done(); <-release }) // st.Close on a black-holed database
	stop.onClose(func(ctx context.Context) {                           // a telemetry flush honouring its context
		flushRan.Store(true)
		<-ctx.Done()
		flushed.Store(true)
	})
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	done := make(chan time.Duration, 1)
	bg.Add(1)
	go func() {
		defer bg.Done()
		start := time.Now()
		stop.drain(srv, func() {}, &workers, log)
		stop.close(log)
		done <- time.Since(start)
	}()
	var took time.Duration
	select {
	case took = <-done:
	case <-time.After(budget + shutdownMargin + 30*time.Second):
		unblock()
		t.Fatalf("shutdown with things that hang did not return within %s", budget+shutdownMargin+30*time.Second)
	}
	unblock()
	bg.Wait()
	if took < budget || took > budget+shutdownMargin+slack {
		t.Errorf("shutdown took %s; want between the budget %s and the budget plus the %s margin", took, budget, shutdownMargin)
	}
	if !flushRan.Load() || !flushed.Load() {
		t.Errorf("the newest close (the flush) ran %v and saw its deadline %v", flushRan.Load(), flushed.Load())
	}
	for _, want := range []string{"internal http listener stopped", "workers did not stop within the shutdown timeout",
		"connections not closed within the shutdown timeout"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

// TestShutdown_close_runsNewestFirstAndReturnsWhenDone checks the ordinary path: the closes run
// newest first and close returns as soon as they are done.
func TestShutdown_close_runsNewestFirstAndReturnsWhenDone(t *testing.T) {
	stop := newShutdown(time.Minute)
	var order []int
	for i := range 3 {
		stop.onClose(func(context.Context) { order = append(order, i) })
	}
	start := time.Now()
	stop.close(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if time.Since(start) > time.Second || len(order) != 3 || order[0] != 2 || order[2] != 0 {
		t.Fatalf("closes ran in order %v, close took %s", order, time.Since(start))
	}
}

func TestLobbyDiagnostic_getsTheGameAndNeverFails(t *testing.T) {
	var hits atomic.Int32
	var path atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		path.Store(r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	}))
	defer srv.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if lobbyDiagnostic("", log) != nil {
		t.Fatal("an empty base URL must turn the diagnostic off")
	}
	lobbyDiagnostic(srv.URL, log)(context.Background(), "g1")
	if hits.Load() != 1 || path.Load() != "/api/v1/internal/games/g1" {
		t.Fatalf("hits %d path %v", hits.Load(), path.Load())
	}
	// An unreachable Lobby is only logged.
	lobbyDiagnostic("http://127.0.0.1:1", log)(context.Background(), "g1")
}

func TestStepOf(t *testing.T) {
	if got := stepOf(step("docker ping", io.EOF)); got != "docker ping" {
		t.Fatalf("stepOf = %q", got)
	}
	if step("x", nil) != nil {
		t.Fatal("step of nil must be nil")
	}
}
