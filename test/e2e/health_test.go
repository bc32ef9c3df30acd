//go:build integration

package e2e

import (
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// An engine that exits by itself with a non-zero code is reported as container_exited carrying
// the exit code, the snapshot turns unhealthy, the record exited; no notification intent.
func TestHealth_EngineExitReportsContainerExited(t *testing.T) {
	r, g := runningGame(t, "exit", img(v141))
	r.WaitHealth(g, "container_started", 5*time.Second)
	cid := r.ContainerID(g)

	r.Engine(g, "/control/exit?code=3")
	t0 := time.Now()
	ev := r.WaitHealth(g, "container_exited", 5*time.Second)
	t.Logf("container_exited %s after the exit", time.Since(t0).Round(time.Millisecond))
	expect(t, ev.F["exit_code"] == "3" && ev.F["container_id"] == cid, "event %v, want exit_code 3 of %s", ev, cid)
	if _, err := time.Parse(time.RFC3339, ev.F["observed_at"]); err != nil {
		t.Fatalf("observed_at %q: %v", ev.F["observed_at"], err)
	}
	testenv.Eventually(t, 5*time.Second, "snapshot unhealthy with exit code 3", func() (bool, string) {
		s := r.Snapshot(g)
		return s.Status == "unhealthy" && s.ExitCode != nil && *s.ExitCode == 3 && !s.OOMKilled, pretty(s)
	})
	r.WaitStatus(g, "exited", 5*time.Second)
	expect(t, r.State(g) == "exited", "RTM touched the exited container: %q", r.State(g))
	time.Sleep(time.Second)
	expect(t, len(r.HealthEvents(g, "container_exited")) == 1, "container_exited sent %d times", len(r.HealthEvents(g, "container_exited")))
	expect(t, len(r.Intents("")) == 0, "an exit produced notification intents: %v", r.Intents(""))
}

// docker kill behind RTM's back is an exit too (137), not an OOM. (Kubernetes: the kubelet
// reports a container killed that way as exit code 137, reason Error.)
func TestHealth_DockerKillReportsContainerExited(t *testing.T) {
	r, g := runningGame(t, "kill", img(v141))

	r.W.kill(g)
	ev := r.WaitHealth(g, "container_exited", 5*time.Second)
	expect(t, ev.F["exit_code"] == "137", "event %v, want exit_code 137", ev)
	testenv.Eventually(t, 5*time.Second, "snapshot after the kill", func() (bool, string) {
		s := r.Snapshot(g)
		return s.Status == "unhealthy" && s.ExitCode != nil && *s.ExitCode == 137 && !s.OOMKilled, pretty(s)
	})
	expect(t, len(r.HealthEvents(g, "container_oom")) == 0, "a kill was reported as OOM")
	r.WaitStatus(g, "exited", 5*time.Second)
}

// An engine killed by the kernel for its memory limit is container_oom, with oom_killed in the
// snapshot (never inferred from 137 alone).
func TestHealth_OOMKillReportsContainerOOM(t *testing.T) {
	r, g := runningGame(t, "oom", img(v141), "RTMANAGER_ENGINE_MEMORY_LIMIT=96m")

	r.Engine(g, "/control/oom")
	ev := r.WaitHealth(g, "container_oom", 20*time.Second)
	expect(t, ev.F["game_id"] == g, "event %v", ev)
	testenv.Eventually(t, 5*time.Second, "snapshot oom_killed", func() (bool, string) {
		s := r.Snapshot(g)
		return s.Status == "unhealthy" && s.OOMKilled, pretty(s)
	})
	expect(t, len(r.Intents("")) == 0, "an OOM produced notification intents: %v", r.Intents(""))
}

// A running engine whose /healthz fails threshold times in a row is probe_failed, once per
// transition; when it answers again, probe_recovered, and the snapshot follows.
func TestHealth_ProbeFailureAndRecovery(t *testing.T) {
	r, g := runningGame(t, "probe", img(v141))
	testenv.Eventually(t, 5*time.Second, "a first successful probe", func() (bool, string) {
		s := r.Snapshot(g)
		return s.LastProbeAt != nil && s.Status == "healthy", pretty(s)
	})

	r.Engine(g, "/control/sick")
	t0 := time.Now()
	// interval 1s, threshold 2: well within 8s.
	r.WaitHealth(g, "probe_failed", 8*time.Second)
	t.Logf("probe_failed %s after the engine turned sick", time.Since(t0).Round(time.Millisecond))
	testenv.Eventually(t, 5*time.Second, "snapshot unhealthy with failures counted", func() (bool, string) {
		s := r.Snapshot(g)
		return s.Status == "unhealthy" && s.ProbeFailures >= 2 && s.LastEventType == "probe_failed", pretty(s)
	})
	time.Sleep(3 * time.Second)
	n := len(r.HealthEvents(g, "probe_failed"))
	expect(t, n == 1, "probe_failed sent %d times for one transition", n)
	expect(t, r.State(g) == "running", "RTM stopped a sick engine: %q", r.State(g))

	r.Engine(g, "/control/well")
	r.WaitHealth(g, "probe_recovered", 8*time.Second)
	testenv.Eventually(t, 5*time.Second, "snapshot healthy again", func() (bool, string) {
		s := r.Snapshot(g)
		return s.Status == "healthy" && s.ProbeFailures == 0 && s.LastEventType == "probe_recovered", pretty(s)
	})
	expect(t, len(r.Intents("")) == 0, "probe changes produced notification intents: %v", r.Intents(""))
}
