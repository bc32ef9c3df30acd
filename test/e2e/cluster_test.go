//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// What only a cluster has (RTM_E2E_RUNTIME=kubernetes): a node lost under running games, no
// room for a game, and a namespace RTM may not write.

// A node lost under ten running games (its kubelet reports NotReady; RTM's Pods tolerate that
// for RTMANAGER_KUBE_EVICTION_TOLERATION=2s, then the controller-manager evicts them): every game
// is recorded as vanished with a container_disappeared event within 30 s of its Pod's eviction,
// nothing is answered twice, nothing is started again unasked; a game starts again, on another
// node, when an operator asks. The test runs alone (it takes a node from under every test's
// Pods), with the other nodes cordoned while the games start, so that all ten land on one node.
func TestCluster_NodeLostUnderRunningGames(t *testing.T) {
	kubeOnly(t)
	r := newRig(t, "lost", serial)
	r.Env["RTMANAGER_KUBE_EVICTION_TOLERATION"] = "2s"
	r.Start()
	nodes := suite.k8s.Nodes()
	lostNode, others := nodes[0], nodes[1:]
	cordon(t, others, true)

	const n = 10
	games := make([]string, n)
	for i := range games {
		games[i] = r.game(fmt.Sprint(i))
		r.StartJob(games[i], img(v141), "req-"+games[i])
	}
	for _, g := range games {
		r.WaitSucceeded("req-" + g)
	}
	cordon(t, others, false)
	for _, g := range games {
		expect(t, r.kube.nodeOf(g) == lostNode, "game %s runs on %q, want %s", g, r.kube.nodeOf(g), lostNode)
		r.WaitHealth(g, "container_started", 10*time.Second)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lost := time.Now()
	if err := suite.k8s.LoseNode(ctx, lostNode); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restoreNode(t, lostNode) })

	// Every game: its Pod evicted, then recorded as vanished within 30 s of that.
	seen := map[string]time.Time{}
	testenv.Eventually(t, 90*time.Second, "container_disappeared for every game of the lost node", func() (bool, string) {
		for _, g := range games {
			if _, ok := seen[g]; !ok && len(r.HealthEvents(g, "container_disappeared")) > 0 {
				seen[g] = time.Now()
			}
		}
		return len(seen) == n, fmt.Sprintf("%d of %d games so far", len(seen), n)
	})
	var slowest time.Duration
	for _, g := range games {
		evicted := r.kube.deletedAt(engineName(g))
		expect(t, !evicted.IsZero(), "the Pod of %s was never seen evicted", g)
		after := seen[g].Sub(evicted)
		slowest = max(slowest, after)
		expect(t, after <= 30*time.Second, "game %s recorded %s after its Pod's eviction, over 30 s", g, after)
	}
	t.Logf("node %s lost: all %d games recorded %s after the node went NotReady, at most %s after their Pod's eviction",
		lostNode, n, time.Since(lost).Round(100*time.Millisecond), slowest.Round(100*time.Millisecond))

	// Nothing answered twice, nothing started again unasked.
	time.Sleep(3 * time.Second)
	for _, g := range games {
		rec := r.Record(g)
		expect(t, rec.Status == "removed", "record of %s %+v, want removed", g, rec)
		expect(t, len(r.Results("req-"+g)) == 1, "the start of %s has %d results", g, len(r.Results("req-"+g)))
		expect(t, len(r.HealthEvents(g, "container_disappeared")) == 1, "container_disappeared for %s %d times", g, len(r.HealthEvents(g, "container_disappeared")))
		expect(t, r.Ops(g, "reconcile_dispose", "outcome = 'succeeded'") == 1 && r.Ops(g, "start", "") == 1,
			"operation log of %s %q", g, r.OpKinds(g))
		expect(t, r.Inspect(g) == nil, "%s was started again unasked: %+v", g, r.Inspect(g))
	}

	// Someone asks: the game starts again, on a node that answers, from its claim.
	g := games[0]
	rec := r.Admin(http.StatusOK, http.MethodPost, gamePath(g, "/restart"), map[string]any{})
	node := r.kube.nodeOf(g)
	expect(t, rec["status"] == "running" && node != "" && node != lostNode, "restart after the loss: %v on node %q", rec, node)
	r.WaitBoots(g, 2, "the restarted engine booted from the game's claim")
	for _, other := range games[1:] {
		expect(t, r.Inspect(other) == nil, "%s started with another game's restart", other)
	}
}

// cordon marks nodes unschedulable (or schedulable again); the test's cleanup makes them
// schedulable in any case.
func cordon(t *testing.T, nodes []string, on bool) {
	t.Helper()
	set := func(on bool) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		patch := fmt.Sprintf(`{"spec":{"unschedulable":%v}}`, on)
		for _, n := range nodes {
			if _, err := suite.k8s.Client().CoreV1().Nodes().Patch(ctx, n, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				return fmt.Errorf("cordon %s=%v: %w", n, on, err)
			}
		}
		return nil
	}
	if err := set(on); err != nil {
		t.Fatal(err)
	}
	if on {
		t.Cleanup(func() {
			if err := set(false); err != nil {
				t.Error(err)
			}
		})
	}
}

// restoreNode makes a lost node Ready again and waits until the controller-manager has lifted
// its NoExecute taints, so that the tests after this one find three ordinary nodes.
func restoreNode(t *testing.T, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := suite.k8s.RestoreNode(ctx, name); err != nil {
		t.Errorf("restoring node %s: %v", name, err)
		return
	}
	if _, err := suite.k8s.WaitNode(ctx, name, func(n *corev1.Node) bool {
		for _, taint := range n.Spec.Taints {
			if taint.Effect == corev1.TaintEffectNoExecute {
				return false
			}
		}
		return true
	}); err != nil {
		t.Errorf("node %s keeps its NoExecute taint: %v", name, err)
	}
}

// No node has room for a game (its memory limit is above every node's capacity): the Pod stays
// Pending, and the start job is answered failed with container_start_failed, saying so, once
// RTMANAGER_KUBE_START_TIMEOUT runs out, not a hang; one intent, and no Pod left behind.
func TestCluster_NoCapacity_StartFailsAfterStartTimeout(t *testing.T) {
	kubeOnly(t)
	r := newRig(t, "full")
	r.Env["RTMANAGER_ENGINE_MEMORY_LIMIT"] = "512g" // k8senv's nodes have 256Gi
	r.Env["RTMANAGER_KUBE_START_TIMEOUT"] = "3s"
	r.Start()
	g := r.game("a")

	t0 := time.Now()
	r.StartJob(g, img(v141), "req-"+g)
	res := r.WaitResult("req-"+g, 30*time.Second)
	took := time.Since(t0)
	t.Logf("answered %s after the job: %s", took.Round(100*time.Millisecond), res.F["error_message"])
	expect(t, res.F["outcome"] == "failed" && res.F["error_code"] == "container_start_failed" &&
		strings.Contains(res.F["error_message"], "not scheduled") && strings.Contains(res.F["error_message"], "Insufficient memory"),
		"result %v, want container_start_failed saying the Pod is not scheduled for memory", res)
	expect(t, took >= 3*time.Second, "answered after %s, before the start timeout", took)
	var intents []entry
	testenv.Eventually(t, 10*time.Second, "the intent", func() (bool, string) {
		intents = r.Intents(g)
		return len(intents) > 0, "none"
	})
	expect(t, len(intents) == 1 && intents[0].F["intent"] == "runtime.container_start_failed", "intents %v", intents)
	testenv.Eventually(t, 10*time.Second, "the pending Pod deleted", func() (bool, string) {
		e := r.Inspect(g)
		return e == nil, fmt.Sprintf("%+v", e)
	})
	time.Sleep(time.Second)
	expect(t, len(r.Results("req-"+g)) == 1 && len(r.Intents(g)) == 1, "answered %d times, %d intents",
		len(r.Results("req-"+g)), len(r.Intents(g)))
	expect(t, r.Record(g).Status != "running", "record %+v", r.Record(g))
}

// RTM's identity holds docs/kubernetes/rbac.yaml's Role in another namespace only: RTM's
// start-up fails at step "kubernetes access" with exit 1, naming every verb it may not use in its
// own namespace, before any listener opens. With the Role bound in its own namespace RTM starts,
// and starts, stops and cleans up a game: the manifest grants exactly enough.
func TestCluster_NamespaceRTMMayNotWrite(t *testing.T) {
	kubeOnly(t)
	r := newRig(t, "rbac")
	user := "rtm-" + r.prefix
	kubeconfig, _, err := suite.k8s.AddUser(user, nil)
	if err != nil {
		t.Fatal(err)
	}
	elsewhere := suite.k8s.Namespace(t)
	applyRBAC(t, elsewhere, user)
	r.Env["KUBECONFIG"] = kubeconfig

	out, code := runOnce(t, r.Env)
	expect(t, code == 1, "RTM without rights in its namespace: exit %d, want 1:\n%s", code, out)
	expect(t, strings.Contains(out, `"msg":"start-up failed"`) && strings.Contains(out, `"step":"kubernetes access"`) &&
		strings.Contains(out, "may not") && strings.Contains(out, "in namespace "+r.NS),
		"the failure does not name the step and the namespace:\n%s", out)
	for _, verb := range []string{"list pods", "watch pods", "get pods", "create pods", "patch pods", "delete pods",
		"get pods/log", "create services", "create persistentvolumeclaims"} {
		expect(t, strings.Contains(out, verb), "the failure does not name %q:\n%s", verb, out)
	}
	expect(t, !strings.Contains(out, "internal http listening"), "a listener opened:\n%s", out)

	applyRBAC(t, r.NS, user)
	r.Start()
	g := r.game("a")
	r.StartGame(g, img(v141))
	rec := r.Admin(http.StatusOK, http.MethodPost, gamePath(g, "/stop"), map[string]string{"reason": "admin_request"})
	expect(t, rec["status"] == "stopped", "stop answered %v", rec)
	r.StartJob(g, img(v141), "req-"+g+"-again") // a start after a stop replaces the terminated Pod
	r.WaitSucceeded("req-" + g + "-again")
	r.Admin(http.StatusOK, http.MethodPost, gamePath(g, "/stop"), map[string]string{"reason": "admin_request"})
	rec = r.Admin(http.StatusOK, http.MethodDelete, gamePath(g, "/container"), nil)
	expect(t, rec["status"] == "removed" && r.Inspect(g) == nil, "cleanup answered %v", rec)
	code, b := r.Call(http.MethodGet, gamePath(g, "/logs"), "admin", nil)
	expect(t, code != http.StatusForbidden && errorCode(b) != "forbidden", "logs: %d %s", code, b)
	r.StopClean()
	for _, l := range r.LogLines() {
		msg := strings.ToLower(l.str("msg") + " " + l.str("error"))
		expect(t, !strings.Contains(msg, "forbidden"), "RTM was refused something: %v", l)
	}
}
