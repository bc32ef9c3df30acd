package coord_test

import (
	"context"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"

	"github.com/galaxy-platform/rtmanager/coord"
)

// TestCoord_Publish_trimsStreamsToTheRetention publishes far more entries than the retention:
// the stream keeps about that many (MAXLEN ~ trims whole nodes), the newest among them; without
// a retention it keeps them all.
func TestCoord_Publish_trimsStreamsToTheRetention(t *testing.T) {
	tests := []struct {
		name     string
		maxLen   int64
		min, max int64
	}{
		{name: "retention 200", maxLen: 200, min: 200, max: 400},
		{name: "no retention", maxLen: 0, min: 1000, max: 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := client(t)
			ctx := context.Background()
			co := coord.New(rdb, "a", 2*time.Second, coord.WithStreamMaxLen(tt.maxLen))
			var entries []rtm.OutboxEntry
			for i := int64(1); i <= 1000; i++ {
				entries = append(entries, rtm.OutboxEntry{ID: i, Stream: "results", Fields: []string{"n", "x"}})
			}
			for i := 0; i < len(entries); i += 100 {
				if _, err := co.Publish(ctx, "e1", entries[i:i+100], time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			if n := rdb.XLen(ctx, "results").Val(); n < tt.min || n > tt.max {
				t.Errorf("stream length %d, want %d to %d", n, tt.min, tt.max)
			}
			sent, err := co.OutboxSent(ctx, "e1", 1000)
			if err != nil || !sent {
				t.Errorf("OutboxSent(e1, 1000) = %v %v, want true", sent, err)
			}
			if sent, err := co.OutboxSent(ctx, "e2", 1000); err != nil || sent {
				t.Errorf("OutboxSent(e2, 1000) = %v %v, want false: another epoch", sent, err)
			}
		})
	}
}
