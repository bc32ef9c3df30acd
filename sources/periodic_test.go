package sources_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/sources"
)

type fakeLister []rtm.Container

func (l fakeLister) List(context.Context) ([]rtm.Container, error) { return l, nil }

type fakeActive []string

func (a fakeActive) ActiveGameIDs(context.Context) ([]string, error) { return a, nil }

// TestTicker_Run_triggerRunsAManualPassAtOnce asks a ticker whose period is an hour for a manual
// pass: every game (records and owned containers) is enqueued at once, and the pass is logged at
// info with the number of games.
func TestTicker_Run_triggerRunsAManualPassAtOnce(t *testing.T) {
	var logs testenv.SyncBuffer
	var mu sync.Mutex
	var woke []string
	trigger := make(chan struct{}, 1)
	tk := &sources.Ticker{Interval: time.Hour,
		Docker:  fakeLister{{GameID: "g2", Owned: true}, {GameID: "g1", Owned: true}, {GameID: "other", Owned: false}},
		Store:   fakeActive{"g1", "g3"},
		Enqueue: func(id string) { mu.Lock(); woke = append(woke, id); mu.Unlock() },
		Log:     slog.New(slog.NewTextHandler(&logs, nil)), Trigger: trigger}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = tk.Run(ctx) }()
	trigger <- struct{}{}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "manual reconcile pass") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(woke)
	if !slices.Equal(woke, []string{"g1", "g2", "g3"}) {
		t.Errorf("enqueued %v, want g1 g2 g3", woke)
	}
	if !strings.Contains(logs.String(), `level=INFO msg="manual reconcile pass" worker=reconcile_ticker games=3`) {
		t.Errorf("no info line for the manual pass; logs:\n%s", logs.String())
	}
}
