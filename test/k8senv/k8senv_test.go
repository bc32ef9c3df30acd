package k8senv_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/galaxy-platform/rtmanager/test/k8senv"
)

// TestEnv starts one environment and runs the scenarios the Kubernetes runtime's tests rely on,
// in order (some lose nodes).
func TestEnv(t *testing.T) {
	began := time.Now()
	env := k8senv.Start(t, k8senv.Options{})
	tm := env.Timings()
	t.Logf("start-up: etcd+apiserver %s, all Ready %s (Start returned after %s)",
		tm.ControlPlane.Round(time.Millisecond), tm.Ready.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	if got := len(env.Nodes()); got != 3 {
		t.Fatalf("nodes: got %d, want 3", got)
	}

	t.Run("Kubeconfig", func(t *testing.T) { testKubeconfig(t, env) })
	t.Run("Scheduled", func(t *testing.T) { testScheduled(t, env) })
	t.Run("ExitPod", func(t *testing.T) { testExitPod(t, env) })
	t.Run("KeepExitedStop", func(t *testing.T) { testKeepExitedStop(t, env) })
	t.Run("ImagePull", func(t *testing.T) { testImagePull(t, env) })
	t.Run("NoCapacity", func(t *testing.T) { testNoCapacity(t, env) })
	t.Run("Volume", func(t *testing.T) { testVolume(t, env) })
	t.Run("LoseNode", func(t *testing.T) { testLoseNode(t, env) })
	t.Run("CutNode", func(t *testing.T) { testCutNode(t, env) })
}

// timeout is a context for one scenario.
func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// gamePod is a Pod as the runtime would make it: one container, never restarted, small requests,
// and a 2-s toleration of a not-ready or unreachable node (the default is 300 s).
func gamePod(name string, mods ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"com.galaxy.test": "k8senv"}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name:  "engine",
				Image: "galaxy/engine:test",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("100m"),
					corev1.ResourceMemory: resource.MustParse("64Mi"),
				}},
			}},
			Tolerations: []corev1.Toleration{
				{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](2)},
				{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](2)},
			},
		},
	}
	for _, m := range mods {
		m(p)
	}
	return p
}

func onNode(node string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node} }
}

func keepExited(p *corev1.Pod) { p.Finalizers = append(p.Finalizers, k8senv.FinalizerKeepExited) }

func create(t *testing.T, env *k8senv.Env, ns string, p *corev1.Pod) {
	t.Helper()
	if _, err := env.Client().CoreV1().Pods(ns).Create(timeout(t, 10*time.Second), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating pod %s: %v", p.Name, err)
	}
}

func isRunning(p *corev1.Pod) bool {
	return p != nil && p.Status.Phase == corev1.PodRunning && podReady(p) && p.Status.PodIP != ""
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func terminated(p *corev1.Pod) *corev1.ContainerStateTerminated {
	if p == nil || len(p.Status.ContainerStatuses) == 0 {
		return nil
	}
	return p.Status.ContainerStatuses[0].State.Terminated
}

func waitPod(t *testing.T, env *k8senv.Env, ns, name, what string, d time.Duration, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	p, err := env.WaitPod(timeout(t, d), ns, name, cond)
	if err != nil {
		t.Fatalf("pod %s/%s %s: %v", ns, name, what, err)
	}
	return p
}

func testKubeconfig(t *testing.T, env *k8senv.Env) {
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	nodes, err := cs.CoreV1().Nodes().List(timeout(t, 10*time.Second), metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 3 {
		t.Fatalf("nodes through Kubeconfig(): %v, %v", nodes, err)
	}
	for _, n := range nodes.Items {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && a.Address != k8senv.NodeIP {
				t.Errorf("node %s InternalIP %s, want %s", n.Name, a.Address, k8senv.NodeIP)
			}
		}
	}

	// A user with no group may do nothing until a RoleBinding says so.
	path, _, err := env.AddUser("nobody", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t)
	_, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Pods(ns).Create(timeout(t, 10*time.Second), gamePod("denied"), metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("creating a pod as a user without rights: %v, want Forbidden", err)
	}
}

func testScheduled(t *testing.T, env *k8senv.Env) {
	ns := env.Namespace(t)
	names := []string{"game-a", "game-b", "game-c", "game-d", "game-e", "game-f"}
	began := time.Now()
	for _, n := range names {
		create(t, env, ns, gamePod(n))
	}
	cidr := netip.MustParsePrefix(k8senv.PodCIDR)
	seenIP := map[string]bool{}
	used := map[string]int{}
	for _, n := range names {
		p := waitPod(t, env, ns, n, "Running", 30*time.Second, isRunning)
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !cidr.Contains(ip) || !ip.IsLoopback() {
			t.Errorf("pod %s IP %q: want a loopback address in %s", n, p.Status.PodIP, cidr)
		}
		if seenIP[p.Status.PodIP] {
			t.Errorf("pod %s IP %s given twice", n, p.Status.PodIP)
		}
		seenIP[p.Status.PodIP] = true
		if p.Status.HostIP != k8senv.NodeIP {
			t.Errorf("pod %s host IP %s, want %s", n, p.Status.HostIP, k8senv.NodeIP)
		}
		if !slices.Contains(env.Nodes(), p.Spec.NodeName) {
			t.Errorf("pod %s on node %q, not a fake node", n, p.Spec.NodeName)
		}
		if !scheduled(p) {
			t.Errorf("pod %s has no PodScheduled=True condition: not bound by the scheduler", n)
		}
		used[p.Spec.NodeName]++
		cs := p.Status.ContainerStatuses
		if len(cs) != 1 || cs[0].State.Running == nil || !cs[0].Ready || cs[0].ContainerID == "" {
			t.Errorf("pod %s container status %+v: want running, ready, with an id", n, cs)
		}
	}
	// Small requests on large nodes score alike, so the scheduler may well fill one node first:
	// the placement is logged, not asserted.
	t.Logf("%d pods Running in %s, placed %v", len(names), time.Since(began).Round(time.Millisecond), used)
}

func scheduled(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func testExitPod(t *testing.T, env *k8senv.Env) {
	ns := env.Namespace(t)
	create(t, env, ns, gamePod("exits"))
	create(t, env, ns, gamePod("oom"))
	create(t, env, ns, gamePod("clean"))
	for _, n := range []string{"exits", "oom", "clean"} {
		waitPod(t, env, ns, n, "Running", 30*time.Second, isRunning)
	}
	ctx := timeout(t, 30*time.Second)
	for _, c := range []struct {
		name   string
		code   int
		oom    bool
		reason string
		phase  corev1.PodPhase
	}{
		{"exits", 3, false, "Error", corev1.PodFailed},
		{"oom", 137, true, "OOMKilled", corev1.PodFailed},
		{"clean", 0, false, "Completed", corev1.PodSucceeded},
	} {
		began := time.Now()
		if err := env.ExitPod(ctx, ns, c.name, c.code, c.oom); err != nil {
			t.Fatal(err)
		}
		p := waitPod(t, env, ns, c.name, "terminated", 10*time.Second, func(p *corev1.Pod) bool { return terminated(p) != nil })
		st := terminated(p)
		if st.ExitCode != int32(c.code) || st.Reason != c.reason || p.Status.Phase != c.phase || podReady(p) {
			t.Errorf("pod %s: exit %d reason %q phase %s ready %v; want %d %q %s not ready",
				c.name, st.ExitCode, st.Reason, p.Status.Phase, podReady(p), c.code, c.reason, c.phase)
		}
		t.Logf("pod %s terminated (%d %s) %s after ExitPod", c.name, st.ExitCode, st.Reason, time.Since(began).Round(time.Millisecond))
	}
}

// testKeepExitedStop is RTM's stop: add the finalizer, delete with the stop grace; the Pod stays,
// terminated with its exit code, until the finalizer goes.
func testKeepExitedStop(t *testing.T, env *k8senv.Env) {
	ns := env.Namespace(t)
	pods := env.Client().CoreV1().Pods(ns)
	create(t, env, ns, gamePod("stopped"))
	create(t, env, ns, gamePod("stopped-143", func(p *corev1.Pod) {
		p.Annotations = map[string]string{k8senv.AnnotationStopExitCode: "143"}
	}))
	create(t, env, ns, gamePod("exited-then-stopped", keepExited))
	create(t, env, ns, gamePod("plain"))
	for _, n := range []string{"stopped", "stopped-143", "exited-then-stopped", "plain"} {
		waitPod(t, env, ns, n, "Running", 30*time.Second, isRunning)
	}
	ctx := timeout(t, 60*time.Second)

	// An engine that exited on its own keeps its exit code through the stop.
	if err := env.ExitPod(ctx, ns, "exited-then-stopped", 3, false); err != nil {
		t.Fatal(err)
	}
	waitPod(t, env, ns, "exited-then-stopped", "terminated", 10*time.Second, func(p *corev1.Pod) bool { return terminated(p) != nil })

	addFinalizer := []byte(`{"metadata":{"finalizers":["` + k8senv.FinalizerKeepExited + `"]}}`)
	for _, n := range []string{"stopped", "stopped-143"} {
		if _, err := pods.Patch(ctx, n, "application/merge-patch+json", addFinalizer, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"stopped", "stopped-143", "exited-then-stopped", "plain"} {
		if err := pods.Delete(ctx, n, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](30)}); err != nil {
			t.Fatal(err)
		}
	}

	// kwok handles the four deletions alike; the Pod without the finalizer is deleted at once.
	waitPod(t, env, ns, "plain", "gone", 10*time.Second, func(p *corev1.Pod) bool { return p == nil })
	for _, c := range []struct {
		name   string
		code   int32
		reason string
		phase  corev1.PodPhase
	}{
		{"stopped", 0, "Completed", corev1.PodSucceeded},
		{"stopped-143", 143, "Error", corev1.PodFailed},
		{"exited-then-stopped", 3, "Error", corev1.PodFailed},
	} {
		p := waitPod(t, env, ns, c.name, "terminated", 10*time.Second, func(p *corev1.Pod) bool { return terminated(p) != nil })
		st := terminated(p)
		if p.DeletionTimestamp == nil || st.ExitCode != c.code || st.Reason != c.reason || p.Status.Phase != c.phase {
			t.Errorf("pod %s: deleting %v exit %d reason %q phase %s; want deleting, %d %q %s",
				c.name, p.DeletionTimestamp != nil, st.ExitCode, st.Reason, p.Status.Phase, c.code, c.reason, c.phase)
		}
	}
	// The plain Pod is gone and every kept one is still there: kwok has seen them all.
	for _, n := range []string{"stopped", "stopped-143", "exited-then-stopped"} {
		if _, err := pods.Get(ctx, n, metav1.GetOptions{}); err != nil {
			t.Errorf("pod %s with %s: %v, want kept", n, k8senv.FinalizerKeepExited, err)
		}
	}

	// Dropping the finalizer lets the Pod go.
	drop := []byte(`{"metadata":{"finalizers":null}}`)
	for _, n := range []string{"stopped", "stopped-143", "exited-then-stopped"} {
		began := time.Now()
		if _, err := pods.Patch(ctx, n, "application/merge-patch+json", drop, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPod(t, env, ns, n, "gone", 10*time.Second, func(p *corev1.Pod) bool { return p == nil })
		t.Logf("pod %s gone %s after its finalizer was dropped", n, time.Since(began).Round(time.Millisecond))
	}
}

func waiting(p *corev1.Pod) string {
	if p == nil || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Waiting == nil {
		return ""
	}
	return p.Status.ContainerStatuses[0].State.Waiting.Reason
}

// testImagePull: an image nobody serves leaves the Pod Pending with its container waiting; RTM's
// stop of such a Pod keeps what a kubelet reports for a container that never ran.
func testImagePull(t *testing.T, env *k8senv.Env) {
	ns := env.Namespace(t)
	unpullable := func(p *corev1.Pod) { p.Spec.Containers[0].Image = k8senv.UnpullableRegistry + "/rtm-e2e/game:1.4.1" }
	create(t, env, ns, gamePod("no-image", unpullable, keepExited))
	p := waitPod(t, env, ns, "no-image", "ErrImagePull", 30*time.Second, func(p *corev1.Pod) bool { return waiting(p) == "ErrImagePull" })
	if p.Status.Phase != corev1.PodPending || podReady(p) || p.Spec.NodeName == "" {
		t.Errorf("pod no-image: phase %s ready %v node %q; want Pending, not ready, bound", p.Status.Phase, podReady(p), p.Spec.NodeName)
	}
	waitPod(t, env, ns, "no-image", "ImagePullBackOff", 10*time.Second, func(p *corev1.Pod) bool { return waiting(p) == "ImagePullBackOff" })

	ctx := timeout(t, 30*time.Second)
	if err := env.Client().CoreV1().Pods(ns).Delete(ctx, "no-image", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](30)}); err != nil {
		t.Fatal(err)
	}
	p = waitPod(t, env, ns, "no-image", "terminated", 10*time.Second, func(p *corev1.Pod) bool { return terminated(p) != nil })
	if st := terminated(p); st.ExitCode != 137 || st.Reason != "ContainerStatusUnknown" || p.Status.Phase != corev1.PodFailed {
		t.Errorf("stopped pod that never ran: exit %d reason %q phase %s; want 137 ContainerStatusUnknown Failed", st.ExitCode, st.Reason, p.Status.Phase)
	}
}

func unschedulable(p *corev1.Pod) bool {
	if p == nil || p.Status.Phase != corev1.PodPending {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return true
		}
	}
	return false
}

func testNoCapacity(t *testing.T, env *k8senv.Env) {
	ctx := timeout(t, 60*time.Second)
	if err := env.AddNode(ctx, k8senv.Node{Name: "full-node", Capacity: k8senv.Capacity{Pods: "0"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.DeleteNode(context.Background(), "full-node") })
	ns := env.Namespace(t)
	create(t, env, ns, gamePod("no-room", onNode("full-node")))
	create(t, env, ns, gamePod("too-big", func(p *corev1.Pod) {
		p.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("1000")
	}))
	for _, n := range []string{"no-room", "too-big"} {
		p := waitPod(t, env, ns, n, "unschedulable", 30*time.Second, unschedulable)
		if p.Spec.NodeName != "" {
			t.Errorf("pod %s bound to %s", n, p.Spec.NodeName)
		}
	}
}

func testVolume(t *testing.T, env *k8senv.Env) {
	ctx := timeout(t, 60*time.Second)
	ns := env.Namespace(t)
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "galaxy-game-state"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: resource.MustParse("1Gi"),
			}},
		},
	}
	claims := env.Client().CoreV1().PersistentVolumeClaims(ns)
	if _, err := claims.Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	create(t, env, ns, gamePod("with-state", func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "state", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim.Name},
		}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "state", MountPath: "/var/lib/galaxy"}}
	}))
	waitPod(t, env, ns, "with-state", "Running", 30*time.Second, isRunning)
	got, err := claims.Get(ctx, claim.Name, metav1.GetOptions{})
	if err != nil || got.Status.Phase != corev1.ClaimBound || got.Spec.StorageClassName == nil || *got.Spec.StorageClassName != k8senv.StorageClass {
		t.Fatalf("claim: %+v, %v; want Bound, class %s", got, err, k8senv.StorageClass)
	}
}

func hasTaint(n *corev1.Node, key string) bool {
	for _, tn := range n.Spec.Taints {
		if tn.Key == key && tn.Effect == corev1.TaintEffectNoExecute {
			return true
		}
	}
	return false
}

func waitNode(t *testing.T, env *k8senv.Env, name, what string, d time.Duration, cond func(*corev1.Node) bool) {
	t.Helper()
	if _, err := env.WaitNode(timeout(t, d), name, cond); err != nil {
		t.Fatalf("node %s %s: %v", name, what, err)
	}
}

func nodeReadyStatus(n *corev1.Node) corev1.ConditionStatus {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return ""
}

func disrupted(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// testLoseNode: the real controller-manager taints a NotReady node and evicts its Pods.
func testLoseNode(t *testing.T, env *k8senv.Env) {
	const node = "lost-node"
	ctx := timeout(t, 90*time.Second)
	if err := env.AddNode(ctx, k8senv.Node{Name: node}); err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t)
	create(t, env, ns, gamePod("evicted", onNode(node)))
	create(t, env, ns, gamePod("evicted-kept", onNode(node), keepExited))
	for _, n := range []string{"evicted", "evicted-kept"} {
		waitPod(t, env, ns, n, "Running", 30*time.Second, isRunning)
	}

	began := time.Now()
	if err := env.LoseNode(ctx, node); err != nil {
		t.Fatal(err)
	}
	notReady := time.Since(began)
	waitNode(t, env, node, "tainted not-ready:NoExecute", 30*time.Second, func(n *corev1.Node) bool { return hasTaint(n, corev1.TaintNodeNotReady) })
	tainted := time.Since(began)
	waitPod(t, env, ns, "evicted", "gone", 30*time.Second, func(p *corev1.Pod) bool { return p == nil })
	gone := time.Since(began)
	p := waitPod(t, env, ns, "evicted-kept", "terminated", 10*time.Second, func(p *corev1.Pod) bool { return terminated(p) != nil })
	if p.DeletionTimestamp == nil || !disrupted(p) {
		t.Errorf("pod evicted-kept: deleting %v, DisruptionTarget %v; want both", p.DeletionTimestamp != nil, disrupted(p))
	}
	t.Logf("lost node: NotReady %s, NoExecute taint %s, evicted pod gone %s (2-s toleration); kept pod terminated %d %s",
		notReady.Round(time.Millisecond), tainted.Round(time.Millisecond), gone.Round(time.Millisecond),
		terminated(p).ExitCode, terminated(p).Reason)

	if err := env.RestoreNode(ctx, node); err != nil {
		t.Fatal(err)
	}
	waitNode(t, env, node, "untainted", 30*time.Second, func(n *corev1.Node) bool { return !hasTaint(n, corev1.TaintNodeNotReady) })
}

// testCutNode: a node whose heartbeat stops goes Unknown after the grace period, is tainted
// unreachable, and its Pods are deleted but stay Terminating: nothing confirms.
func testCutNode(t *testing.T, env *k8senv.Env) {
	const node = "cut-node"
	ctx := timeout(t, 90*time.Second)
	if err := env.AddNode(ctx, k8senv.Node{Name: node}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.DeleteNode(context.Background(), node) })
	ns := env.Namespace(t)
	create(t, env, ns, gamePod("stranded", onNode(node)))
	waitPod(t, env, ns, "stranded", "Running", 30*time.Second, isRunning)

	began := time.Now()
	if err := env.CutNode(ctx, node); err != nil {
		t.Fatal(err)
	}
	waitNode(t, env, node, "Unknown", 60*time.Second, func(n *corev1.Node) bool { return nodeReadyStatus(n) == corev1.ConditionUnknown })
	unknown := time.Since(began)
	waitNode(t, env, node, "tainted unreachable:NoExecute", 30*time.Second, func(n *corev1.Node) bool { return hasTaint(n, corev1.TaintNodeUnreachable) })
	tainted := time.Since(began)
	p := waitPod(t, env, ns, "stranded", "deleting", 30*time.Second, func(p *corev1.Pod) bool { return p == nil || p.DeletionTimestamp != nil })
	if p == nil {
		t.Fatal("pod stranded is gone: nothing should confirm a deletion on a cut node")
	}
	t.Logf("cut node: Unknown %s, NoExecute taint %s, pod deleting %s (2-s toleration), still there, phase %s",
		unknown.Round(time.Millisecond), tainted.Round(time.Millisecond), time.Since(began).Round(time.Millisecond), p.Status.Phase)
}
