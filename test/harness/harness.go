// Package harness is what the benchmark (test/bench) and the soak (test/soak) share: the world
// they start (PostgreSQL and Redis from test/testenv, the engine images, the rtmanager binary, a
// Docker network and a state root), the runner of RTM processes that reads their logs, /proc and
// internal listener, the reader of RTM's output streams, and the helpers of their reports.
//
// Both are programs, not tests: every helper returns an error or logs a progress line with Logf
// instead of failing a test.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Logf writes a progress line, prefixed with the time of day, to stderr.
func Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// SleepCtx sleeps d or until ctx ends.
func SleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// SignalContext returns a context that ends at the first SIGINT or SIGTERM, so that the program
// cleans up; a second one kills the program at once. stop releases the signal handling.
func SignalContext() (ctx context.Context, stop context.CancelFunc) {
	ctx, stop = signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

// HTTPGet returns the body of a GET of url, or an error for any status but 200.
func HTTPGet(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return string(b), nil
}

// Workers starts n goroutines that call work for each item of jobs until it is closed, and
// returns a wait that returns once they all have.
func Workers[T any](n int, jobs <-chan T, work func(T)) (wait func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				work(j)
			}
		}()
	}
	return wg.Wait
}

// Finish ends a run whose measuring returned err: it logs an interruption or a failure (what
// names the run), or else closes the world with closeWorld and returns how long that took.
// ok is false when the run failed.
func Finish(err error, what string, closeWorld func()) (cleanup time.Duration, ok bool) {
	if err != nil {
		if errors.Is(err, context.Canceled) {
			Logf("interrupted")
		} else {
			Logf("%s failed: %v", what, err)
		}
		return 0, false
	}
	start := time.Now()
	closeWorld()
	return time.Since(start), true
}

// Go runs fn in a goroutine with a context of its own; stop ends that context and waits for fn
// to return.
func Go(ctx context.Context, fn func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// Counts parses a flag's comma-separated list of positive whole numbers (numbers of games or
// engines).
func Counts(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// EnvList parses a flag's K=V,K=V list of environment settings.
func EnvList(list string) map[string]string {
	env := map[string]string{}
	for _, kv := range strings.Split(list, ",") {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env
}
