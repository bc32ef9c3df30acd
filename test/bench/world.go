package main

import (
	"context"
	"fmt"

	"github.com/docker/docker/api/types/network"

	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/test/harness"
)

// Engine image of the benchmark: the stand-in engine of test/engine, FROM scratch.
const (
	engineRepo    = "rtm-bench/game"
	engineVersion = "1.0.0"
	engineImage   = engineRepo + ":" + engineVersion
	// benchLabel marks the network the benchmark creates.
	benchLabel = "rtm.bench"
)

// world is everything the benchmark starts (test/harness), its Docker network and RTM's own
// Docker adapter for the raw baselines.
type world struct {
	*harness.World
	raw      *runtime.Docker // RTM's own adapter, used directly for the raw baselines
	logLevel string          // RTMANAGER_LOG_LEVEL
	extraEnv map[string]string
}

// setUp starts the world; on error whatever was started is torn down by close.
func setUp(ctx context.Context, w *world, keep bool) error {
	w.World = &harness.World{}
	if err := harness.SetUp(ctx, w.World, harness.Options{Name: "bench", EngineRepo: engineRepo,
		EngineVersions: []string{engineVersion}, Keep: keep, Durable: true}); err != nil {
		return err
	}
	if err := w.createNetwork(ctx); err != nil {
		return err
	}
	var err error
	w.raw, err = runtime.New(runtime.Options{Network: w.Net})
	return err
}

// close tears the world down (harness.World.Close) and closes the raw adapter.
func (w *world) close() {
	if w.World != nil {
		w.World.Close()
	}
	if w.raw != nil {
		_ = w.raw.Close()
	}
}

// benchNetwork is the benchmark's Docker network. Its name is fixed, so that a network the daemon
// cannot remove is reused by the next run rather than left behind for good: Docker 20.10 may
// leak an endpoint count when a thousand containers go at once ("has active endpoints" with
// none attached, moby/moby#42119, only a daemon restart clears it), and every leaked network
// holds an address pool. One benchmark runs on a host at a time.
const benchNetwork = "rtm-bench"

// createNetwork creates the network, or takes over the one an earlier run left: its containers
// (only the benchmark's run there) are removed first, and a network that cannot be removed
// (a leaked endpoint count) is used as it is.
func (w *world) createNetwork(ctx context.Context) error {
	w.Net = benchNetwork
	if _, err := w.Docker.NetworkInspect(ctx, w.Net, network.InspectOptions{}); err == nil {
		if _, err := w.RemoveContainers(ctx, w.Net); err != nil {
			return fmt.Errorf("removing what an earlier run left on network %s: %w", w.Net, err)
		}
		if err := w.Docker.NetworkRemove(ctx, w.Net); err != nil {
			harness.Logf("reusing network %s, which an earlier run left (%v)", w.Net, err)
			return nil
		}
	}
	if _, err := w.Docker.NetworkCreate(ctx, w.Net, network.CreateOptions{Driver: "bridge",
		Labels: map[string]string{benchLabel: "1"}}); err != nil {
		return fmt.Errorf("creating network %s: %w", w.Net, err)
	}
	return nil
}

// rtmEnv is RTM's environment for one database: defaults everywhere but the addresses, the
// image allow-list, pprof, the log level and the -rtm-env flag.
func (w *world) rtmEnv(dsn string) map[string]string {
	extra := map[string]string{"RTMANAGER_LOG_LEVEL": w.logLevel}
	for k, v := range w.extraEnv {
		extra[k] = v
	}
	return w.RTMEnv(dsn, extra)
}

// config reads an RTM environment with the product's own config package, so the raw baseline
// uses exactly the values RTM uses.
func rtmConfig(env map[string]string) (config.Config, error) {
	return config.Load(func(k string) string { return env[k] })
}
