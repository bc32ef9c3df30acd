package main

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// shutdownMargin is how much longer than RTMANAGER_SHUTDOWN_TIMEOUT stopping may take: the closes
// (telemetry flush, PostgreSQL pool, Redis and Docker clients) get at least this long even when
// the listener and the workers spent the whole budget. docs/runbook.md quotes it.
const shutdownMargin = 2 * time.Second

// shutdown is serve's one stop budget. It starts when begin is first called (at "shutting
// down", or when a start-up step failed) and bounds, in order, the listener's drain, the workers
// and the closes registered with onClose; the closes get at least shutdownMargin. What still
// runs when its bound passes is left behind, and the process exits anyway: stopping takes at
// most the budget plus the margin, whatever hangs (a black-holed database, a worker that ignores
// cancellation).
type shutdown struct {
	timeout time.Duration
	ctx     context.Context
	cancel  context.CancelFunc
	closes  []func(context.Context)
}

func newShutdown(timeout time.Duration) *shutdown { return &shutdown{timeout: timeout} }

// begin starts the budget, once, and returns the context that ends with it.
func (s *shutdown) begin() context.Context {
	if s.ctx == nil {
		s.ctx, s.cancel = context.WithTimeout(context.Background(), s.timeout)
	}
	return s.ctx
}

// onClose registers fn to run when serve returns, like a defer (newest first), within the
// budget; fn's context ends when the budget (or the margin) does.
func (s *shutdown) onClose(fn func(context.Context)) { s.closes = append(s.closes, fn) }

// drain stops the listener, waiting for its requests in flight, then cancels the workers and
// waits for them, both within the budget. It logs the runbook's lines: "internal http listener
// stopped" (after a warning when requests were cut off) and "workers stopped", or a warning when
// some worker was still running when the budget ran out.
func (s *shutdown) drain(srv *http.Server, stopWorkers context.CancelFunc, workers *sync.WaitGroup, log *slog.Logger) {
	ctx := s.begin()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("internal http listener did not drain in time", "error", err)
		_ = srv.Close()
	}
	log.Info("internal http listener stopped")
	stopWorkers()
	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	select {
	case <-done:
		log.Info("workers stopped")
	case <-ctx.Done():
		log.Warn("workers did not stop within the shutdown timeout")
	}
}

// close runs the registered closes, newest first, and returns when they are done or when the
// budget has passed and at least shutdownMargin has since close began, whichever comes first;
// closes still running then are abandoned with a warning.
func (s *shutdown) close(log *slog.Logger) {
	budget := s.begin()
	defer s.cancel()
	deadline, _ := budget.Deadline()
	ctx, cancel := context.WithDeadline(context.Background(), later(deadline, time.Now().Add(shutdownMargin)))
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := len(s.closes) - 1; i >= 0; i-- {
			s.closes[i](ctx)
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		log.Warn("connections not closed within the shutdown timeout; exiting without them")
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
