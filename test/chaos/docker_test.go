//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// TestChaos_dockerUnreachable cuts RTM's path to the Docker daemon (every RTM of the suite reaches
// it through its own test-owned unix-socket proxy, RTMANAGER_DOCKER_HOST=unix:///tmp/…sock) and makes the daemon unreachable for 10s,
// twice: first refused (the socket gone, as when dockerd is stopped), then hung (connections
// accepted and never answered, as a wedged daemon). Meanwhile jobs arrive and, behind RTM's back,
// one engine is killed and another removed. RTM keeps running, /readyz answers 503 naming
// docker, and once the daemon is back RTM converges: the jobs are carried out, the killed engine
// is recorded exited and the removed one removed.
func TestChaos_dockerUnreachable(t *testing.T) {
	r, p := rigWithRTM(t, "docker")
	px := p.docker
	ctx := context.Background()
	games := r.startedGames(10, 8)

	const outageFor = 10 * time.Second
	for round, mode := range []proxyMode{proxyRefuse, proxyHang} {
		round++
		base := (round - 1) * 4 // each round works on its own four running games
		stopped, killed, removed, started := games[base], games[base+1], games[base+2], games[8+round-1]
		if mode == proxyRefuse {
			px.Cut()
		} else {
			px.Hang()
		}
		down := time.Now()
		restore := restorer(t, px)
		defer restore()

		r.sendStop(stopped)
		r.sendStart(started, img(v141))
		r.sendStart(games[base+3], img(v141)) // already running: answered at once
		r.sendStop(r.game("never-started"))
		// Behind RTM's back, through the real socket: it cannot see these events.
		if err := suite.docker.ContainerKill(ctx, "galaxy-game-"+killed, "SIGKILL"); err != nil {
			t.Fatalf("docker kill: %v", err)
		}
		if err := suite.docker.ContainerRemove(ctx, "galaxy-game-"+removed, container.RemoveOptions{Force: true}); err != nil {
			t.Fatalf("docker rm -f: %v", err)
		}
		o := &outage{t: t, p: p, dep: "docker", what: fmt.Sprintf("round %d (%s)", round, mode)}
		for time.Since(down) < outageFor {
			o.poll()
			time.Sleep(time.Second)
		}
		restore()
		up := time.Now()
		readyAgain := o.over()
		c := r.settle(90 * time.Second)
		recs, err := r.records(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{stopped: "stopped", killed: "exited", removed: "removed", started: "running"}
		for g, status := range want {
			if recs[g].status != status {
				t.Errorf("round %d (%s): %s is %s, want %s", round, mode, g, recs[g].status, status)
			}
		}
		p.requireAlive(t, o.what)
		t.Logf("%s: docker unreachable %s, %d connections dropped; /readyz during it: %s; ready %s and all %d jobs answered and converged %s after it returned",
			o.what, up.Sub(down).Round(100*time.Millisecond), px.dropped, strings.Join(o.codes, " "),
			readyAgain.Round(100*time.Millisecond), c.sent, time.Since(up).Round(100*time.Millisecond))
	}
	r.finish("docker-unreachable", 60*time.Second)
}

// smallRetryBudget is the retry budget per request (count and time) for tests whose Docker errors
// never clear: a few attempts within seconds, so that the answer comes long before the test's
// own deadline (RTM gives up once both are spent: config.Config RetryAttempts and RetryWindow).
func smallRetryBudget() map[string]string {
	return map[string]string{"RTMANAGER_RETRY_ATTEMPTS": "4", "RTMANAGER_RETRY_WINDOW": "5s"}
}

// TestChaos_dockerRefusesStop makes the Docker daemon refuse, for good, to stop one engine: RTM's
// Docker proxy answers every POST /containers/{id}/stop of that game's container with 500 and a
// message of its own, as a daemon with a wedged container does. A stop job for the game must
// still get its answer within RTM's retry budget (set small here): failed, with an error code and
// the daemon's words in the message, and the record says failed. Jobs for other games are handled
// meanwhile, RTM stops calling Docker about the game once it has answered, and when the daemon
// can stop it again a later stop job for the game is carried out.
func TestChaos_dockerRefusesStop(t *testing.T) {
	r := newRig(t, "nostop")
	for k, v := range smallRetryBudget() {
		r.env[k] = v
	}
	p := r.startRTM("rtm", nil)
	wedged := r.game("wedged")
	others := []string{r.game("o1"), r.game("o2"), r.game("o3")}
	for _, g := range append([]string{wedged}, others...) {
		r.sendStart(g, img(v141))
	}
	r.settle(60 * time.Second)

	const daemonSays = "cannot stop container: chaos proxy says the container is wedged"
	r.ledger.RefuseStop(wedged, daemonSays)
	t0 := time.Now()
	stopID := r.sendStop(wedged)
	r.sendStop(others[0])
	r.sendStart(others[1], img(v141)) // already running: answered at once
	testenv.Eventually(t, 90*time.Second, "the refused stop answered", func() (bool, string) {
		if len(r.results.byRequest()[stopID]) > 0 {
			return true, ""
		}
		return false, fmt.Sprintf("no answer to the stop of %s after %s although Docker refused all of its %d stops: "+
			"a Docker error that never clears must end in a failed answer within the retry budget; %s",
			wedged, time.Since(t0).Round(time.Second), r.ledger.refused("stop", wedged), r.pgSummary())
	})
	answeredAfter := time.Since(t0)
	res := r.results.byRequest()[stopID][0]
	if res["outcome"] != "failed" || res["error_code"] == "" || !strings.Contains(res["error_message"], "container is wedged") {
		t.Errorf("the stop Docker refused was answered outcome=%q error_code=%q error_message=%q; want failed, a code, and the daemon's words (%q)",
			res["outcome"], res["error_code"], res["error_message"], daemonSays)
	}
	var status, code, msg string
	if err := r.pg.QueryRow(context.Background(), `SELECT status, last_error_code, last_error_message FROM runtime_records WHERE game_id = $1`,
		wedged).Scan(&status, &code, &msg); err != nil {
		t.Fatal(err)
	}
	if status != "failed" || code == "" {
		t.Errorf("the record of %s is %s (last error %q %q) after its stop failed, want failed with the code", wedged, status, code, msg)
	}
	// Answered means given up: the refusals stop growing. (A pause to give a wrong retry the
	// chance to show, not a wait for anything.)
	refused := r.ledger.refused("stop", wedged)
	time.Sleep(3 * time.Second)
	if more := r.ledger.refused("stop", wedged) - refused; more > 0 {
		t.Errorf("RTM tried to stop %s %d more times after answering its stop failed", wedged, more)
	}
	t.Logf("docker refused %d stops of %s; the stop was answered %s %s after %s: %q; record %s %s",
		refused, wedged, res["outcome"], res["error_code"], answeredAfter.Round(100*time.Millisecond), res["error_message"], status, code)
	r.waitAnswered(60 * time.Second)

	// The daemon can stop it again: the next request for the game acts.
	r.ledger.RefuseStop(wedged, "")
	again := r.sendStop(wedged)
	r.waitAnswered(60 * time.Second)
	if res := r.results.byRequest()[again][0]; res["outcome"] != "succeeded" {
		t.Errorf("the stop sent once Docker could stop %s again was answered %v, want succeeded", wedged, res)
	}
	r.settle(60 * time.Second)
	recs, err := r.records(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if recs[wedged].status != "stopped" {
		t.Errorf("%s is %s after the second stop, want stopped", wedged, recs[wedged].status)
	}
	p.requireAlive(t, "at the end")
	r.finish("docker-refuses-stop", 60*time.Second)
}
