package rtmanager_test

import (
	"context"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

func TestEvery(t *testing.T) {
	t.Run("first tick one interval after the start; stops when tick says so", func(t *testing.T) {
		const interval = 20 * time.Millisecond
		start := time.Now()
		var at []time.Duration
		rtm.Every(context.Background(), interval, func() bool {
			at = append(at, time.Since(start))
			return len(at) < 3
		})
		if len(at) != 3 {
			t.Fatalf("tick ran %d times, want 3 (it returned false on the third)", len(at))
		}
		if at[0] < interval {
			t.Fatalf("first tick after %v, want not before the interval %v", at[0], interval)
		}
	})
	t.Run("returns when the context ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		rtm.Every(ctx, time.Millisecond, func() bool {
			cancel()
			return true // Every returns all the same
		})
	})
	t.Run("an ended context runs no tick", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		rtm.Every(ctx, time.Hour, func() bool {
			t.Error("tick ran under an ended context")
			return false
		})
	})
}
