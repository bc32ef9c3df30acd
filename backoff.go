package rtmanager

import (
	"context"
	"log/slog"
	"time"
)

// Backoff is the wait between retries of a worker's failing call (a stream read, a relist, an
// events subscription): 100 ms, doubling to 5 s. The zero value is ready; Reset starts over.
type Backoff struct{ d time.Duration }

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	if b.d == 0 {
		b.d = 100 * time.Millisecond
	} else {
		b.d = min(2*b.d, 5*time.Second)
	}
	return b.d
}

// Reset makes the next wait the first again.
func (b *Backoff) Reset() { b.d = 0 }

// Sleep waits d or until ctx ends; it reports whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Every calls tick each interval, the first time one interval after it is called, until ctx ends
// or tick returns false: the loop of a lease's watch and renewal, and of EveryRound.
func Every(ctx context.Context, interval time.Duration, tick func() bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// Both cases can be ready at once and select picks either: a tick after ctx ended
			// would run a round its caller has already called off.
			if ctx.Err() != nil || !tick() {
				return
			}
		}
	}
}

// EveryRound runs round each interval as Every does, until ctx ends: the loop of the workers that
// work in rounds (the inspector, the prober). A failed round is logged as a warning msg with the
// worker's name, unless ctx has ended; the next round comes on time all the same.
func EveryRound(ctx context.Context, interval time.Duration, round func(context.Context) error, log *slog.Logger, worker, msg string) {
	Every(ctx, interval, func() bool {
		if err := round(ctx); err != nil && ctx.Err() == nil {
			log.Warn(msg, "worker", worker, "error", err)
		}
		return true
	})
}
