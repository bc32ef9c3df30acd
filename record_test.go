package rtmanager_test

import (
	"maps"
	"slices"
	"testing"

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
