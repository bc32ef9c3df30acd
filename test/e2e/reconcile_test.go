//go:build integration

package e2e

import (
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// A labelled container started by hand is adopted: by the boot pass when RTM was down, and
// live when RTM runs. RTM records it as it is (reconcile_adopt) and never stops or replaces it;
// a second pass adopts nothing again.
func TestAdopt_HandStartedLabelledContainer(t *testing.T) {
	r := newRig(t, "adopt")
	boot, live := r.game("boot"), r.game("live")

	idBoot := r.W.handStart(engineName(boot), boot)
	r.Start()
	rec := r.Record(boot)
	expect(t, rec.Status == "running" && rec.ContainerID == idBoot, "boot pass: record %+v, want running with %s", rec, short(idBoot))
	expect(t, r.Ops(boot, "reconcile_adopt", "op_source = 'reconciler' AND outcome = 'succeeded'") == 1, "operation log %q", r.OpKinds(boot))

	idLive := r.W.handStart(engineName(live), live)
	rec = r.WaitStatus(live, "running", 10*time.Second)
	expect(t, rec.ContainerID == idLive, "live adopt: record %+v, want %s", rec, short(idLive))
	expect(t, r.Ops(live, "reconcile_adopt", "") == 1, "operation log %q", r.OpKinds(live))

	// Adopted games are probed like any other: the probe time advances, no failures.
	var first time.Time
	testenv.Eventually(t, 10*time.Second, "adopted game probed", func() (bool, string) {
		s := r.Snapshot(live)
		if s.LastProbeAt == nil {
			return false, pretty(s)
		}
		if first.IsZero() {
			first = *s.LastProbeAt
		}
		return s.LastProbeAt.After(first) && s.ProbeFailures == 0 && s.Status != "unhealthy", pretty(s)
	})
	t.Logf("adopted game's health: %s", pretty(r.Snapshot(live)))

	r.StopClean()
	r.Start()
	time.Sleep(time.Second)
	for g, id := range map[string]string{boot: idBoot, live: idLive} {
		expect(t, r.ContainerID(g) == id && r.State(g) == "running", "the adopted container of %s was touched", g)
		expect(t, r.Boots(g) == "1", "the adopted engine of %s was restarted: boots %s", g, r.Boots(g))
		expect(t, r.Ops(g, "reconcile_adopt", "") == 1, "a repeated pass adopted %s again: %q", g, r.OpKinds(g))
	}
}

// The runbook's daemon-restart case: containers vanish while RTM is down. The boot pass records
// each as removed, logs reconcile_dispose once and publishes container_disappeared; a later pass
// changes nothing.
func TestDispose_ContainersVanishedWhileRTMDown(t *testing.T) {
	r := newRig(t, "dispdown")
	r.Start()
	a, b, keep := r.game("a"), r.game("b"), r.game("keep")
	for _, g := range []string{a, b, keep} {
		r.StartJob(g, img(v141), "req-"+g)
	}
	for _, g := range []string{a, b, keep} {
		r.WaitSucceeded("req-" + g)
	}
	r.StopClean()

	// What a daemon restart does to the engines (restart policy no): they are gone. (Kubernetes:
	// what a lost node or a drain does to them.)
	r.W.remove(a)
	r.W.remove(b)
	r.Start()
	for _, g := range []string{a, b} {
		rec := r.Record(g)
		expect(t, rec.Status == "removed", "boot pass: %s is %+v, want removed", g, rec)
		expect(t, r.Ops(g, "reconcile_dispose", "op_source = 'reconciler' AND outcome = 'succeeded'") == 1, "operation log of %s %q", g, r.OpKinds(g))
		r.WaitHealth(g, "container_disappeared", 5*time.Second)
	}
	expect(t, r.Record(keep).Status == "running" && r.State(keep) == "running", "the surviving game was touched")

	r.StopClean()
	r.Start()
	time.Sleep(time.Second)
	for _, g := range []string{a, b} {
		expect(t, r.Ops(g, "reconcile_dispose", "") == 1, "a second pass disposed %s again: %q", g, r.OpKinds(g))
		expect(t, len(r.HealthEvents(g, "container_disappeared")) == 1, "container_disappeared for %s published again", g)
	}
}

// A container removed under a running RTM is disposed at once (Docker events; on Kubernetes the
// Pod informer), not at the next periodic pass.
func TestDispose_ContainerRemovedUnderRunningRTM(t *testing.T) {
	r, g := runningGame(t, "dispup", img(v141))

	r.W.remove(g)
	t0 := time.Now()
	r.WaitStatus(g, "removed", 10*time.Second)
	t.Logf("disposed %s after the removal", time.Since(t0).Round(time.Millisecond))
	time.Sleep(time.Second) // the event is published right after the commit
	rec := r.Record(g)
	if r.Ops(g, "reconcile_dispose", "outcome = 'succeeded'") != 1 || len(r.HealthEvents(g, "container_disappeared")) != 1 {
		t.Fatalf("the vanished container was not disposed as the runbook says (record removed, one reconcile_dispose "+
			"row, one container_disappeared event):\nrecord %+v\noperation log %q\nhealth events %v",
			rec, r.OpKinds(g), r.HealthEvents(g, ""))
	}
	expect(t, r.Inspect(g) == nil, "RTM started a disposed game again by itself")
}

// Observed exit: a recorded running game whose container exists but has exited is recorded as
// exited (reconcile_observed_exited), by the boot pass after RTM was down, and live when the
// engine exits under a running RTM. The exited container is left for the operator.
func TestObservedExit_RecordedByBootPassAndLive(t *testing.T) {
	r := newRig(t, "obsexit")
	r.Start()
	down, live := r.game("down"), r.game("live")
	r.StartGame(down, img(v141))
	r.StartGame(live, img(v141))
	r.StopClean()

	r.W.exit(down)
	r.Start()
	rec := r.Record(down)
	expect(t, rec.Status == "exited", "boot pass: record %+v, want exited", rec)
	expect(t, r.Ops(down, "reconcile_observed_exited", "op_source = 'reconciler' AND outcome = 'succeeded'") == 1,
		"operation log %q", r.OpKinds(down))
	expect(t, r.State(down) == "exited", "RTM touched the exited container: %q", r.State(down))

	r.Engine(live, "/control/exit?code=0")
	r.WaitStatus(live, "exited", 10*time.Second)
	expect(t, r.Ops(live, "reconcile_observed_exited", "outcome = 'succeeded'") == 1, "operation log %q", r.OpKinds(live))
	expect(t, r.State(live) == "exited", "RTM touched the exited container: %q", r.State(live))

	r.StopClean()
	r.Start()
	time.Sleep(time.Second)
	expect(t, r.Ops(down, "reconcile_observed_exited", "") == 1 && r.Ops(live, "reconcile_observed_exited", "") == 1,
		"a second pass observed the exits again: %q %q", r.OpKinds(down), r.OpKinds(live))
}

// Containers RTM does not own (no com.galaxy.owner=rtmanager label) are never stopped,
// removed or recorded, not even one holding a game's container name: a start job for that game
// fails with container_start_failed and leaves it alone.
func TestForeignContainers_Untouched(t *testing.T) {
	r := newRig(t, "foreign")
	r.Env["RTMANAGER_RECONCILE_INTERVAL"] = "2s" // several periodic passes within the test
	named, other := r.game("named"), r.game("other")
	idNamed := r.W.foreign(engineName(named), map[string]string{"com.galaxy.game_id": named})
	idOther := r.W.foreign(engineName(other), map[string]string{"com.galaxy.owner": "someone-else", "com.galaxy.game_id": other})
	r.Start()

	time.Sleep(5 * time.Second)
	for g, id := range map[string]string{named: idNamed, other: idOther} {
		expect(t, r.ContainerID(g) == id && r.State(g) == "running", "the foreign container of %s was touched", g)
		expect(t, !r.Record(g).Exists, "the foreign container of %s was recorded: %+v", g, r.Record(g))
		expect(t, len(r.OpKinds(g)) == 0, "operations on a foreign container: %q", r.OpKinds(g))
	}

	r.StartJob(named, img(v141), "req-named")
	res := r.WaitResult("req-named", 30*time.Second)
	expect(t, res.F["outcome"] == "failed" && res.F["error_code"] == "container_start_failed",
		"start over a foreign container's name: %v", res)
	expect(t, r.ContainerID(named) == idNamed && r.State(named) == "running", "the start job touched the foreign container")
}
