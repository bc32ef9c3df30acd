package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/httpapi"
	"github.com/galaxy-platform/rtmanager/probe"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/runtime/kube"
)

// gameRuntime is what RTM needs of where games run: runtime.Docker and kube.Kube are both one.
type gameRuntime interface {
	controllers.ContainerRuntime
	runtime.ContainerLister
	runtime.EventSource
	httpapi.EngineLogs
}

// kubeSyncTimeout bounds the informer's first list of RTM's Pods at start-up.
const kubeSyncTimeout = time.Minute

// setupKube is step 3 on Kubernetes: the adapter, a ping of the API server, a review of RTM's
// permissions in its namespace, and the informer's first list of RTM's Pods (the initial pass
// and the listener's refusal of engine addresses read it).
func (m *manager) setupKube(ctx context.Context) error {
	cfg := m.cfg
	restCfg, source, err := kubeConfig()
	if err != nil {
		return step("kubernetes", err)
	}
	opts := kube.Options{Config: restCfg, Namespace: cfg.KubeNamespace, StorageClass: cfg.KubeStorageClass,
		StateSize: cfg.KubeStateSize, StartTimeout: cfg.KubeStartTimeout,
		EvictionSeconds: int64(cfg.KubeEvictionTolerance.Round(time.Second).Seconds()),
		Probe: kube.Probe{Port: cfg.EnginePort, Period: cfg.ProbeInterval, Timeout: cfg.ProbeTimeout,
			Threshold: cfg.ProbeFailureThreshold},
		Logger: m.log, Meter: m.tel.Meter("rtmanager"), Tracer: m.tel.Tracer("rtmanager/runtime")}
	if cfg.GameStateOwnerGID != 0 {
		gid := int64(cfg.GameStateOwnerGID)
		opts.FSGroup = &gid
	}
	k, err := kube.New(opts)
	if err != nil {
		return step("kubernetes", err)
	}
	if err := k.Ping(ctx); err != nil {
		return step("kubernetes ping", err)
	}
	m.log.Info("kubernetes ping ok", "credentials", source, "host", restCfg.Host)
	if err := k.CheckAccess(ctx); err != nil {
		return step("kubernetes access", err)
	}
	m.log.Info("kubernetes access ok", "namespace", cfg.KubeNamespace)
	infCtx, stopInformer := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); _ = k.Run(infCtx) }()
	m.stop.onClose(func(ctx context.Context) {
		stopInformer()
		select {
		case <-done:
		case <-ctx.Done():
		}
	})
	syncCtx, cancel := context.WithTimeout(ctx, kubeSyncTimeout)
	defer cancel()
	if err := k.WaitSynced(syncCtx); err != nil {
		return step("kubernetes pods", err)
	}
	pods, _ := k.List(ctx)
	m.log.Info("kubernetes pods listed", "namespace", cfg.KubeNamespace, "pods", len(pods))

	m.rt = k
	m.checks = []httpapi.Check{{Name: "kubernetes", Ping: k.Ping}, {Name: "kubernetes access", Ping: k.CheckAccess}}
	m.engines = k
	m.dirs = kube.StateDirs{}
	m.settings = rtm.Settings{EnginePort: cfg.EnginePort, StateRootJoin: kube.StateDir, EngineHost: kube.EngineHost}
	switch cfg.ProbeTarget {
	case config.ProbeTargetReadiness:
		m.prober = kube.Ready{K: k}
	default:
		m.prober = probe.New(cfg.EnginePort, cfg.ProbeTarget == config.ProbeTargetContainerIP, cfg.ProbeTimeout)
	}
	m.followEngines = func() {} // the informer follows the Pods' addresses already
	return nil
}

// kubeConfig returns the credentials RTM uses: the kubeconfig KUBECONFIG names, else the Pod's
// service account (RTM in the cluster). source says which.
func kubeConfig() (*rest.Config, string, error) {
	if path := os.Getenv("KUBECONFIG"); path != "" {
		c, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, "", fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		return c, "kubeconfig", nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, "", fmt.Errorf("no KUBECONFIG and not in a cluster: %w", err)
	}
	return c, "in-cluster", nil
}
