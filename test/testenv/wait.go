package testenv

import (
	"testing"
	"time"
)

// Eventually polls cond every 100 ms until it holds or timeout passes, then fails the test with
// what and the last message cond gave.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %s: %s", what, timeout, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitFor polls cond every 5 ms until it holds, and fails the test when it still does not after
// 20 s: for the unit and integration tests, whose conditions hold within milliseconds.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting until %s", what)
		}
		<-tick.C
	}
}
