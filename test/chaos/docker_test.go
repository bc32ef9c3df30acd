//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

// TestChaos_dockerUnreachable gives RTM the Docker daemon through a test-owned unix-socket proxy
// (RTMANAGER_DOCKER_HOST=unix:///tmp/…/docker.sock) and makes the daemon unreachable for 10s,
// twice: first refused (the socket gone, as when dockerd is stopped), then hung (connections
// accepted and never answered, as a wedged daemon). Meanwhile jobs arrive and, behind RTM's back,
// one engine is killed and another removed. RTM keeps running, /readyz answers 503 naming
// docker, and once the daemon is back RTM converges: the jobs are carried out, the killed engine
// is recorded exited and the removed one removed.
func TestChaos_dockerUnreachable(t *testing.T) {
	r := newRig(t, "docker")
	sock := filepath.Join(suite.work, r.tag+".sock")
	px := newProxy(t, "unix", sock, "unix", "/var/run/docker.sock")
	p := r.startRTM("rtm", map[string]string{"RTMANAGER_DOCKER_HOST": "unix://" + sock})
	ctx := context.Background()
	games := make([]string, 10)
	for i := range games {
		games[i] = r.game(fmt.Sprint(i))
	}
	for _, g := range games[:8] {
		r.sendStart(g, img(v141))
	}
	r.settle(60 * time.Second)

	const outage = 10 * time.Second
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
		restored := false
		restore := func() {
			if !restored {
				restored = true
				if err := px.Restore(); err != nil {
					t.Fatal(err)
				}
			}
		}
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
		var readyz []string
		saw503 := false
		for time.Since(down) < outage {
			code, body := p.readyz()
			readyz = append(readyz, fmt.Sprint(code))
			if code == http.StatusServiceUnavailable && strings.Contains(body, `"message":"docker: `) {
				saw503 = true
			} else if code != http.StatusServiceUnavailable {
				t.Errorf("round %d (%s): /readyz %d %s while docker is unreachable, want 503 naming docker", round, mode, code, body)
			}
			if !p.alive() {
				t.Fatalf("round %d (%s): RTM exited with %d while docker was unreachable", round, mode, p.code)
			}
			time.Sleep(time.Second)
		}
		restore()
		up := time.Now()
		if !saw503 {
			t.Errorf("round %d (%s): /readyz never answered 503 naming docker", round, mode)
		}
		eventually(t, 30*time.Second, "/readyz 200 after docker returned", func() (bool, string) {
			code, body := p.readyz()
			return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
		})
		readyAgain := time.Since(up)
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
		if !p.alive() {
			t.Fatalf("round %d: RTM exited with %d", round, p.code)
		}
		t.Logf("round %d (%s): docker unreachable %s, %d connections dropped; /readyz during it: %s; ready %s and all %d jobs answered and converged %s after it returned",
			round, mode, up.Sub(down).Round(100*time.Millisecond), px.dropped, strings.Join(readyz, " "),
			readyAgain.Round(100*time.Millisecond), c.sent, time.Since(up).Round(100*time.Millisecond))
	}
	r.finish("docker-unreachable", 60*time.Second)
}
