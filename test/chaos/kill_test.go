//go:build chaos

package chaos

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestChaos_sigkillMidBurst kills RTM with SIGKILL in the middle of a burst of 50 start and stop
// jobs, five times in a row, over the same ten games, and starts it again each time. The jobs
// sent while it is down wait in the stream; entries it handled after its last saved offset are
// read again. Some jobs are also delivered twice on purpose. After every round each job has
// exactly one result and every record equals what Docker shows.
func TestChaos_sigkillMidBurst(t *testing.T) {
	r := newRig(t, "kill")
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	games := r.games(10)
	p := r.startRTM("rtm-1", nil)
	const rounds, burst = 5, 50
	for round := 1; round <= rounds; round++ {
		killAt := 15 + rng.IntN(20)
		t0 := time.Now()
		var killedAfter time.Duration
		for i := 0; i < burst; i++ {
			g := games[rng.IntN(len(games))]
			var id string
			if rng.IntN(10) < 6 {
				id = r.sendStart(g, img(v141))
			} else {
				id = r.sendStop(g)
			}
			if rng.IntN(10) == 0 {
				r.redeliver(id) // a producer retrying: the same request id again
			}
			if i == killAt {
				p.Kill()
				killedAfter = time.Since(t0)
			}
			time.Sleep(time.Duration(20+rng.IntN(40)) * time.Millisecond)
		}
		t1 := time.Now()
		p = r.startRTM(fmt.Sprintf("rtm-%d", round+1), nil)
		ready := time.Since(t1)
		c := r.settle(90 * time.Second)
		t.Logf("round %d: SIGKILL after job %d (%s into the burst); restarted ready in %s; all %d jobs answered and converged %s after the burst",
			round, killAt+1, killedAfter.Round(time.Millisecond), ready.Round(time.Millisecond), c.sent, time.Since(t1).Round(100*time.Millisecond))
	}
	r.finish("sigkill-mid-burst", 60*time.Second)
}
