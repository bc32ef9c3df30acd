package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strconv"
	"sync"
	"syscall"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// The soak's engine images: the stand-in engine of test/engine, FROM scratch, in two patch
// versions so that REST patches can go back and forth.
const (
	engineRepo = "rtm-soak/game"
	versionA   = "1.4.1"
	versionB   = "1.4.2"
	imageA     = engineRepo + ":" + versionA
	imageB     = engineRepo + ":" + versionB
	// soakLabel marks the network the soak creates; its value is the owning process's pid, so a
	// later run can remove what a killed run left behind.
	soakLabel = "rtm.soak.pid"
)

// otherImage is the image a patch or a churn start switches to.
func otherImage(img string) string {
	if img == imageA {
		return imageB
	}
	return imageA
}

// world is everything the soak starts (test/harness) and its Docker network.
type world struct {
	*harness.World
}

// setUp starts the world; on error whatever was started is torn down by close.
func setUp(ctx context.Context, w *world, keep bool) error {
	w.World = &harness.World{}
	if err := harness.SetUp(ctx, w.World, harness.Options{Name: "soak", EngineRepo: engineRepo,
		EngineVersions: []string{versionA, versionB}, Keep: keep}); err != nil {
		return err
	}
	w.reapStale(ctx)
	w.Net = "rtm-soak-" + w.Run
	if _, err := w.Docker.NetworkCreate(ctx, w.Net, network.CreateOptions{Driver: "bridge",
		Labels: map[string]string{soakLabel: strconv.Itoa(os.Getpid())}}); err != nil {
		return fmt.Errorf("creating network %s: %w", w.Net, err)
	}
	return nil
}

// close tears the world down (harness.World.Close).
func (w *world) close() {
	if w.World != nil {
		w.World.Close()
	}
}

// reapStale removes the networks (and the containers on them) of earlier soak runs whose
// process is gone: a run killed with SIGKILL or a second Ctrl-C could not clean up.
func (w *world) reapStale(ctx context.Context) {
	nets, err := w.Docker.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", soakLabel))})
	if err != nil {
		return
	}
	for _, n := range nets {
		pid, err := strconv.Atoi(n.Labels[soakLabel])
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) == nil {
			continue
		}
		removed, err := w.RemoveContainers(ctx, n.Name)
		if err != nil {
			harness.Logf("removing containers of stale network %s: %v", n.Name, err)
		}
		if err := w.Docker.NetworkRemove(ctx, n.ID); err == nil {
			harness.Logf("removed stale network %s (%d containers) of dead pid %d", n.Name, removed, pid)
		}
	}
}

// rtmEnv is RTM's environment: the probe and inspect intervals, pprof, the addresses
// and the image allow-list; defaults everywhere else.
func (w *world) rtmEnv(dsn string, extra map[string]string) map[string]string {
	env := map[string]string{
		"RTMANAGER_PROBE_INTERVAL":   "1s",
		"RTMANAGER_PROBE_TIMEOUT":    "500ms",
		"RTMANAGER_INSPECT_INTERVAL": "5s",
	}
	for k, v := range extra {
		env[k] = v
	}
	return w.RTMEnv(dsn, env)
}

// rtmProc is the running rtmanager binary (harness.Proc) with the WARN and ERROR lines of its
// log counted by message.
type rtmProc struct {
	*harness.Proc

	mu       sync.Mutex
	problems map[string]int // "LEVEL msg" → lines
}

// startRTM runs the binary with env and waits until every worker has started. Its log goes to
// rtmanager.log in the work dir.
func (w *world) startRTM(ctx context.Context, env map[string]string) (*rtmProc, error) {
	p := &rtmProc{problems: map[string]int{}}
	var err error
	p.Proc, err = w.StartRTM(ctx, env, "rtmanager.log", func(l harness.LogLine) bool {
		if l.Level == "WARN" || l.Level == "ERROR" {
			p.mu.Lock()
			p.problems[l.Level+" "+l.Msg]++
			p.mu.Unlock()
		}
		return false // the soak waits for no line but the start-up ones, which are always kept
	})
	return p, err
}

// logProblems returns the WARN and ERROR line counts by message.
func (p *rtmProc) logProblems() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.problems)
}
