//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// TestChaos_redisRestartedEmpty restarts Redis empty (streams, offsets, leases and publish
// markers gone) twice while RTM works. RTM keeps running, reconnects, resumes from the new
// stream (its offset lies past it) and loses no result that was in the outbox.
//
// Redis losing what it held is the fault, so the boundary is drawn where RTM is accountable: the
// jobs are left in the old stream only until RTM has recorded them in PostgreSQL, and Redis
// writes are paused (CLIENT PAUSE WRITE) before the crash so that the results RTM publishes up
// to the crash are read by the test before they vanish. What RTM committed but had not yet
// published (the outbox backlog at the crash) and what it had not yet answered must all reach the
// new stream, once.
func TestChaos_redisRestartedEmpty(t *testing.T) {
	r, p := rigWithRTM(t, "redis")
	ctx := context.Background()
	games := r.startedGames(8, 6)

	for round := 1; round <= 2; round++ {
		// A burst RTM records before the crash; its reconciles are in flight when Redis dies.
		var burst []string
		for i, g := range games {
			if (i+round)%2 == 0 {
				burst = append(burst, r.sendStop(g))
			} else {
				burst = append(burst, r.sendStart(g, img(v141)))
			}
		}
		burst = append(burst, r.sendStop(r.game("unknown")), r.send(startJobs, "bad/id", "image_ref", img(v141)))
		testenv.Eventually(t, 30*time.Second, "the burst recorded in postgres", func() (bool, string) {
			var n int
			if err := r.pg.QueryRow(ctx, `SELECT count(*) FROM requests WHERE request_id = ANY($1)`, burst).Scan(&n); err != nil {
				return false, err.Error()
			}
			return n == len(burst), fmt.Sprintf("%d of %d recorded", n, len(burst))
		})
		if err := r.rdb.Do(ctx, "CLIENT", "PAUSE", "30000", "WRITE").Err(); err != nil {
			t.Fatalf("CLIENT PAUSE: %v", err)
		}
		time.Sleep(500 * time.Millisecond) // reconciles holding a lease go on and commit; others wait
		var pending, backlog int
		if err := r.pg.QueryRow(ctx, `SELECT (SELECT count(*) FROM requests WHERE answered_at IS NULL),
			(SELECT count(*) FROM outbox WHERE published_at IS NULL)`).Scan(&pending, &backlog); err != nil {
			t.Fatal(err)
		}
		r.results.drain(t)
		before := r.counts()
		crash := time.Now()
		r.redis.Kill() // as a crash would
		r.redis.Restart()
		r.results.start("0-0")
		p.requireAlive(t, fmt.Sprintf("round %d, Redis gone", round))

		// New jobs go to the new, empty stream.
		for i, g := range games {
			if (i+round)%3 == 0 {
				r.sendStart(g, img(v141))
			}
		}
		r.sendStop(games[round])
		c := r.settle(90 * time.Second)
		p.requireAlive(t, fmt.Sprintf("round %d", round))
		var off string
		testenv.Eventually(t, 10*time.Second, "the consumers' offsets saved in the new Redis", func() (bool, string) {
			var err error
			off, err = r.rdb.Get(ctx, "rtmanager:stream_offsets:stopjobs").Result()
			return err == nil && off != "", fmt.Sprint(err)
		})
		t.Logf("round %d: at the crash %d requests unanswered and %d outbox rows unpublished, %d of %d results read; "+
			"after it all %d jobs answered and converged in %s (stopjobs offset now %s)",
			round, pending, backlog, before.answered, before.sent, c.sent, time.Since(crash).Round(100*time.Millisecond), off)
		if pending+backlog == 0 {
			t.Logf("round %d: nothing was in flight at the crash; the round only shows the reconnect", round)
		}
	}
	r.finish("redis-restarted-empty", 60*time.Second)
}

// TestChaos_redisCutOff cuts one of two RTM processes off from Redis while it is in the middle of
// work on a game, for 6s, 12s and 20s in turn: A reaches Redis through a test-owned TCP proxy that
// is paused (connections stay open, no byte flows either way, new connections wait), B reaches it
// directly and keeps working. The lease TTL is 10s: longer than the 5s an instance key lives, so
// a cut-off holder's lease outlives its instance key, and shorter than the longest cut, so the
// lease itself expires during it.
//
// In each round A is patching a game to the sick 1.4.3 (its verification waits on the failing
// probe for the whole 8s verify timeout) when the cut begins; a stop job for that game follows at
// once and jobs for four other games keep arriving all through the cut. B may take the game only
// once A can no longer act on it: a process cut off from Redis stops acting before another can
// take its lease. The Docker ledger shows it: A's patch is one burst of work on the game (its
// calls may pause for up to the verify timeout), and no call of B may fall inside it. Afterwards
// every job is answered exactly once and every record equals Docker.
func TestChaos_redisCutOff(t *testing.T) {
	r := newRig(t, "rcut")
	r.env["RTMANAGER_GAME_LEASE_TTL"] = "10s"
	r.env["RTMANAGER_PROBE_FAILURE_THRESHOLD"] = "30" // verification waits the whole verify timeout
	r.env["RTMANAGER_REST_WAIT_TIMEOUT"] = "60s"
	const verify = 8 * time.Second // the rig's RTMANAGER_PATCH_VERIFY_TIMEOUT
	rp := newProxy(t, "tcp", "127.0.0.1:0", "tcp", r.redis.Addr())
	a := r.startRTM("rtm-a", map[string]string{"RTMANAGER_REDIS_MASTER_ADDR": rp.addr})
	b := r.startRTM("rtm-b", nil)
	cuts := []time.Duration{6 * time.Second, 12 * time.Second, 20 * time.Second}
	patched := make([]string, len(cuts))
	for i := range cuts {
		patched[i] = r.game(fmt.Sprintf("p%d", i+1))
		r.longBurst(patched[i], verify+2*time.Second)
		r.sendStart(patched[i], img(v141))
	}
	others := []string{r.game("o1"), r.game("o2"), r.game("o3"), r.game("o4")}
	for _, o := range others {
		r.sendStart(o, img(v141))
	}
	r.settle(90 * time.Second)

	for round, cut := range cuts {
		round++
		g := patched[round-1]
		createsBefore := len(r.watch.createdImages(g))
		type answer struct {
			code int
			body string
		}
		answered := make(chan answer, 1)
		t0 := time.Now()
		go func() {
			code, body, _ := a.call("POST", "/runtimes/"+g+"/patch", `{"image_ref":"`+img(v143)+`"}`)
			answered <- answer{code, body}
		}()
		// A is verifying once the 1.4.3 container runs.
		testenv.Eventually(t, 60*time.Second, "the 1.4.3 container created and started", func() (bool, string) {
			c := r.watch.createdImages(g)
			return len(c) > createsBefore && c[len(c)-1] == img(v143) && r.watch.startedLatest(g), fmt.Sprint(c)
		})
		byA := false
		for _, c := range r.ledger.callsOf(a.name, g) {
			byA = byA || (c.op == "create" && c.start.After(t0))
		}
		rp.Pause()
		cutAt := time.Now()
		stopID := r.sendStop(g)
		for i := 0; time.Since(cutAt) < cut; i++ {
			o := others[i%len(others)]
			if i%2 == 0 {
				r.sendStop(o)
			} else {
				r.sendStart(o, img(v141))
			}
			time.Sleep(500 * time.Millisecond) // the pace of Lobby's jobs, not a wait for anything
		}
		if err := rp.Restore(); err != nil {
			t.Fatal(err)
		}
		healed := time.Now()
		var ans answer
		select {
		case ans = <-answered:
		case <-time.After(120 * time.Second):
			t.Fatalf("round %d: the patch sent to rtm-a was not answered within 120s", round)
		}
		if ans.code == 0 || ans.code >= 500 {
			t.Errorf("round %d: the patch was answered %d %s", round, ans.code, ans.body)
		}
		c := r.settle(120 * time.Second)
		if !a.Alive() || !b.Alive() {
			t.Fatalf("round %d: a process exited (rtm-a alive %v, rtm-b alive %v)", round, a.Alive(), b.Alive())
		}
		stop := r.results.byRequest()[stopID]
		var calls []string
		for _, dc := range r.ledger.callsOf("", g) {
			if dc.start.After(t0) {
				calls = append(calls, fmt.Sprintf("%s %s %+.1fs", dc.proc, dc.op, dc.start.Sub(cutAt).Seconds()))
			}
		}
		if !byA {
			t.Logf("round %d: rtm-b, not rtm-a, began the patch; the cut shows less than it should", round)
		}
		t.Logf("round %d: rtm-a cut off from redis for %s, %s into the patch; patch answered %d; stop job answered %v; "+
			"docker mutations on %s (seconds from the cut): %s; all %d jobs answered and converged %s after the cut ended",
			round, healed.Sub(cutAt).Round(100*time.Millisecond), cutAt.Sub(t0).Round(100*time.Millisecond), ans.code,
			resultSummary(stop), g, strings.Join(calls, ", "), c.sent, time.Since(healed).Round(100*time.Millisecond))
	}
	r.finish("redis-cut-off", 90*time.Second)
}

// resultSummary is "outcome code" of a job's results.
func resultSummary(results []map[string]string) string {
	var out []string
	for _, res := range results {
		out = append(out, strings.TrimSpace(res["outcome"]+" "+res["error_code"]))
	}
	return "[" + strings.Join(out, "; ") + "]"
}
