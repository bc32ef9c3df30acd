package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/galaxy-platform/rtmanager/runtime/kube"
	"github.com/galaxy-platform/rtmanager/test/harness"
	"github.com/galaxy-platform/rtmanager/test/k8senv"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// The engine image of the start jobs. kwok runs no containers, so it is never pulled; it only has
// to pass RTM's allow-list.
const (
	engineRepo  = "rtm-bench/game"
	engineImage = engineRepo + ":1.0.0"
)

// world is the harness world (PostgreSQL, Redis, the rtmanager binary) and the control plane
// with its kwok nodes.
type world struct {
	*harness.World
	kube     *k8senv.Env
	cs       kubernetes.Interface // admin client without a client-side rate limit, as RTM's
	versions string               // of the control plane's binaries
	prebind  bool                 // the claims are bound before a run (provision)
	profile  bool                 // -profile: what the API server did in each burst (apiProfile)
	nsSeq    int
}

// setUp starts the world; on error whatever was started is torn down by close.
func setUp(ctx context.Context, w *world, p params) error {
	w.World = &harness.World{}
	harness.Logf("setting up: PostgreSQL, Redis and the rtmanager binary; a control plane with %d kwok nodes", p.nodes)
	err := testenv.Parallel(
		// No engine image: kwok runs no containers.
		func() error {
			return harness.SetUp(ctx, w.World, harness.Options{Name: "benchk8s", EngineRepo: engineRepo, Keep: p.keep, Durable: true})
		},
		func() (err error) {
			lctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
			defer cancel()
			// Each node holds 110 Pods (the default) of RTM's default engine (1 CPU, 1 GiB): 128
			// CPUs make the Pod count the limit. A late heartbeat of a busy kwok must not make a
			// node NotReady in the middle of a run: a grace period of two minutes.
			w.kube, err = k8senv.Launch(lctx, k8senv.Options{Nodes: p.nodes, Capacity: k8senv.Capacity{CPU: "128"},
				NodeMonitorGracePeriod: 2 * time.Minute})
			return err
		},
	)
	if err != nil {
		return err
	}
	harness.Logf("control plane and %d nodes ready in %s", p.nodes, w.kube.Timings().Ready.Round(100*time.Millisecond))
	if w.profile = p.profile > 0; w.profile {
		if err := w.enableStatements(ctx); err != nil {
			return err
		}
	}
	// The bare client's client is RTM's (no client-side rate limit, protobuf): the two sides
	// differ only in what RTM does around the requests.
	if w.cs, err = kubernetes.NewForConfig(kube.ClientConfig(w.kube.Config())); err != nil {
		return err
	}
	w.versions = binVersions()
	if w.prebind = !p.provisioner; w.prebind {
		if err := w.createPrebindClass(ctx); err != nil {
			return err
		}
	}
	return nil
}

// close stops the control plane and tears the harness world down.
func (w *world) close() {
	if w.kube != nil {
		w.kube.Stop()
	}
	if w.World != nil {
		w.World.Close()
	}
}

// binVersions reads the versions of the control plane's binaries.
func binVersions() string {
	dir, err := k8senv.BinDir(k8senv.Options{})
	if err != nil {
		return "unknown"
	}
	var parts []string
	for _, b := range []string{"kube-apiserver", "etcd", "kwok"} {
		out, _ := exec.Command(filepath.Join(dir, b), "--version").Output()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		parts = append(parts, line)
	}
	return strings.Join(parts, "; ")
}

// useNamespace creates a namespace of its own for one run; release empties it (clearNamespace),
// also after ctx has ended.
func (w *world) useNamespace(ctx context.Context, what string) (ns string, release func(), err error) {
	w.nsSeq++
	ns = fmt.Sprintf("%s-%s-%d", strings.ToLower(w.Run), what, w.nsSeq)
	_, err = w.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("creating namespace %s: %w", ns, err)
	}
	return ns, func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		if err := w.clearNamespace(cctx, ns); err != nil {
			harness.Logf("  emptying namespace %s: %v", ns, err)
		}
	}, nil
}

// clearNamespace deletes what a run left in ns: its Pods (their capacity is the next run's),
// Services, claims and the claims' volumes, finalizers first (no controller removes them here).
// The namespace itself stays: no namespace controller runs.
func (w *world) clearNamespace(ctx context.Context, ns string) error {
	t0 := time.Now()
	core := w.cs.CoreV1()
	zero := int64(0)
	pods, err := core.Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var withFinalizers []string
	for _, p := range pods.Items {
		if len(p.Finalizers) > 0 {
			withFinalizers = append(withFinalizers, p.Name)
		}
	}
	if err := w.each(ctx, withFinalizers, func(ctx context.Context, name string) error {
		_, err := core.Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		return err
	}); err != nil {
		return err
	}
	// A collection of 10,000 Pods outlasts the API server's request timeout (it goes on deleting
	// after answering 504): delete again until none is left.
	for attempt := 0; ; attempt++ {
		left, err := core.Pods(ns).List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil {
			return err
		}
		if len(left.Items) == 0 {
			break
		}
		if err := core.Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{}); err != nil {
			if attempt >= 10 {
				return fmt.Errorf("deleting the pods of %s: %w", ns, err)
			}
			harness.Logf("  deleting the pods of %s: %v; again", ns, err)
		}
		harness.SleepCtx(ctx, 500*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	svcs, err := core.Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if err := w.each(ctx, names(svcs.Items, func(s corev1.Service) string { return s.Name }), func(ctx context.Context, name string) error {
		return core.Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
	}); err != nil {
		return err
	}
	claims, err := core.PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var volumes []string
	for _, c := range claims.Items {
		if c.Spec.VolumeName != "" {
			volumes = append(volumes, c.Spec.VolumeName)
		}
	}
	if err := w.each(ctx, names(claims.Items, func(c corev1.PersistentVolumeClaim) string { return c.Name }), func(ctx context.Context, name string) error {
		if _, err := core.PersistentVolumeClaims(ns).Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil {
			return err
		}
		return core.PersistentVolumeClaims(ns).Delete(ctx, name, metav1.DeleteOptions{})
	}); err != nil {
		return err
	}
	if err := w.each(ctx, volumes, func(ctx context.Context, name string) error {
		if _, err := core.PersistentVolumes().Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil {
			return err
		}
		return core.PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{})
	}); err != nil {
		return err
	}
	harness.Logf("  namespace %s emptied (%d pods, %d services, %d claims and their volumes) in %s", ns, len(pods.Items),
		len(svcs.Items), len(claims.Items), time.Since(t0).Round(100*time.Millisecond))
	return nil
}

func names[T any](items []T, name func(T) string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = name(it)
	}
	return out
}

// each calls f for every name, 32 at a time; an object already gone is no error.
func (w *world) each(ctx context.Context, items []string, f func(context.Context, string) error) error {
	jobs := make(chan string)
	var mu sync.Mutex
	var errs []error
	wait := harness.Workers(32, jobs, func(name string) {
		if err := f(ctx, name); err != nil && !apierrors.IsNotFound(err) {
			mu.Lock()
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			mu.Unlock()
		}
	})
	for _, it := range items {
		jobs <- it
	}
	close(jobs)
	wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d failed, first: %w", len(errs), errs[0])
	}
	return nil
}

// perNode counts the Pods of ns by node and returns the fewest and the most a node holds, over
// every node of the cluster (a node with none counts as 0), and how many Pods run.
func (w *world) perNode(ctx context.Context, ns string) (lo, hi, running int, err error) {
	pods, err := w.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, 0, 0, err
	}
	count := map[string]int{}
	for _, n := range w.kube.Nodes() {
		count[n] = 0
	}
	for _, p := range pods.Items {
		if p.Spec.NodeName != "" {
			count[p.Spec.NodeName]++
		}
		if podRunning(&p) {
			running++
		}
	}
	lo = -1
	for _, c := range count {
		if lo < 0 || c < lo {
			lo = c
		}
		hi = max(hi, c)
	}
	return lo, hi, running, nil
}

// podRunning is the adapter's condition for a started engine: its container runs.
func podRunning(p *corev1.Pod) bool {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running != nil {
			return true
		}
	}
	return false
}
