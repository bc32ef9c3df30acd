// Package k8senv starts a real Kubernetes control plane for the tests of the Kubernetes runtime:
// kube-apiserver and etcd (through controller-runtime's envtest), kube-scheduler,
// kube-controller-manager (node lifecycle, taint eviction, Pod GC) and kwok, which plays the
// kubelet of a few fake nodes. Pods are placed by the real scheduler, become Running with a Pod IP
// in 127.100.0.0/16, and are evicted by the real controller-manager from a lost node. Nothing is
// downloaded: the binaries come from `make k8s-bins` (bin/k8s at the module root, or
// RTM_K8S_BINS).
//
// Every address is loopback: the components listen on free ports of 127.0.0.1, node IPs are
// 127.99.0.1 and Pod IPs 127.100.x.y, so a prober that dials a Pod IP never leaves the machine and
// a test may bind a stand-in engine on a Pod's IP.
//
// What kwok does for a kubelet (stages.yaml):
//
//   - a Pod bound to a node becomes Running and Ready with an IP, unless its image comes from
//     UnpullableRegistry: then it stays Pending with ErrImagePull, then ImagePullBackOff;
//   - ExitPod: its container terminates with an exit code (OOMKilled if asked);
//   - a Pod deleted while it holds the finalizer FinalizerKeepExited is terminated (exit code 0,
//     or the AnnotationStopExitCode annotation's; 137 ContainerStatusUnknown if it never ran) and
//     kept with that status until the finalizer is removed; then it is gone. A Pod without that
//     finalizer is deleted at once;
//   - LoseNode: a node reports NotReady (the controller-manager taints it and evicts its Pods);
//     CutNode: kwok lets go of a node, its heartbeat stops and it goes Unknown after the node
//     monitor grace period.
//
// PersistentVolumeClaims of StorageClass (the default class) are bound at once to a PV the harness
// creates (nothing is mounted: kwok runs no containers).
package k8senv

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// Names the harness and its kwok stages agree on.
const (
	// EnvBins names the directory holding the binaries (default: bin/k8s at the module root).
	EnvBins = "RTM_K8S_BINS"
	// EnvKeep set to 1 keeps the work dir (logs, kubeconfig) after Stop, for a post-mortem.
	EnvKeep = "RTM_K8SENV_KEEP"

	// FinalizerKeepExited is the finalizer RTM puts on a Pod before deleting it: kwok then
	// terminates the container and keeps the Pod, with its exit code, until the finalizer goes.
	FinalizerKeepExited = "rtmanager.galaxy.io/keep-exited"
	// AnnotationStopExitCode on a Pod sets the exit code its container reports when the Pod is
	// deleted holding FinalizerKeepExited (default 0, reason Completed; else reason Error).
	AnnotationStopExitCode = "rtm.test/stop-exit-code"
	// AnnotationExitCode and AnnotationExitReason drive ExitPod.
	AnnotationExitCode   = "rtm.test/exit-code"
	AnnotationExitReason = "rtm.test/exit-reason"
	// AnnotationNodeNotReady set to "true" on a node makes kwok report it NotReady (LoseNode).
	AnnotationNodeNotReady = "rtm.test/node-not-ready"
	// UnpullableRegistry is a registry nothing serves (the Docker suites use it too): a Pod with
	// an image from it (UnpullableRegistry + "/repo:tag") stays Pending, its container waiting
	// with ErrImagePull and, a second later, ImagePullBackOff.
	UnpullableRegistry = "127.0.0.1:1"
	// AnnotationKwokNode with value "fake" marks the nodes kwok manages.
	AnnotationKwokNode = "kwok.x-k8s.io/node"

	// PodCIDR is where kwok takes Pod IPs from, NodeIP every node's InternalIP, ServiceCIDR the
	// apiserver's service range: all loopback.
	PodCIDR     = "127.100.0.0/16"
	NodeIP      = "127.99.0.1"
	ServiceCIDR = "127.98.0.0/16"

	// StorageClass is the default StorageClass; the harness binds its claims at once.
	StorageClass = "k8senv"
	// provisioner is StorageClass's provisioner name.
	provisioner = "k8senv.rtm.test/bind-at-once"

	// controllers are the kube-controller-manager controllers that matter with fake nodes.
	controllers = "node-lifecycle-controller,taint-eviction-controller,pod-garbage-collector-controller"

	workDirPrefix = "rtm-k8senv-"
)

// binaries are the files Launch needs in the bin dir.
var binaries = []string{"kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "kwok"}

//go:embed stages.yaml
var stagesYAML []byte

// ErrNoBinaries is returned (wrapped) by Launch when the bin dir lacks a binary; Start skips the
// test then, or fails it under RTM_E2E_REQUIRED=1.
var ErrNoBinaries = errors.New("k8senv: Kubernetes binaries not built (make k8s-bins)")

// Capacity is what a fake node offers the scheduler, in Kubernetes quantities ("32", "256Gi",
// "110"). An empty field takes the default: 32 CPUs, 256Gi of memory, 110 Pods.
type Capacity struct {
	CPU    string
	Memory string
	Pods   string
}

func (c Capacity) list() (corev1.ResourceList, error) {
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	l := corev1.ResourceList{}
	for name, v := range map[corev1.ResourceName]string{
		corev1.ResourceCPU:    def(c.CPU, "32"),
		corev1.ResourceMemory: def(c.Memory, "256Gi"),
		corev1.ResourcePods:   def(c.Pods, "110"),
	} {
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return nil, fmt.Errorf("k8senv: node capacity %s=%q: %w", name, v, err)
		}
		l[name] = q
	}
	return l, nil
}

// Options shape the environment; the zero value is three ample nodes.
type Options struct {
	// Nodes is how many fake nodes Launch creates (kwok-node-0, kwok-node-1, …); 0 means 3.
	Nodes int
	// Capacity is each node's capacity (see Capacity for the defaults).
	Capacity Capacity
	// NodeMonitorGracePeriod is how long a node may go without a heartbeat before the
	// controller-manager calls it Unknown (CutNode); 0 means 10 s. kwok renews a node's lease
	// every quarter of a lease that lasts 4/5 of it. Raise it on a machine so loaded that
	// renewals could be late.
	NodeMonitorGracePeriod time.Duration
	// BinDir holds the binaries; empty means RTM_K8S_BINS, else bin/k8s at the module root.
	BinDir string
}

// Timings are how long Launch took.
type Timings struct {
	// ControlPlane is etcd and kube-apiserver up (envtest's Start).
	ControlPlane time.Duration
	// Ready is everything up: scheduler and controller-manager healthy, every node Ready.
	Ready time.Duration
}

// Env is a running control plane with its fake nodes.
type Env struct {
	opts    Options
	binDir  string
	workDir string

	te         *envtest.Environment
	cfg        *rest.Config
	cs         *kubernetes.Clientset
	kubeconfig string
	timings    Timings

	mu    sync.Mutex
	procs []*proc
	nodes []string
	users int

	stopProvisioner context.CancelFunc
	provisionerDone chan struct{}
	stopOnce        sync.Once
}

// BinDir returns the directory Launch takes the binaries from for opts: opts.BinDir, else
// RTM_K8S_BINS, else bin/k8s at the module root.
func BinDir(opts Options) (string, error) {
	if opts.BinDir != "" {
		return opts.BinDir, nil
	}
	if d := os.Getenv(EnvBins); d != "" {
		return d, nil
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin", "k8s"), nil
}

// Start launches an environment for a test, or skips the test when the binaries are not built
// (fails it under RTM_E2E_REQUIRED=1). The test's cleanup stops everything and removes the work
// dir, after logging the tail of every component's log if the test failed.
func Start(tb testing.TB, opts Options) *Env {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e, err := Launch(ctx, opts)
	if errors.Is(err, ErrNoBinaries) {
		if os.Getenv(testenv.EnvE2ERequired) == "1" {
			tb.Fatalf("%v (%s=1 requires them)", err, testenv.EnvE2ERequired)
		}
		tb.Skipf("%v", err)
	}
	if err != nil {
		tb.Fatalf("k8senv: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("k8senv logs in %s:\n%s", e.workDir, e.logTails(40))
		}
		e.Stop()
	})
	return e
}

// Launch starts etcd, kube-apiserver, kube-scheduler, kube-controller-manager and kwok, creates
// opts.Nodes fake nodes and waits until they are Ready. ctx bounds the start-up only: the
// processes run until Stop. On error everything already started is stopped again and the error
// carries the tail of the components' logs.
func Launch(ctx context.Context, opts Options) (*Env, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.NodeMonitorGracePeriod == 0 {
		opts.NodeMonitorGracePeriod = 10 * time.Second
	}
	if opts.NodeMonitorGracePeriod < 2*time.Second {
		return nil, fmt.Errorf("k8senv: NodeMonitorGracePeriod %s is under 2 s", opts.NodeMonitorGracePeriod)
	}
	if _, err := opts.Capacity.list(); err != nil {
		return nil, err
	}
	binDir, err := BinDir(opts)
	if err != nil {
		return nil, err
	}
	if binDir, err = filepath.Abs(binDir); err != nil {
		return nil, err
	}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return nil, fmt.Errorf("%w: no %s in %s", ErrNoBinaries, b, binDir)
		}
	}

	base := os.TempDir()
	dir, err := testenv.OwnedWorkDir(base, workDirPrefix, reapStale)
	if err != nil {
		return nil, fmt.Errorf("k8senv: %w", err)
	}
	e := &Env{opts: opts, binDir: binDir, workDir: dir}
	ok := false
	defer func() {
		if !ok {
			e.Stop()
		}
	}()
	fail := func(err error) (*Env, error) {
		return nil, fmt.Errorf("%w\n%s", err, e.logTails(20))
	}

	began := time.Now()
	if err := e.startControlPlane(ctx); err != nil {
		return fail(err)
	}
	e.timings.ControlPlane = time.Since(began)

	schedPort, err := e.startScheduler()
	if err != nil {
		return fail(err)
	}
	kcmPort, err := e.startControllerManager()
	if err != nil {
		return fail(err)
	}
	if err := e.startKwok(); err != nil {
		return fail(err)
	}
	if err := e.createStorageClass(ctx); err != nil {
		return fail(err)
	}
	e.startProvisioner()

	for i := range opts.Nodes {
		if err := e.createNode(ctx, Node{Name: fmt.Sprintf("kwok-node-%d", i), Capacity: opts.Capacity}); err != nil {
			return fail(err)
		}
	}
	for _, h := range []struct {
		name string
		port int
	}{{"kube-scheduler", schedPort}, {"kube-controller-manager", kcmPort}} {
		if err := e.waitHealthy(ctx, h.name, h.port); err != nil {
			return fail(err)
		}
	}
	for _, n := range e.Nodes() {
		if err := e.waitNodeReady(ctx, n, corev1.ConditionTrue); err != nil {
			return fail(err)
		}
	}
	e.timings.Ready = time.Since(began)
	ok = true
	return e, nil
}

// startControlPlane runs etcd and kube-apiserver through envtest, with their data, certificates
// and logs in the work dir, and writes the admin kubeconfig the other components (and RTM) use.
func (e *Env) startControlPlane(ctx context.Context) error {
	apiLog, err := e.openLog("kube-apiserver")
	if err != nil {
		return err
	}
	etcdLog, err := e.openLog("etcd")
	if err != nil {
		return err
	}
	for _, d := range []string{"apiserver", "etcd"} {
		if err := os.Mkdir(filepath.Join(e.workDir, d), 0o700); err != nil {
			return fmt.Errorf("k8senv: %w", err)
		}
	}
	api := &envtest.APIServer{CertDir: filepath.Join(e.workDir, "apiserver"), Out: apiLog, Err: apiLog}
	// Loopback everywhere: the apiserver's own Service endpoint may not be loopback, so it keeps
	// none (nothing here dials it), and it does not depend on the host's default route.
	api.Configure().
		Set("service-cluster-ip-range", ServiceCIDR).
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none")
	etcd := &envtest.Etcd{DataDir: filepath.Join(e.workDir, "etcd"), Out: etcdLog, Err: etcdLog}
	e.te = &envtest.Environment{
		ControlPlane:             envtest.ControlPlane{APIServer: api, Etcd: etcd},
		BinaryAssetsDirectory:    e.binDir,
		DownloadBinaryAssets:     false,
		ControlPlaneStartTimeout: time.Minute,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// envtest reads these variables before BinaryAssetsDirectory; they must not point elsewhere.
	for _, v := range []string{"TEST_ASSET_KUBE_APISERVER", "TEST_ASSET_ETCD", "KUBEBUILDER_ASSETS", "USE_EXISTING_CLUSTER"} {
		if os.Getenv(v) != "" {
			return fmt.Errorf("k8senv: %s is set; unset it (the harness takes its binaries from %s)", v, e.binDir)
		}
	}
	cfg, err := e.te.Start()
	e.recordChildren()
	if err != nil {
		return fmt.Errorf("k8senv: starting etcd and kube-apiserver: %w", err)
	}
	e.cfg = rest.CopyConfig(cfg)
	e.cfg.QPS, e.cfg.Burst = 500, 1000
	if e.cs, err = kubernetes.NewForConfig(e.cfg); err != nil {
		return fmt.Errorf("k8senv: client: %w", err)
	}
	e.kubeconfig, _, err = e.addUser("k8senv-admin", []string{"system:masters"})
	return err
}

// Config returns an admin client configuration (system:masters).
func (e *Env) Config() *rest.Config { return rest.CopyConfig(e.cfg) }

// Client returns an admin clientset.
func (e *Env) Client() kubernetes.Interface { return e.cs }

// Kubeconfig returns the path of an admin kubeconfig file (client certificate inline), usable as
// KUBECONFIG by RTM or kubectl. It lives until Stop.
func (e *Env) Kubeconfig() string { return e.kubeconfig }

// WorkDir returns the directory holding the components' logs and configuration.
func (e *Env) WorkDir() string { return e.workDir }

// Timings returns how long Launch took.
func (e *Env) Timings() Timings { return e.timings }

// Nodes returns the names of the fake nodes, in creation order.
func (e *Env) Nodes() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.nodes...)
}

// AddUser provisions a user authenticated by a client certificate, member of groups (none: the
// user may do nothing until a RoleBinding says so), and returns a kubeconfig file for it (valid
// until Stop) and its client configuration.
func (e *Env) AddUser(name string, groups []string) (kubeconfig string, cfg *rest.Config, err error) {
	return e.addUser(name, groups)
}

func (e *Env) addUser(name string, groups []string) (string, *rest.Config, error) {
	u, err := e.te.AddUser(envtest.User{Name: name, Groups: groups}, &rest.Config{QPS: 500, Burst: 1000})
	if err != nil {
		return "", nil, fmt.Errorf("k8senv: adding user %s: %w", name, err)
	}
	b, err := u.KubeConfig()
	if err != nil {
		return "", nil, fmt.Errorf("k8senv: kubeconfig of %s: %w", name, err)
	}
	e.mu.Lock()
	e.users++
	path := filepath.Join(e.workDir, fmt.Sprintf("user-%d-%s.kubeconfig", e.users, name))
	e.mu.Unlock()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", nil, fmt.Errorf("k8senv: %w", err)
	}
	return path, u.Config(), nil
}

// Namespace creates a namespace named after the test and returns its name. The test's cleanup
// deletes its Pods (dropping their finalizers first); the namespace itself stays (no namespace
// controller runs) until Stop.
func (e *Env) Namespace(tb testing.TB) string {
	tb.Helper()
	name := namespaceName(tb.Name())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("k8senv: creating namespace %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.clearPods(ctx, name); err != nil {
			tb.Logf("k8senv: clearing namespace %s: %v", name, err)
		}
	})
	return name
}

// namespaceName turns a test name into a DNS label: lower case, [a-z0-9-], at most 63 characters
// with a random suffix.
func namespaceName(test string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(test) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := strings.Trim(b.String(), "-")
	if len(s) > 50 {
		s = strings.TrimRight(s[:50], "-")
	}
	if s == "" {
		s = "t"
	}
	return testenv.RunID(s + "-")
}

func (e *Env) clearPods(ctx context.Context, ns string) error {
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		if len(p.Finalizers) > 0 {
			_, err := e.cs.CoreV1().Pods(ns).Patch(ctx, p.Name, typeMerge, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	return e.cs.CoreV1().Pods(ns).DeleteCollection(ctx, *metav1.NewDeleteOptions(0), metav1.ListOptions{})
}

// Stop kills every process, stops envtest's control plane and removes the work dir (unless
// RTM_K8SENV_KEEP=1). It is idempotent and safe on a partly started Env.
func (e *Env) Stop() {
	e.stopOnce.Do(func() {
		if e.stopProvisioner != nil {
			e.stopProvisioner()
			<-e.provisionerDone
		}
		e.mu.Lock()
		procs := e.procs
		e.mu.Unlock()
		// kwok and the controllers first, so they do not log the apiserver's going as errors.
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
		if e.te != nil {
			_ = e.te.Stop()
		}
		if os.Getenv(EnvKeep) == "1" {
			fmt.Fprintf(os.Stderr, "k8senv: %s=1: keeping %s\n", EnvKeep, e.workDir)
			return
		}
		_ = os.RemoveAll(e.workDir)
	})
}

// createStorageClass makes StorageClass, the default class, whose claims the provisioner binds.
func (e *Env) createStorageClass(ctx context.Context) error {
	immediate := storagev1.VolumeBindingImmediate
	retain := corev1.PersistentVolumeReclaimRetain
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{
			Name:        StorageClass,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		Provisioner:       provisioner,
		ReclaimPolicy:     &retain,
		VolumeBindingMode: &immediate,
	}
	if _, err := e.cs.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("k8senv: creating StorageClass %s: %w", StorageClass, err)
	}
	return nil
}
