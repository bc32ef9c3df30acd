package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/galaxy-platform/rtmanager/test/testenv"
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

func TestRun_blackHoledPostgresFailsStartUpWithinTheConnectTimeout(t *testing.T) {
	const connect = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // kills a hung child
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRunMain+"=1",
		// No sslmode: the TLS attempt and the plain one share the connect timeout.
		"RTMANAGER_POSTGRES_PRIMARY_DSN=postgres://rtmanagerservice:pw@"+testenv.BlackHole(t)+"/galaxy?search_path=rtmanager",
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
	stop.close(slog.New(slog.DiscardHandler))
	if time.Since(start) > time.Second || len(order) != 3 || order[0] != 2 || order[2] != 0 {
		t.Fatalf("closes ran in order %v, close took %s", order, time.Since(start))
	}
}

func TestStepOf(t *testing.T) {
	if got := stepOf(step("docker ping", io.EOF)); got != "docker ping" {
		t.Fatalf("stepOf = %q", got)
	}
	if step("x", nil) != nil {
		t.Fatal("step of nil must be nil")
	}
}

// TestControllerLogHandler_cancelledReconcileIsNoError logs controller-runtime's lines as its logr
// logger does: a reconcile cut off by the shutdown's cancellation is no ERROR line (it is
// kept at debug), while a real reconcile error still is one.
func TestControllerLogHandler_cancelledReconcileIsNoError(t *testing.T) {
	var buf bytes.Buffer
	log := logr.FromSlogHandler(controllerLogHandler{slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})})
	log.Error(fmt.Errorf("reconciling game-1: %w", context.Canceled), "Reconciler error", "controller", "game")
	log.Error(errors.New("docker unavailable"), "Reconciler error", "controller", "game")
	var errs []string
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		if line["level"] == "ERROR" {
			errs = append(errs, fmt.Sprint(line["err"]))
		}
	}
	if len(errs) != 1 || errs[0] != "docker unavailable" {
		t.Errorf("ERROR lines carry %q, want only the docker one", errs)
	}

	buf.Reset()
	debug := logr.FromSlogHandler(controllerLogHandler{slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})})
	debug.Error(context.Canceled, "Reconciler error")
	if !strings.Contains(buf.String(), `"level":"DEBUG"`) {
		t.Errorf("at debug level the cancelled reconcile is kept at debug; got %s", buf.String())
	}
}

// TestManualPasses_sighupTriggersAPassAndDoesNotKill sends this process a SIGHUP, caught as serve
// catches it: the process lives on and the reconcile ticker is asked for one pass.
func TestManualPasses_sighupTriggersAPassAndDoesNotKill(t *testing.T) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	passes := manualPasses(ctx, hup)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-passes:
	case <-time.After(10 * time.Second):
		t.Fatal("no manual pass asked for within 10s of SIGHUP")
	}
}

// runChild runs the command in a child process with exactly env (and the switch that makes the
// test binary run it) and returns its exit code and stderr.
func runChild(t *testing.T, env ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // kills a hung child
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append([]string{envRunMain + "=1"}, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running rtmanager: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

func TestRun_unknownVariable(t *testing.T) {
	valid := []string{"RTMANAGER_GAME_STATE_ROOT=" + t.TempDir(),
		"RTMANAGER_POSTGRES_PRIMARY_DSN=postgres://u:p@127.0.0.1:1/galaxy?search_path=rtmanager",
		"RTMANAGER_REDIS_MASTER_ADDR=127.0.0.1:1", "RTMANAGER_LOG_FORMAT=text"}
	// Each case exits 2 (exitConfig), warning about one unknown variable with the known name
	// closest to it and naming the variable of the configuration error.
	tests := []struct {
		name             string
		given            []string
		unknown, closest string
		invalid          string
	}{
		{"a warning by default, in the chosen format, beside the configuration error",
			[]string{"RTMANAGER_PROBE_TIMOUT=1s", "RTMANAGER_PROBE_TIMEOUT=banana"},
			"RTMANAGER_PROBE_TIMOUT", "RTMANAGER_PROBE_TIMEOUT", "RTMANAGER_PROBE_TIMEOUT"},
		{"strict: exit 2 before anything is opened",
			[]string{"RTMANAGER_STRICT_ENV=true", "RTMANAGER_REDIS_MASTR_ADDR=redis:6379"},
			"RTMANAGER_REDIS_MASTR_ADDR", "RTMANAGER_REDIS_MASTER_ADDR", "RTMANAGER_REDIS_MASTR_ADDR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stderr := runChild(t, append(slices.Clone(valid), tt.given...)...)
			if code != exitConfig {
				t.Errorf("exit code %d, want %d\n%s", code, exitConfig, stderr)
			}
			for _, w := range []string{ // lines (text format) stderr must hold
				`level=WARN msg="unknown configuration variable" variable=` + tt.unknown + " closest=" + tt.closest,
				`level=ERROR msg="invalid configuration" variable=` + tt.invalid,
			} {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr has no %s\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "{") {
				t.Errorf("a JSON line with RTMANAGER_LOG_FORMAT=text:\n%s", stderr)
			}
		})
	}
}

// TestRedisLogger_goesThroughSlog: go-redis's own lines come out as slog lines of the chosen
// format.
func TestRedisLogger_goesThroughSlog(t *testing.T) {
	var buf bytes.Buffer
	redisLogger{slog.New(slog.NewTextHandler(&buf, nil))}.Printf(context.Background(), "redis: connection pool: %s", "failed to dial")
	if want := `level=WARN msg="redis client" detail="redis: connection pool: failed to dial"`; !strings.Contains(buf.String(), want) {
		t.Errorf("got %q, want a line with %s", buf.String(), want)
	}
}
