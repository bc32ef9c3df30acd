package rtmanager_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

func TestForgetStopped(t *testing.T) {
	state := map[string]int{"g1": 1, "g2": 2, "g3": 3}
	rtm.ForgetStopped(state, []rtm.RunningGame{{GameID: "g1"}, {GameID: "g3"}, {GameID: "g4"}})
	if got := slices.Sorted(maps.Keys(state)); !slices.Equal(got, []string{"g1", "g3"}) {
		t.Fatalf("kept %v, want the running games g1 and g3 (and nothing added)", got)
	}
	rtm.ForgetStopped(state, nil)
	if len(state) != 0 {
		t.Fatalf("kept %v with no game running", state)
	}
}

func TestEveryRunningRound(t *testing.T) {
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	ctx, cancel := context.WithCancel(context.Background())
	lists := 0
	list := func(context.Context) ([]rtm.RunningGame, error) {
		lists++
		if lists == 1 {
			return nil, errors.New("store down")
		}
		return []rtm.RunningGame{{GameID: fmt.Sprint("g", lists)}}, nil
	}
	var got []string
	rtm.EveryRunningRound(ctx, time.Millisecond, list, func(_ context.Context, games []rtm.RunningGame) error {
		for _, g := range games {
			got = append(got, g.GameID)
		}
		if len(got) == 2 {
			cancel()
		}
		return nil
	}, log, "inspector", "inspect sweep failed")
	if !slices.Equal(got, []string{"g2", "g3"}) {
		t.Fatalf("rounds ran over %v, want g2 and g3: none over the failed list, each over its own", got)
	}
	if out := logged.String(); strings.Count(out, "level=WARN") != 1 ||
		!strings.Contains(out, `msg="inspect sweep failed" worker=inspector error="store down"`) {
		t.Fatalf("log = %q, want one warning of the failed list", out)
	}
}
