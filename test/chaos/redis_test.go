//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"testing"
	"time"
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
	r := newRig(t, "redis")
	p := r.startRTM("rtm", nil)
	ctx := context.Background()
	games := make([]string, 8)
	for i := range games {
		games[i] = r.game(fmt.Sprint(i))
	}
	for _, g := range games[:6] {
		r.sendStart(g, img(v141))
	}
	r.settle(60 * time.Second)

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
		eventually(t, 30*time.Second, "the burst recorded in postgres", func() (bool, string) {
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
		r.redis.RestartEmpty()
		r.results.start("0-0")
		if !p.alive() {
			t.Fatalf("round %d: RTM exited with %d when Redis went away", round, p.code)
		}

		// New jobs go to the new, empty stream.
		for i, g := range games {
			if (i+round)%3 == 0 {
				r.sendStart(g, img(v141))
			}
		}
		r.sendStop(games[round])
		c := r.settle(90 * time.Second)
		if !p.alive() {
			t.Fatalf("round %d: RTM exited with %d", round, p.code)
		}
		var off string
		eventually(t, 10*time.Second, "the consumers' offsets saved in the new Redis", func() (bool, string) {
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
