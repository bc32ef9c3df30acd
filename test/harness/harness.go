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
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
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
