//go:build chaos

package chaos

import (
	"testing"
	"time"
)

// TestDockerLedger_interleavings checks the arithmetic of the interleaving check on hand-made
// call histories: it needs neither Docker nor the suite.
func TestDockerLedger_interleavings(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	call := func(proc, op, game string, from, to int) dockerCall {
		return dockerCall{proc: proc, op: op, ref: "galaxy-game-" + game, start: at(from), end: at(to)}
	}
	leased := func(c dockerCall, holds int8) dockerCall { c.holds = holds; return c }
	tests := []struct {
		name  string
		given []dockerCall
		gap   time.Duration
		want  int
	}{
		{"one process", []dockerCall{call("a", "create", "p-1", 0, 50), call("a", "start", "p-1", 60, 200)}, time.Second, 0},
		{"handover after a pause", []dockerCall{
			call("a", "stop", "p-1", 0, 100), call("b", "start", "p-1", 2000, 2100), call("a", "stop", "p-1", 4000, 4100)}, time.Second, 0},
		{"other games do not count", []dockerCall{
			call("a", "create", "p-1", 0, 50), call("b", "create", "p-2", 10, 60), call("a", "start", "p-1", 70, 100)}, time.Second, 0},
		{"games of other tests do not count", []dockerCall{
			call("a", "create", "q-1", 0, 50), call("b", "create", "q-1", 10, 60), call("a", "start", "q-1", 70, 100)}, time.Second, 0},
		{"a stop inside another's patch", []dockerCall{
			call("a", "create", "p-1", 0, 50), call("a", "start", "p-1", 60, 200),
			call("b", "stop", "p-1", 5000, 5300),
			call("a", "remove", "p-1", 5400, 5450), call("a", "create", "p-1", 5460, 5500), call("a", "start", "p-1", 5510, 5600)},
			10 * time.Second, 1},
		{"the same history with a short gap is two bursts", []dockerCall{
			call("a", "create", "p-1", 0, 50), call("a", "start", "p-1", 60, 200),
			call("b", "stop", "p-1", 5000, 5300),
			call("a", "remove", "p-1", 5400, 5450)},
			time.Second, 0},
		{"a clean hand-over of the lease and back", []dockerCall{
			leased(call("a", "start", "p-1", 0, 100), 1), leased(call("b", "stop", "p-1", 150, 400), 1),
			leased(call("a", "start", "p-1", 700, 900), 1)}, time.Second, 0},
		{"the burst goes on without the lease", []dockerCall{
			leased(call("a", "start", "p-1", 0, 100), 1), leased(call("b", "stop", "p-1", 150, 400), 1),
			leased(call("a", "start", "p-1", 700, 900), -1)}, time.Second, 1},
		{"the other process acts without the lease", []dockerCall{
			leased(call("a", "start", "p-1", 0, 100), 1), leased(call("b", "stop", "p-1", 150, 400), -1),
			leased(call("a", "start", "p-1", 700, 900), 1)}, time.Second, 1},
		{"in flight together although both held the lease", []dockerCall{
			leased(call("a", "stop", "p-1", 0, 3000), 1), leased(call("b", "remove", "p-1", 1000, 1100), 1)}, time.Second, 2},
		{"calls in flight at once, each inside the other", []dockerCall{call("a", "stop", "p-1", 0, 3000), call("b", "remove", "p-1", 1000, 1100)}, time.Second, 2},
		{"each foreign call counted once", []dockerCall{
			call("a", "create", "p-1", 0, 50), call("b", "stop", "p-1", 100, 150), call("b", "remove", "p-1", 160, 170),
			call("a", "start", "p-1", 300, 400)}, time.Second, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newDockerLedger("p-", nil)
			for _, c := range tt.given {
				l.add(c)
			}
			got, n := l.interleavings(func(string) time.Duration { return tt.gap })
			if len(got) != tt.want || n != len(tt.given) {
				t.Errorf("got %d interleaved of %d calls, want %d: %q", len(got), n, tt.want, got)
			}
		})
	}
}
