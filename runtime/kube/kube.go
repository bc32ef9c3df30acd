// Package kube is Runtime Manager's Kubernetes adapter: the same boundary as the Docker adapter
// (package runtime), with a game's engine as a Pod in one namespace of one cluster. Kubernetes
// types never leave the package; callers see rtm.Container, rtm.DockerEvent and errors that wrap
// rtm.ErrNotFound, ErrConflict or ErrUnavailable, or carry a contract code as *rtm.Error.
//
// What a game is here:
//   - a Pod galaxy-game-<id> (Name) with RTM's labels, restartPolicy Never (RTM decides
//     restarts), the engine's resources as requests and limits, a locked-down security context,
//     an in-memory /tmp, and a readiness probe on /healthz;
//   - a headless Service of the same name, so that http://galaxy-game-<id>:<port> (the contract's
//     engine_endpoint) resolves to the Pod in the namespace's DNS;
//   - a PersistentVolumeClaim of the same name mounted at the state mount: the game's state,
//     created before its first Pod and never deleted by RTM, as the Docker host's state dir.
//
// A Pod is created and started in one step (Create creates it, Start waits until it runs). A
// stop adds the finalizer KeepExited and deletes the Pod with the stop grace: the kubelet stops
// the engine and writes its exit code, and the Pod stays, terminated, until Remove drops the
// finalizer, as an exited container stays until it is removed. A terminated Pod cannot run
// again: it is reported Final, and a start replaces it. A Pod that Kubernetes deletes (a lost
// node, an eviction) carries no finalizer of RTM's and vanishes, which the reconciler records as
// drift, as it records a container removed behind its back.
//
// Observation is one shared informer on RTM's owner label: Inspect, List and IsEngine read its
// store (no API call at rest), and Events translates its updates into the events the Docker path
// produces (start, die with the exit code, oom, destroy, health_status).
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/runtime"
)

// Defaults applied by New to zero Options fields.
const (
	DefaultCallTimeout     = 10 * time.Second
	DefaultStartTimeout    = 2 * time.Minute
	DefaultStateSize       = "1Gi"
	DefaultEvictionSeconds = 30
)

// KeepExited is the finalizer a stop puts on a Pod before deleting it, so that the terminated Pod
// and its exit code stay until Remove.
const KeepExited = "rtmanager.galaxy.io/keep-exited"

// LabelName carries a game's object name (Name) on its Pod: the Service selects on it (a game id
// may be too long or otherwise unfit for a label value; the object name never is).
const LabelName = "com.galaxy.name"

// RequestsMetric counts the API requests the adapter makes, by verb (watches included).
const RequestsMetric = "rtmanager.kube_api_requests"

// Probe settings of the readiness probe RTM sets on every engine Pod.
type Probe struct {
	Port      int
	Period    time.Duration
	Timeout   time.Duration
	Threshold int
}

// Options configure a Kubernetes adapter.
type Options struct {
	// Config reaches the API server (from KUBECONFIG or in-cluster credentials); required.
	Config *rest.Config
	// Namespace is the one namespace RTM drives; required.
	Namespace string
	// StorageClass names the state claims' storage class; "" takes the cluster's default.
	StorageClass string
	// StateSize is each state claim's requested size (DefaultStateSize when "").
	StateSize string
	// StartTimeout bounds how long Start waits for a Pod to run (scheduled, image pulled,
	// engine started) before the start fails with container_start_failed.
	StartTimeout time.Duration
	// EvictionSeconds is how long an engine's Pod tolerates its node being not ready or
	// unreachable before Kubernetes evicts it (DefaultEvictionSeconds when zero).
	EvictionSeconds int64
	// CallTimeout bounds each API call (DefaultCallTimeout when zero).
	CallTimeout time.Duration
	// Probe is the engines' readiness probe.
	Probe Probe
	// FSGroup, when set, owns the state volume (the Pod's fsGroup).
	FSGroup *int64
	// Logger receives debug lines only; nil discards them.
	Logger *slog.Logger
	// Meter creates the request counter and the latency histogram; nil means no metrics.
	Meter metric.Meter
	// Tracer starts one span per operation (kube.<op>); nil means no tracing.
	Tracer trace.Tracer
}

// ClientConfig is cfg as RTM's client uses it: a copy without a client-side rate limiter (it
// would make RTM slower than the cluster: the API server's priority and fairness is the limit
// that matters) that speaks protobuf, as Kubernetes' own components do. Protobuf costs the API
// server and RTM less than JSON to encode and decode, for the requests and for the informer's
// list and watch; JSON stays acceptable for a server that does not offer protobuf.
func ClientConfig(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = -1, 0
	c.ContentType = apiruntime.ContentTypeProtobuf
	c.AcceptContentTypes = apiruntime.ContentTypeProtobuf + "," + apiruntime.ContentTypeJSON
	return c
}

// Kube is the Kubernetes adapter. It is safe for concurrent use once Run has synced its
// informer (WaitSynced).
type Kube struct {
	opts     Options
	log      *slog.Logger
	cs       kubernetes.Interface
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	size     resource.Quantity

	requests atomic.Int64 // API requests made, watches included
	// ops records each operation (create, start, stop, remove) as the Docker adapter records its
	// calls: a span kube.<op> and a sample of runtime.LatencyMetric.
	ops *runtime.Ops

	mu      sync.Mutex
	waiters map[types.UID]chan struct{} // closed on the next change of that Pod
	// ensured holds the games whose claim and Service are known to exist: a restart creates
	// only the Pod.
	ensured map[string]bool

	access accessCache
}

// Indexes of the informer's store.
const (
	byUID  = "uid"
	byIP   = "ip"
	byGame = "game"
)

// New returns an adapter. It does not contact the API server: Run starts the informer and Ping
// checks the server.
func New(opts Options) (*Kube, error) {
	if opts.Config == nil || opts.Namespace == "" {
		return nil, fmt.Errorf("kubernetes runtime: a config and a namespace are required")
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	if opts.EvictionSeconds <= 0 {
		opts.EvictionSeconds = DefaultEvictionSeconds
	}
	if opts.StateSize == "" {
		opts.StateSize = DefaultStateSize
	}
	size, err := resource.ParseQuantity(opts.StateSize)
	if err != nil {
		return nil, fmt.Errorf("kubernetes runtime: state size %q: %w", opts.StateSize, err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Meter == nil {
		opts.Meter = metricnoop.NewMeterProvider().Meter("github.com/galaxy-platform/rtmanager/runtime/kube")
	}
	k := &Kube{opts: opts, log: opts.Logger.With("component", "kubernetes"), size: size,
		waiters: map[types.UID]chan struct{}{}, ensured: map[string]bool{}}
	if k.ops, err = runtime.NewOps("kube", opts.Tracer, opts.Meter); err != nil {
		return nil, err
	}
	counter, err := opts.Meter.Int64Counter(RequestsMetric,
		metric.WithDescription("API requests the runtime manager made to Kubernetes, by verb."))
	if err != nil {
		return nil, fmt.Errorf("creating %s counter: %w", RequestsMetric, err)
	}
	cfg := ClientConfig(opts.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return countingTransport{next: rt, n: &k.requests, counter: counter}
	})
	if k.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	k.factory = informers.NewSharedInformerFactoryWithOptions(k.cs, 0, informers.WithNamespace(opts.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = rtm.LabelOwner + "=" + rtm.OwnerValue
		}))
	k.informer = k.factory.Core().V1().Pods().Informer()
	if err := k.informer.AddIndexers(cache.Indexers{byUID: indexUID, byIP: indexIP, byGame: indexGame}); err != nil {
		return nil, fmt.Errorf("kubernetes informer: %w", err)
	}
	// The store keeps what RTM reads of a Pod, not its managed fields: at 10,000 Pods that is
	// most of the informer's memory.
	if err := k.informer.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			p.ManagedFields = nil
		}
		return obj, nil
	}); err != nil {
		return nil, fmt.Errorf("kubernetes informer: %w", err)
	}
	if _, err := k.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    k.wake,
		UpdateFunc: func(_, obj any) { k.wake(obj) },
		DeleteFunc: k.wake,
	}); err != nil {
		return nil, fmt.Errorf("kubernetes informer: %w", err)
	}
	return k, nil
}

// Run runs the informer until ctx ends.
func (k *Kube) Run(ctx context.Context) error {
	k.factory.Start(ctx.Done())
	<-ctx.Done()
	k.factory.Shutdown()
	return nil
}

// WaitSynced waits until the informer holds every owned Pod (its first list is done), or ctx
// ends (an error).
func (k *Kube) WaitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), k.informer.HasSynced) {
		return fmt.Errorf("kubernetes: pods of namespace %s not listed: %w", k.opts.Namespace, rtm.ErrUnavailable)
	}
	return nil
}

// Requests returns how many API requests the adapter has made (watches included).
func (k *Kube) Requests() int64 { return k.requests.Load() }

// Ping checks that the API server answers /readyz within CallTimeout.
func (k *Kube) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, k.opts.CallTimeout)
	defer cancel()
	if err := k.cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
		return fmt.Errorf("kubernetes api server: %w", classify(err))
	}
	return nil
}

// Namespace is the namespace the adapter drives.
func (k *Kube) Namespace() string { return k.opts.Namespace }

// wake tells whoever waits for a change of obj's Pod.
func (k *Kube) wake(obj any) {
	p := podOf(obj)
	if p == nil {
		return
	}
	k.mu.Lock()
	if ch, ok := k.waiters[p.UID]; ok {
		close(ch)
		delete(k.waiters, p.UID)
	}
	k.mu.Unlock()
}

// changed returns a channel closed at the next change of the Pod uid. Take it before reading the
// Pod, so that no change between the read and the wait is missed.
func (k *Kube) changed(uid types.UID) <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	ch, ok := k.waiters[uid]
	if !ok {
		ch = make(chan struct{})
		k.waiters[uid] = ch
	}
	return ch
}

// podOf returns the Pod of an informer notification, also from a deletion's tombstone.
func podOf(obj any) *corev1.Pod {
	switch o := obj.(type) {
	case *corev1.Pod:
		return o
	case cache.DeletedFinalStateUnknown:
		p, _ := o.Obj.(*corev1.Pod)
		return p
	}
	return nil
}

func indexUID(obj any) ([]string, error) {
	if p := podOf(obj); p != nil {
		return []string{string(p.UID)}, nil
	}
	return nil, nil
}

// indexIP indexes the IPs of the Pods that may still run: a terminated Pod's IP may be another
// Pod's by now.
func indexIP(obj any) ([]string, error) {
	p := podOf(obj)
	if p == nil || terminated(p) != nil {
		return nil, nil
	}
	var ips []string
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = append(ips, p.Status.PodIP)
	}
	return ips, nil
}

func indexGame(obj any) ([]string, error) {
	if p := podOf(obj); p != nil {
		if id := gameIDOf(p); id != "" {
			return []string{strings.ToLower(id)}, nil
		}
	}
	return nil, nil
}

// countingTransport counts the adapter's API requests.
type countingTransport struct {
	next    http.RoundTripper
	n       *atomic.Int64
	counter metric.Int64Counter
}

func (t countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.n.Add(1)
	verb := strings.ToLower(req.Method)
	if req.URL.Query().Get("watch") == "true" {
		verb = "watch"
	}
	t.counter.Add(req.Context(), 1, metric.WithAttributes(attribute.String("verb", verb)))
	return t.next.RoundTrip(req)
}
