//go:build chaos

package chaos

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// TestChaos_postgresStopped stops PostgreSQL for 10s while jobs arrive, twice. RTM keeps running,
// /readyz answers 503 naming postgres meanwhile, and once PostgreSQL is back every job is
// handled, exactly once, and /readyz is 200 again. (It stops the harness's shared cluster: the
// chaos tests run one after another.)
func TestChaos_postgresStopped(t *testing.T) {
	r, p := rigWithRTM(t, "pg")
	games := r.startedGames(8, 5)

	const outageFor = 10 * time.Second
	for round := 1; round <= 2; round++ {
		if err := suite.env.StopPostgres(); err != nil {
			t.Fatal(err)
		}
		down := time.Now()
		restart := once(func() {
			if err := suite.env.StartPostgres(); err != nil {
				t.Fatalf("starting postgres again: %v", err)
			}
		})
		defer restart() // never leave the shared cluster down for the next test

		// Jobs arrive all through the outage: stops of running games, starts of new and stopped
		// ones, a start and a stop of the same game, a stop of a game RTM never heard of.
		o := &outage{t: t, p: p, dep: "postgres", what: fmt.Sprintf("round %d", round)}
		plan := []func(){
			func() { r.sendStop(games[(round*2)%5]) },
			func() { r.sendStart(games[5+round%3], img(v141)) },
			func() { r.sendStart(games[(round*2+1)%5], img(v141)) },
			func() { r.sendStop(r.game("never-started")) },
			func() { g := games[(round*2+3)%5]; r.sendStop(g); r.sendStart(g, img(v141)) },
			func() { r.sendStart(games[7], img(v141)) },
		}
		step := outageFor / time.Duration(len(plan)+1)
		for _, send := range plan {
			send()
			o.poll()
			time.Sleep(step)
		}
		time.Sleep(time.Until(down.Add(outageFor)))
		restart()
		up := time.Now()
		readyAgain := o.over()
		c := r.settle(90 * time.Second)
		p.requireAlive(t, o.what)
		t.Logf("%s: postgres down %s; /readyz during it: %s; ready %s after it returned; all %d jobs answered and converged %s after",
			o.what, up.Sub(down).Round(100*time.Millisecond), strings.Join(o.codes, " "), readyAgain.Round(100*time.Millisecond),
			c.sent, time.Since(up).Round(100*time.Millisecond))
	}
	r.finish("postgres-stopped-10s", 60*time.Second)
}

// TestChaos_postgresBlackholed black-holes PostgreSQL for 8s while jobs arrive: RTM reaches it
// through a test-owned TCP proxy that, from the moment of the fault, drops every byte of every
// connection open then or opened during it, without ever closing one (a database that hangs
// instead of refusing: a dead peer behind a firewall that drops packets). Afterwards new
// connections get through, but the black-holed ones stay dead until RTM gives up on them: only
// a deadline on its PostgreSQL calls frees them. RTM keeps running, /readyz answers (503 naming
// postgres) within its own timeout during the hole, and once the hole is over every job is
// answered exactly once and every record equals Docker.
func TestChaos_postgresBlackholed(t *testing.T) {
	r := newRig(t, "pghole")
	u, err := url.Parse(r.dsn)
	if err != nil {
		t.Fatalf("the rig's DSN: %v", err)
	}
	pp := newProxy(t, "tcp", "127.0.0.1:0", "tcp", u.Host)
	u.Host = pp.addr
	p := r.startRTM("rtm", map[string]string{"RTMANAGER_POSTGRES_PRIMARY_DSN": u.String()})
	games := r.startedGames(7, 5)

	const hole = 8 * time.Second
	pp.Blackhole()
	down := time.Now()
	restore := restorer(t, pp)
	defer restore()
	plan := []func(){
		func() { r.sendStop(games[0]) },
		func() { r.sendStart(games[5], img(v141)) },
		func() { r.sendStart(games[1], img(v141)) }, // already running
		func() { r.sendStop(r.game("never-started")) },
		func() { r.sendStop(games[2]); r.sendStart(games[2], img(v141)) },
		func() { r.sendStart(games[6], img(v141)) },
	}
	// /readyz is asked all through the hole, apart from the jobs, so that a slow answer cannot
	// stretch the hole.
	type sample struct {
		at, took time.Duration // since the hole began; how long the answer took
		code     int
		body     string
	}
	var samples []sample
	holeOver := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			at := time.Since(down)
			code, body := p.readyz()
			samples = append(samples, sample{at: at, took: time.Since(down) - at, code: code, body: body})
			select {
			case <-holeOver:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	stopSampling := sync.OnceFunc(func() { close(holeOver); <-sampled })
	defer stopSampling() // also when the test stops early: the sampler ends before the test does
	step := hole / time.Duration(len(plan)+1)
	for i, send := range plan {
		send()
		p.requireAlive(t, "postgres black-holed")
		time.Sleep(time.Until(down.Add(step * time.Duration(i+1)))) // the pace of the jobs
	}
	time.Sleep(time.Until(down.Add(hole)))
	holesAtEnd := pp.holes()
	restore()
	up := time.Now()
	stopSampling()
	var readyz []string
	saw503 := false
	for _, sm := range samples {
		readyz = append(readyz, fmt.Sprintf("%d(%s)", sm.code, sm.took.Round(100*time.Millisecond)))
		if sm.at+sm.took > up.Sub(down) {
			continue // answered after the hole
		}
		switch {
		case sm.code == 0:
			t.Errorf("/readyz asked %s into the black hole did not answer within 5s (%s): its postgres check has no deadline", sm.at.Round(100*time.Millisecond), sm.body)
		case sm.code == http.StatusServiceUnavailable && strings.Contains(sm.body, `"message":"postgres: `):
			saw503 = true
		case sm.at > 3*time.Second: // the first answers may still be the last good check
			t.Errorf("/readyz %d %s %s into the black hole, want 503 naming postgres", sm.code, sm.body, sm.at.Round(100*time.Millisecond))
		}
	}
	if !saw503 {
		t.Errorf("/readyz never answered 503 naming postgres during the black hole: %s", strings.Join(readyz, " "))
	}
	testenv.Eventually(t, 60*time.Second, "every job answered after the black hole ended", func() (bool, string) {
		c := r.counts()
		return c.lost == 0, fmt.Sprintf("%d of %d jobs without a result; %d of the %d connections RTM had opened before or during the "+
			"black hole are still open (a PostgreSQL call without a deadline waits on them for ever); %s",
			c.lost, c.sent, pp.holes(), holesAtEnd, r.pgSummary())
	})
	p.waitReadyz(t, "the black hole ended")
	c := r.settle(90 * time.Second)
	p.requireAlive(t, "after the black hole")
	t.Logf("postgres black-holed for %s with %d connections caught in it; /readyz during it (status and time to answer): %s; all %d jobs answered and converged %s after it ended; %d black-holed connections still open",
		up.Sub(down).Round(100*time.Millisecond), holesAtEnd, strings.Join(readyz, " "), c.sent, time.Since(up).Round(100*time.Millisecond), pp.holes())
	r.finish("postgres-blackholed-8s", 60*time.Second)
}
