package rtmanager_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
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

func TestEveryRound(t *testing.T) {
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	ctx, cancel := context.WithCancel(context.Background())
	rounds := 0
	rtm.EveryRound(ctx, time.Millisecond, func(context.Context) error {
		rounds++
		switch rounds {
		case 1:
			return errors.New("store down")
		case 2:
			return nil
		}
		cancel()
		return errors.New("interrupted") // ctx has ended: not logged
	}, log, "prober", "probe round failed")
	// Every returned: an ended context ends the rounds (one more may have been due already).
	if rounds < 3 {
		t.Fatalf("%d rounds, want 3: a failed round does not end them", rounds)
	}
	out := logged.String()
	if strings.Count(out, "level=WARN") != 1 || !strings.Contains(out, `msg="probe round failed" worker=prober error="store down"`) {
		t.Fatalf("log = %q, want one warning of the first round's failure", out)
	}
}
