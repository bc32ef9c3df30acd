package kube_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/runtime/kube"
	"github.com/galaxy-platform/rtmanager/test/k8senv"
)

// The adapter's tests run against a real control plane (kube-apiserver, etcd, kube-scheduler,
// kube-controller-manager) with kwok's nodes: one environment for all of them, a namespace each.
func TestKube(t *testing.T) {
	env := k8senv.Start(t, k8senv.Options{Nodes: 3, NodeMonitorGracePeriod: 4 * time.Second})
	for _, tc := range []struct {
		name string
		run  func(*testing.T, *k8senv.Env)
	}{
		{"a game is a Pod, a Service and a claim", testCreateStart},
		{"events follow the engine's life", testEvents},
		{"stop keeps the exited Pod until remove", testStopRemove},
		{"a Pod that cannot be placed fails its start", testUnschedulable},
		{"a start left under way", testBeginStart},
		{"a name taken by a Pod RTM does not own", testForeignName},
		{"access review", testAccess},
		{"a lost node's Pod vanishes", testLostNode},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, env) })
	}
}

// adapter returns an adapter on a fresh namespace, its informer running and synced until the
// test ends.
func adapter(t *testing.T, env *k8senv.Env, mods ...func(*kube.Options)) (*kube.Kube, string) {
	t.Helper()
	ns := env.Namespace(t)
	opts := kube.Options{Config: env.Config(), Namespace: ns, StartTimeout: time.Minute, EvictionSeconds: 2,
		Probe: kube.Probe{Port: 8080, Period: time.Second, Timeout: time.Second, Threshold: 3}}
	for _, m := range mods {
		m(&opts)
	}
	k, err := kube.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = k.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	if err := k.WaitSynced(sctx); err != nil {
		t.Fatalf("WaitSynced: %v", err)
	}
	return k, ns
}

func deadline(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func spec(gameID string) rtm.ContainerSpec {
	return rtm.ContainerSpec{GameID: gameID, ImageRef: "galaxy/game:1.4.2", Generation: 3,
		StateMount: "/var/lib/galaxy-game", MemoryBytes: 256 << 20, NanoCPUs: 5e8, ReadOnlyRoot: true,
		Env: map[string]string{"GALAXY_GAME_ID": gameID, "GALAXY_STATE_DIR": "/var/lib/galaxy-game"}}
}

// run creates and starts the game's Pod and returns its id.
func run(t *testing.T, k *kube.Kube, gameID string) string {
	t.Helper()
	ctx := deadline(t, time.Minute)
	id, err := k.Create(ctx, spec(gameID))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := k.Start(ctx, id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return id
}

// waitInspect waits until the game's container, as Inspect reads it from the informer, passes
// cond (a nil container: none).
func waitInspect(t *testing.T, k *kube.Kube, gameID, what string, cond func(*rtm.Container) bool) *rtm.Container {
	t.Helper()
	var last *rtm.Container
	ok := waitFor(30*time.Second, func() bool {
		c, err := k.Inspect(context.Background(), gameID)
		last = nil
		if err == nil {
			last = &c
		} else if !errors.Is(err, rtm.ErrNotFound) {
			t.Fatalf("Inspect: %v", err)
		}
		return cond(last)
	})
	if !ok {
		t.Fatalf("waiting for %s: last seen %+v", what, last)
	}
	return last
}

// waitFor polls cond (the informer's store is local: a poll costs no API call) until it holds.
func waitFor(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func testCreateStart(t *testing.T, env *k8senv.Env) {
	k, ns := adapter(t, env)
	id := run(t, k, "alpha-1")
	c, err := k.Inspect(context.Background(), "alpha-1")
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if c.ID != id || c.Name != "galaxy-game-alpha-1" || c.GameID != "alpha-1" || !c.Owned || c.ImageRef != "galaxy/game:1.4.2" ||
		c.Generation != 3 || c.State != rtm.StateRunning || c.Final {
		t.Errorf("Inspect = %+v", c)
	}
	if ip, err := netip.ParseAddr(c.IP); err != nil || !netip.MustParsePrefix(k8senv.PodCIDR).Contains(ip) {
		t.Errorf("Pod IP %q is not in %s", c.IP, k8senv.PodCIDR)
	} else if !k.IsEngine(context.Background(), ip) || k.IsEngine(context.Background(), netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("IsEngine(%s) is not true, or IsEngine(127.0.0.1) is", ip)
	}
	list, _ := k.List(context.Background())
	if len(list) != 1 || list[0].ID != id {
		t.Errorf("List = %+v, want the one Pod", list)
	}

	cs := env.Client()
	ctx := deadline(t, 30*time.Second)
	pod, err := cs.CoreV1().Pods(ns).Get(ctx, "galaxy-game-alpha-1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod: %v", err)
	}
	sc, ctr := pod.Spec.SecurityContext, pod.Spec.Containers[0]
	switch {
	case pod.Labels[rtm.LabelOwner] != rtm.OwnerValue || pod.Labels[rtm.LabelGameID] != "alpha-1":
		t.Errorf("labels = %v", pod.Labels)
	case pod.Spec.RestartPolicy != corev1.RestartPolicyNever:
		t.Errorf("restartPolicy = %s", pod.Spec.RestartPolicy)
	case sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("pod securityContext = %+v", sc)
	case ctr.SecurityContext == nil || !*ctr.SecurityContext.ReadOnlyRootFilesystem || *ctr.SecurityContext.AllowPrivilegeEscalation ||
		!slices.Equal(ctr.SecurityContext.Capabilities.Drop, []corev1.Capability{"ALL"}):
		t.Errorf("container securityContext = %+v", ctr.SecurityContext)
	case ctr.Resources.Limits.Memory().Value() != 256<<20 || ctr.Resources.Limits.Cpu().MilliValue() != 500:
		t.Errorf("resources = %+v", ctr.Resources)
	case pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken:
		t.Errorf("the engine gets an API token")
	case ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet == nil || ctr.ReadinessProbe.HTTPGet.Path != "/healthz":
		t.Errorf("readinessProbe = %+v", ctr.ReadinessProbe)
	}
	svc, err := cs.CoreV1().Services(ns).Get(ctx, "galaxy-game-alpha-1", metav1.GetOptions{})
	if err != nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("service: %v %+v", err, svc)
	}
	pvc, err := cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "galaxy-game-alpha-1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if pod.Spec.Volumes[0].PersistentVolumeClaim == nil || pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != pvc.Name {
		t.Errorf("the Pod does not mount the claim: %+v", pod.Spec.Volumes)
	}
	if ok := waitFor(10*time.Second, func() bool {
		return kube.Ready{K: k}.Probe(context.Background(), c, "") == nil
	}); !ok {
		t.Errorf("Ready.Probe of a running, ready Pod never succeeded")
	}
}

// collect subscribes to the adapter's events and returns a function that waits for an event
// matching want.
func collect(t *testing.T, k *kube.Kube) func(what string, want func(rtm.DockerEvent) bool) rtm.DockerEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	evs, errs := k.Events(ctx)
	t.Cleanup(func() {
		cancel()
		for range evs {
		}
		for range errs {
		}
	})
	return func(what string, want func(rtm.DockerEvent) bool) rtm.DockerEvent {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case ev := <-evs:
				if want(ev) {
					return ev
				}
			case err := <-errs:
				t.Fatalf("events: %v", err)
			case <-timeout:
				t.Fatalf("no %s event", what)
			}
		}
	}
}

func action(gameID, a string) func(rtm.DockerEvent) bool {
	return func(ev rtm.DockerEvent) bool { return ev.GameID == gameID && ev.Action == a }
}

func testEvents(t *testing.T, env *k8senv.Env) {
	k, ns := adapter(t, env)
	next := collect(t, k)
	id := run(t, k, "beta")
	if ev := next("start", action("beta", "start")); ev.ContainerID != id {
		t.Errorf("start event = %+v, want container %s", ev, id)
	}
	ctx := deadline(t, 30*time.Second)
	if err := env.ExitPod(ctx, ns, "galaxy-game-beta", 3, false); err != nil {
		t.Fatal(err)
	}
	if ev := next("die", action("beta", "die")); ev.ExitCode != 3 {
		t.Errorf("die event = %+v, want exit code 3", ev)
	}
	c := waitInspect(t, k, "beta", "exited", func(c *rtm.Container) bool { return c != nil && c.State == rtm.StateExited })
	if c.ExitCode != 3 || c.OOMKilled || !c.Final {
		t.Errorf("exited = %+v", c)
	}

	id2 := run(t, k, "gamma")
	if err := env.ExitPod(ctx, ns, "galaxy-game-gamma", 137, true); err != nil {
		t.Fatal(err)
	}
	next("oom", action("gamma", "oom"))
	if ev := next("die", action("gamma", "die")); ev.ExitCode != 137 || ev.ContainerID != id2 {
		t.Errorf("die event = %+v, want exit code 137", ev)
	}
	if c := waitInspect(t, k, "gamma", "oom", func(c *rtm.Container) bool { return c != nil && c.OOMKilled }); c.ExitCode != 137 {
		t.Errorf("oom killed = %+v", c)
	}
}

func testStopRemove(t *testing.T, env *k8senv.Env) {
	k, ns := adapter(t, env)
	next := collect(t, k)
	id := run(t, k, "delta")
	ctx := deadline(t, time.Minute)
	if err := k.Stop(ctx, id, 2*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if ev := next("die", action("delta", "die")); ev.ExitCode != 0 {
		t.Errorf("die event = %+v, want exit code 0", ev)
	}
	c, err := k.Inspect(ctx, "delta")
	if err != nil || c.ID != id || c.State != rtm.StateExited || !c.Final || c.ExitCode != 0 {
		t.Fatalf("after Stop: %+v %v; want the exited Pod kept", c, err)
	}
	if err := k.Stop(ctx, id, time.Second); err != nil {
		t.Errorf("Stop of a stopped Pod: %v", err)
	}
	if err := k.Remove(ctx, id); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	next("destroy", action("delta", "destroy"))
	if _, err := k.Inspect(ctx, "delta"); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Inspect after Remove: %v, want not found", err)
	}
	if err := k.Remove(ctx, id); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Remove again: %v, want not found", err)
	}
	if _, err := env.Client().CoreV1().PersistentVolumeClaims(ns).Get(ctx, "galaxy-game-delta", metav1.GetOptions{}); err != nil {
		t.Errorf("the claim went with the Pod: %v", err)
	}
	// A start after a stop makes a new Pod on the same claim.
	if id2 := run(t, k, "delta"); id2 == id {
		t.Errorf("the restarted Pod has the old id")
	}
	if rc, err := k.Logs(ctx, "nobody", 10, false, false); err == nil {
		_ = rc.Close()
		t.Errorf("Logs of a game without a Pod: no error")
	} else if !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Logs of a game without a Pod: %v, want not found", err)
	}
	if rc, err := k.Logs(ctx, "delta", 10, false, false); err == nil {
		_, _ = io.Copy(io.Discard, rc)
		_ = rc.Close()
	} else if !errors.Is(err, rtm.ErrConflict) && !errors.Is(err, rtm.ErrUnavailable) {
		t.Errorf("Logs: %v, want output, or conflict (kwok's nodes keep none)", err)
	}
}

func testUnschedulable(t *testing.T, env *k8senv.Env) {
	k, _ := adapter(t, env, func(o *kube.Options) { o.StartTimeout = 3 * time.Second })
	ctx := deadline(t, time.Minute)
	s := spec("epsilon")
	s.MemoryBytes = 1 << 50 // no node has a petabyte
	id, err := k.Create(ctx, s)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	err = k.Start(ctx, id)
	var rerr *rtm.Error
	if !errors.As(err, &rerr) || rerr.Code != rtm.CodeContainerStartFailed || !strings.Contains(rerr.Message, "not scheduled") {
		t.Fatalf("Start = %v, want container_start_failed saying it is not scheduled", err)
	}
	if err := k.Remove(ctx, id); err != nil {
		t.Errorf("Remove of the pending Pod: %v", err)
	}
}

func testForeignName(t *testing.T, env *k8senv.Env) {
	k, ns := adapter(t, env)
	ctx := deadline(t, time.Minute)
	foreign := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "galaxy-game-zeta", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "other", Image: "busybox:1.36.0"}}}}
	if _, err := env.Client().CoreV1().Pods(ns).Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := k.Create(ctx, spec("zeta"))
	var rerr *rtm.Error
	if !errors.As(err, &rerr) || rerr.Code != rtm.CodeContainerStartFailed {
		t.Fatalf("Create = %v, want container_start_failed (the name is taken)", err)
	}
	if _, err := k.Inspect(ctx, "zeta"); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Inspect sees a Pod RTM does not own: %v", err)
	}
}

func testAccess(t *testing.T, env *k8senv.Env) {
	k, ns := adapter(t, env)
	ctx := deadline(t, time.Minute)
	if err := k.CheckAccess(ctx); err != nil {
		t.Errorf("CheckAccess as admin: %v", err)
	}
	_, cfg, err := env.AddUser("nobody", nil)
	if err != nil {
		t.Fatal(err)
	}
	weak, err := kube.New(kube.Options{Config: cfg, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	err = weak.CheckAccess(ctx)
	if err == nil || !strings.Contains(err.Error(), "create pods") || !strings.Contains(err.Error(), ns) {
		t.Errorf("CheckAccess without permissions = %v, want the verbs it may not use", err)
	}
}

func testLostNode(t *testing.T, env *k8senv.Env) {
	k, ns := adapter(t, env)
	next := collect(t, k)
	run(t, k, "eta")
	ctx := deadline(t, 2*time.Minute)
	pod, err := env.Client().CoreV1().Pods(ns).Get(ctx, "galaxy-game-eta", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	if err := env.LoseNode(ctx, pod.Spec.NodeName); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.RestoreNode(context.Background(), pod.Spec.NodeName) })
	next("destroy", action("eta", "destroy"))
	t.Logf("the lost node's Pod was gone %s after the node went not ready", time.Since(lost).Round(100*time.Millisecond))
	if _, err := k.Inspect(ctx, "eta"); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Inspect after the eviction: %v, want not found", err)
	}
}

// BeginStart answers a Pod still on its way with *rtm.Starting (the reconciler's worker is free
// meanwhile), the events say when it runs or cannot, and a stop of a Pod that never ran is quick.
func testBeginStart(t *testing.T, env *k8senv.Env) {
	k, _ := adapter(t, env, func(o *kube.Options) { o.StartTimeout = 4 * time.Second })
	next := collect(t, k)
	ctx := deadline(t, time.Minute)
	var starting *rtm.Starting

	// One that runs: under way or already running, then running.
	id, err := k.Create(ctx, spec("eta"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := k.BeginStart(ctx, id); err != nil && !errors.As(err, &starting) {
		t.Fatalf("BeginStart = %v, want nil or *rtm.Starting", err)
	}
	next("start", action("eta", "start"))
	if err := k.BeginStart(ctx, id); err != nil {
		t.Fatalf("BeginStart of a running Pod = %v", err)
	}

	// One no node has room for: under way, with what is left of the start timeout, until that
	// runs out.
	s := spec("theta")
	s.MemoryBytes = 1 << 50
	id, err = k.Create(ctx, s)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	// Within the start timeout once the scheduler has said no, five of them before it looked
	// (plus the second the API's whole-second times may hide).
	if err := k.BeginStart(ctx, id); !errors.As(err, &starting) || starting.Within <= 0 || starting.Within > 21*time.Second {
		t.Fatalf("BeginStart = %v, want *rtm.Starting within 21s", err)
	}
	waitInspect(t, k, "theta", "a created container starting by itself", func(c *rtm.Container) bool {
		return c != nil && c.Starting && c.State == rtm.StateCreated
	})
	var rerr *rtm.Error
	if !waitFor(30*time.Second, func() bool { return errors.As(k.BeginStart(ctx, id), &rerr) }) ||
		rerr.Code != rtm.CodeContainerStartFailed || !strings.Contains(rerr.Message, "not scheduled") {
		t.Fatalf("BeginStart after the start timeout = %v, want container_start_failed, not scheduled", rerr)
	}
	// A stop of a Pod that never ran takes no grace: nothing runs, there is no exit code.
	if err := k.Stop(ctx, id, time.Hour); err != nil {
		t.Fatalf("Stop of a Pod that never ran: %v", err)
	}
	if c, err := k.Inspect(ctx, "theta"); err != nil || c.Starting || !c.Final {
		t.Fatalf("after Stop: %+v %v, want final, not starting", c, err)
	}
	if err := k.Remove(ctx, id); err != nil {
		t.Fatalf("Remove: %v", err)
	}

	// One whose image cannot be pulled: an update event, then BeginStart says why.
	s = spec("iota")
	s.ImageRef = k8senv.UnpullableRegistry + "/rtm-kube-test/game:1.0.0"
	if id, err = k.Create(ctx, s); err != nil {
		t.Fatalf("Create: %v", err)
	}
	next("update", action("iota", "update"))
	if err := k.BeginStart(ctx, id); !errors.As(err, &rerr) || rerr.Code != rtm.CodeImagePullFailed {
		t.Fatalf("BeginStart = %v, want image_pull_failed", err)
	}
}
