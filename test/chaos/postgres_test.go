//go:build chaos

package chaos

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestChaos_postgresStopped stops PostgreSQL for 10s while jobs arrive, twice. RTM keeps running,
// /readyz answers 503 naming postgres meanwhile, and once PostgreSQL is back every job is
// handled, exactly once, and /readyz is 200 again. (It stops the harness's shared cluster: the
// chaos tests run one after another.)
func TestChaos_postgresStopped(t *testing.T) {
	r := newRig(t, "pg")
	p := r.startRTM("rtm", nil)
	games := make([]string, 8)
	for i := range games {
		games[i] = r.game(fmt.Sprint(i))
	}
	for _, g := range games[:5] {
		r.sendStart(g, img(v141))
	}
	r.settle(60 * time.Second)

	const outage = 10 * time.Second
	for round := 1; round <= 2; round++ {
		if err := suite.env.StopPostgres(); err != nil {
			t.Fatal(err)
		}
		down := time.Now()
		restarted := false
		restart := func() {
			if !restarted {
				restarted = true
				if err := suite.env.StartPostgres(); err != nil {
					t.Fatalf("starting postgres again: %v", err)
				}
			}
		}
		defer restart() // never leave the shared cluster down for the next test

		// Jobs arrive all through the outage: stops of running games, starts of new and stopped
		// ones, a start and a stop of the same game, a stop of a game RTM never heard of.
		var readyz []string
		var saw503 bool
		plan := []func(){
			func() { r.sendStop(games[(round*2)%5]) },
			func() { r.sendStart(games[5+round%3], img(v141)) },
			func() { r.sendStart(games[(round*2+1)%5], img(v141)) },
			func() { r.sendStop(r.game("never-started")) },
			func() { g := games[(round*2+3)%5]; r.sendStop(g); r.sendStart(g, img(v141)) },
			func() { r.sendStart(games[7], img(v141)) },
		}
		step := outage / time.Duration(len(plan)+1)
		for _, send := range plan {
			send()
			code, body := p.readyz()
			readyz = append(readyz, fmt.Sprint(code))
			if code == http.StatusServiceUnavailable && strings.Contains(body, `"message":"postgres: `) {
				saw503 = true
			} else if code != http.StatusServiceUnavailable {
				t.Errorf("round %d: /readyz %d %s while postgres is down, want 503 naming postgres", round, code, body)
			}
			if !p.alive() {
				t.Fatalf("round %d: RTM exited with %d while postgres was down", round, p.code)
			}
			time.Sleep(step)
		}
		time.Sleep(time.Until(down.Add(outage)))
		restart()
		up := time.Now()
		if !saw503 {
			t.Errorf("round %d: /readyz never answered 503 naming postgres during the outage", round)
		}
		eventually(t, 30*time.Second, "/readyz 200 after postgres returned", func() (bool, string) {
			code, body := p.readyz()
			return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
		})
		readyAgain := time.Since(up)
		c := r.settle(90 * time.Second)
		if !p.alive() {
			t.Fatalf("round %d: RTM exited with %d", round, p.code)
		}
		t.Logf("round %d: postgres down %s; /readyz during it: %s; ready %s after it returned; all %d jobs answered and converged %s after",
			round, up.Sub(down).Round(100*time.Millisecond), strings.Join(readyz, " "), readyAgain.Round(100*time.Millisecond),
			c.sent, time.Since(up).Round(100*time.Millisecond))
	}
	r.finish("postgres-stopped-10s", 60*time.Second)
}
