//go:build chaos

package chaos

import (
	"encoding/json"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// TestChaos_leaseExpiresMidPatch lets a game's lease expire in the middle of a slow operation. Two
// RTM processes share everything (RTMANAGER_GAME_LEASE_TTL=2s); A patches a game to the sick
// 1.4.3, whose verification waits on the engine's failing probe for up to 8s, and while A
// verifies it loses the lease: in round 1 A is cut off from Redis for 9.5s (A reaches Redis
// through a test-owned TCP proxy; B directly), in round 2 A is frozen (SIGSTOP) for 9.5s, longer
// than A's own verification would take. B is meanwhile triggered by the patch's Docker events
// and keeps trying the game.
//
// Whatever happens, the game must be handled as one operation: B must not act on the game
// until A's operation is over or safely abandoned, there is never a second container, the patch
// creates exactly two containers (1.4.3, then 1.4.1 on rollback), and the patch is answered
// patch_rolled_back with 1.4.1 running again: a sick engine is never reported patched.
func TestChaos_leaseExpiresMidPatch(t *testing.T) {
	r := newRig(t, "lease")
	r.env["RTMANAGER_GAME_LEASE_TTL"] = "2s"
	// Verification rolls back early after this many unhealthy answers in a row; make it wait on
	// the sick engine for the whole RTMANAGER_PATCH_VERIFY_TIMEOUT (8s) instead: the slow case.
	r.env["RTMANAGER_PROBE_FAILURE_THRESHOLD"] = "30"
	// The patch's answer waits for the rollback B may have to finish: under load that takes longer
	// than the rig's 20s, and a 202 would say nothing about the outcome.
	r.env["RTMANAGER_REST_WAIT_TIMEOUT"] = "60s"
	rp := newProxy(t, "tcp", "127.0.0.1:0", "tcp", r.redis.Addr())
	a := r.startRTM("rtm-a", map[string]string{"RTMANAGER_REDIS_MASTER_ADDR": rp.addr})
	b := r.startRTM("rtm-b", nil)
	patchedGames := []string{r.game("p1"), r.game("p2")} // one per round: a failed round leaves its game behind
	others := []string{r.game("o1"), r.game("o2"), r.game("o3")}
	for _, g := range patchedGames {
		r.sendStart(g, img(v141))
		// One patch and its rollback, paused by the 8s verification, is one burst of work.
		r.longBurst(g, 10*time.Second)
	}
	for _, o := range others {
		r.sendStart(o, img(v141))
	}
	r.settle(60 * time.Second)

	const faultFor = 9500 * time.Millisecond
	for round, fault := range []string{"A cut off from Redis", "A frozen (SIGSTOP)"} {
		round++
		g := patchedGames[round-1]
		createsBefore := len(r.watch.createdImages(g))
		type answer struct {
			code      int
			body, id  string
			answeredT time.Time
		}
		patched := make(chan answer, 1)
		t0 := time.Now()
		go func() {
			code, body, id := a.call("POST", "/runtimes/"+g+"/patch", `{"image_ref":"`+img(v143)+`"}`)
			patched <- answer{code, body, id, time.Now()}
		}()
		// A is verifying once the 1.4.3 container runs.
		testenv.Eventually(t, 60*time.Second, "the 1.4.3 container created and started", func() (bool, string) {
			c := r.watch.createdImages(g)
			return len(c) > createsBefore && c[len(c)-1] == img(v143) && r.watch.startedLatest(g), fmt.Sprint(c)
		})
		faultAt := time.Since(t0)
		switch round {
		case 1:
			rp.Cut()
		case 2:
			_ = a.Cmd.Process.Signal(syscall.SIGSTOP)
		}
		// The fault outlasts A's own verification deadline (8s): an A that did not notice it lost
		// the lease would roll back on its own while B handles the game. Jobs keep coming for the
		// other games meanwhile; B handles them while A cannot.
		for i := 0; time.Since(t0) < faultAt+faultFor; i++ {
			o := others[i%len(others)]
			if i%2 == 0 {
				r.sendStop(o)
			} else {
				r.sendStart(o, img(v141))
			}
			time.Sleep(time.Second)
		}
		switch round {
		case 1:
			if err := rp.Restore(); err != nil {
				t.Fatal(err)
			}
		case 2:
			_ = a.Cmd.Process.Signal(syscall.SIGCONT)
		}
		healedAt := time.Since(t0)
		var ans answer
		select {
		case ans = <-patched:
		case <-time.After(120 * time.Second):
			t.Fatalf("round %d: the patch was not answered within 120s", round)
		}
		r.settle(120 * time.Second)
		if !a.Alive() || !b.Alive() {
			t.Fatalf("round %d: a process exited (A alive %v, B alive %v)", round, a.Alive(), b.Alive())
		}

		creates := r.watch.createdImages(g)[createsBefore:]
		r.logOperations(g)
		recs, err := r.records(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		rec := recs[g]
		var env struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.Unmarshal([]byte(ans.body), &env)
		t.Logf("round %d (%s from %s to %s after the patch began): patch answered %d %s after %s; containers created %v; record %s %s; "+
			"rtm-a logged %d resumed and %d rolled-back patches, rtm-b %d and %d",
			round, fault, faultAt.Round(100*time.Millisecond), healedAt.Round(100*time.Millisecond), ans.code, env.Error.Code,
			ans.answeredT.Sub(t0).Round(100*time.Millisecond), creates, rec.status, rec.currentImage,
			len(a.logLines("resuming an interrupted patch", g)), len(a.logLines("patch rolled back", g)),
			len(b.logLines("resuming an interrupted patch", g)), len(b.logLines("patch rolled back", g)))
		if ans.code != http.StatusConflict || env.Error.Code != "patch_rolled_back" {
			t.Errorf("round %d: the patch to the sick %s was answered %d %s, want 409 patch_rolled_back", round, v143, ans.code, ans.body)
		}
		if rec.status != "running" || rec.currentImage != img(v141) {
			t.Errorf("round %d: the game is %s on %s after the patch, want running %s again", round, rec.status, rec.currentImage, img(v141))
		}
		if n := len(a.logLines("patch rolled back", g)) + len(b.logLines("patch rolled back", g)); n != 1 {
			t.Errorf("round %d: %d rollbacks logged by the two processes, want 1", round, n)
		}
		if len(creates) != 2 || creates[0] != img(v143) || creates[1] != img(v141) {
			t.Errorf("round %d: the patch created containers %v, want [%s %s] (one patch, one rollback)", round, creates, img(v143), img(v141))
		}
	}
	r.finish("lease-expires-mid-patch", 60*time.Second)
}
