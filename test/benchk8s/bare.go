package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/runtime/kube"
	"github.com/galaxy-platform/rtmanager/test/harness"
)

// bareResult is one run of the bare client.
type bareResult struct {
	dur    time.Duration // first create → every Pod running
	lo, hi int           // Pods per node
}

// bareRun creates n games' objects in a fresh namespace the way RTM's adapter does for a new
// game — the state claim, the headless Service, then the Pod (kube.Kube.Pod, the adapter's own),
// one game after another in each of conc workers — with a client that has no client-side rate
// limit (as RTM's), and measures until every Pod runs. Then it empties the namespace.
func (w *world) bareRun(ctx context.Context, n, conc int, what string) (*bareResult, error) {
	ns, release, err := w.useNamespace(ctx, what)
	if err != nil {
		return nil, err
	}
	defer release()
	b, err := newBare(w, ns)
	if err != nil {
		return nil, err
	}
	games := make([]string, n)
	for i := range games {
		games[i] = fmt.Sprintf("%s-%s-%05d", w.Run, what, i)
	}
	if err := w.provision(ctx, b, games); err != nil {
		return nil, err
	}
	watch, err := w.watchRunning(ctx, ns, n)
	if err != nil {
		return nil, err
	}
	defer watch.stop()

	harness.Logf("  bare client: %d games (claim, Service, Pod) at concurrency %d in %s", n, conc, ns)
	jobs := make(chan int)
	var failed atomic.Int64
	var firstErr sync.Once
	stopAPI := w.apiProfile(ctx, "bare-"+what, n)
	t0 := time.Now()
	wait := harness.Workers(conc, jobs, func(i int) {
		if err := b.create(ctx, games[i]); err != nil {
			failed.Add(1)
			firstErr.Do(func() { harness.Logf("  bare client: %v", err) })
		}
	})
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wait()
	created := time.Since(t0)
	if f := failed.Load(); f > 0 {
		return nil, fmt.Errorf("bare client: %d of %d games not created", f, n)
	}
	at, err := watch.wait(ctx, 2*time.Minute+time.Duration(n)*50*time.Millisecond)
	if err != nil {
		return nil, fmt.Errorf("bare client: %w", err)
	}
	stopAPI()
	res := &bareResult{dur: at.Sub(t0)}
	if res.lo, res.hi, _, err = w.perNode(ctx, ns); err != nil {
		return nil, err
	}
	harness.Logf("  bare client: all %d created in %s, all running in %s (%.0f/s); pods per node %d–%d",
		n, created.Round(10*time.Millisecond), res.dur.Round(10*time.Millisecond), float64(n)/res.dur.Seconds(), res.lo, res.hi)
	return res, nil
}

// calibrate runs the bare client at each concurrency on n games and returns the fastest; the
// rounds use it. One level is no calibration.
func (w *world) calibrate(ctx context.Context, r *report, n int, levels []int) (int, error) {
	if len(levels) == 1 {
		return levels[0], nil
	}
	best, bestDur := 0, time.Duration(0)
	err := r.Phases.Run(fmt.Sprintf("%d games: bare client calibration", n), func() error {
		for _, c := range levels {
			res, err := w.bareRun(ctx, n, c, fmt.Sprintf("calib-%d-%d", n, c))
			if err != nil {
				return err
			}
			r.calib = append(r.calib, calibPoint{n: n, conc: c, dur: res.dur})
			if best == 0 || res.dur < bestDur {
				best, bestDur = c, res.dur
			}
		}
		return nil
	})
	harness.Logf("  bare client calibration at %d games: concurrency %d is fastest (%s)", n, best, bestDur.Round(10*time.Millisecond))
	return best, err
}

// bare builds and creates a game's objects as RTM's adapter would in namespace ns.
type bare struct {
	w    *world
	ns   string
	cfg  config.Config
	k    *kube.Kube // only for Pod: it never contacts the API server
	size resource.Quantity
}

func newBare(w *world, ns string) (*bare, error) {
	// The configuration RTM runs with (its own config package, RTM's environment of the runs).
	cfg, err := config.Load(func(k string) string {
		return w.rtmEnv("postgres://bench@127.0.0.1:1/bench?search_path=rtmanager", ns, nil)[k]
	})
	if err != nil {
		return nil, err
	}
	// The options cmd/manager's setupKube gives the adapter.
	opts := kube.Options{Config: w.kube.Config(), Namespace: ns, StorageClass: cfg.KubeStorageClass,
		StateSize: cfg.KubeStateSize, StartTimeout: cfg.KubeStartTimeout,
		EvictionSeconds: int64(cfg.KubeEvictionTolerance.Round(time.Second).Seconds()),
		Probe: kube.Probe{Port: cfg.EnginePort, Period: cfg.ProbeInterval, Timeout: cfg.ProbeTimeout,
			Threshold: cfg.ProbeFailureThreshold}}
	k, err := kube.New(opts)
	if err != nil {
		return nil, err
	}
	size, err := resource.ParseQuantity(cfg.KubeStateSize)
	if err != nil {
		return nil, err
	}
	return &bare{w: w, ns: ns, cfg: cfg, k: k, size: size}, nil
}

// objects are the game's claim, Service and Pod as the adapter creates them for a game's first
// start.
func (b *bare) objects(gameID string) (*corev1.PersistentVolumeClaim, *corev1.Service, *corev1.Pod) {
	// The spec controllers.GameReconciler gives a new game (generation 0).
	spec := rtm.ContainerSpec{GameID: gameID, ImageRef: engineImage, StateDir: kube.StateDir(gameID),
		StateMount: b.cfg.EngineStateMount, User: b.cfg.EngineUser, ReadOnlyRoot: b.cfg.EngineReadOnlyRoot,
		MemoryBytes: b.cfg.EngineMemoryBytes, NanoCPUs: b.cfg.EngineNanoCPUs, PidsLimit: b.cfg.EnginePidsLimit,
		Env: map[string]string{"GALAXY_GAME_ID": gameID, "GALAXY_STATE_DIR": b.cfg.EngineStateMount}}
	pod := b.k.Pod(spec)
	meta := metav1.ObjectMeta{Name: pod.Name, Namespace: b.ns, Labels: pod.Labels,
		Annotations: map[string]string{rtm.LabelGameID: gameID}}
	// The adapter's claim and Service (runtime/kube pods.go: claim, service).
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: meta, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: b.size}},
	}}
	if b.cfg.KubeStorageClass != "" {
		claim.Spec.StorageClassName = &b.cfg.KubeStorageClass
	}
	port := int32(b.cfg.EnginePort)
	svc := &corev1.Service{ObjectMeta: meta, Spec: corev1.ServiceSpec{
		ClusterIP:                corev1.ClusterIPNone,
		Selector:                 map[string]string{rtm.LabelOwner: rtm.OwnerValue, kube.LabelName: pod.Name},
		Ports:                    []corev1.ServicePort{{Name: "engine", Port: port, TargetPort: intstr.FromInt32(port)}},
		PublishNotReadyAddresses: true,
	}}
	return claim, svc, pod
}

// create creates the game's claim, Service and Pod, in that order, as the adapter's Create does
// for a game's first Pod; a claim that exists already (provisioned before the run) is no error,
// as for the adapter.
func (b *bare) create(ctx context.Context, gameID string) error {
	claim, svc, pod := b.objects(gameID)
	core := b.w.cs.CoreV1()
	if _, err := core.PersistentVolumeClaims(b.ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("claim of %s: %w", gameID, err)
	}
	if _, err := core.Services(b.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("service of %s: %w", gameID, err)
	}
	if _, err := core.Pods(b.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("pod of %s: %w", gameID, err)
	}
	return nil
}

// runningWatch counts the Pods of a namespace whose container runs, from an informer.
type runningWatch struct {
	stop func()
	mu   sync.Mutex
	seen map[string]bool
	want int
	at   time.Time
	done chan struct{}
}

// watchRunning starts an informer on ns's Pods and waits until it has listed them.
func (w *world) watchRunning(ctx context.Context, ns string, want int) (*runningWatch, error) {
	rw := &runningWatch{seen: map[string]bool{}, want: want, done: make(chan struct{})}
	factory := informers.NewSharedInformerFactoryWithOptions(w.cs, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Pods().Informer()
	note := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok || !podRunning(p) {
			return
		}
		rw.mu.Lock()
		defer rw.mu.Unlock()
		if rw.seen[p.Name] {
			return
		}
		rw.seen[p.Name] = true
		if len(rw.seen) == rw.want {
			rw.at = time.Now()
			close(rw.done)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: note, UpdateFunc: func(_, obj any) { note(obj) }}); err != nil {
		return nil, err
	}
	ictx, cancel := context.WithCancel(ctx)
	factory.Start(ictx.Done())
	rw.stop = func() {
		cancel()
		factory.Shutdown()
	}
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		rw.stop()
		return nil, fmt.Errorf("pods of %s not listed", ns)
	}
	return rw, nil
}

// wait returns when the last Pod began to run, or an error after timeout.
func (rw *runningWatch) wait(ctx context.Context, timeout time.Duration) (time.Time, error) {
	err := closedWithin(ctx, rw.done, timeout)
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if errors.Is(err, errTimeout) {
		return time.Time{}, fmt.Errorf("%d of %d pods running after %s", len(rw.seen), rw.want, timeout)
	}
	return rw.at, err
}

// errTimeout is closedWithin's error when the time is up.
var errTimeout = errors.New("timed out")

// closedWithin waits until done is closed; it returns ctx's error if ctx ends first, errTimeout
// once timeout has passed.
func closedWithin(ctx context.Context, done <-chan struct{}, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errTimeout
	}
}
