package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/runtime"
)

// rawOwner is the owner label value of the raw baseline's containers. Everything else is what
// RTM creates (name, labels, network and alias, bind mount, limits, security options); only
// this value differs, so that RTM neither hears of these containers (its event stream filters
// on com.galaxy.owner=rtmanager) nor adopts them.
const rawOwner = "rtm-bench-raw"

// rawStarter creates and starts containers the way RTM does, straight through the Docker SDK:
// the same state dir creation (runtime.StateDirs, RTM's own code) and the same container.
type rawStarter struct {
	cli  *client.Client
	cfg  config.Config
	dirs runtime.StateDirs
	net  string
}

func newRawStarter(cli *client.Client, cfg config.Config) *rawStarter {
	return &rawStarter{cli: cli, cfg: cfg, net: cfg.DockerNetwork, dirs: runtime.StateDirs{Root: cfg.GameStateRoot,
		Mode: os.FileMode(cfg.GameStateDirMode), UID: cfg.GameStateOwnerUID, GID: cfg.GameStateOwnerGID}}
}

// start creates the state dir, then creates and starts the container; it returns its id.
func (r *rawStarter) start(ctx context.Context, gameID string) (string, error) {
	dir, err := r.dirs.Ensure(gameID)
	if err != nil {
		return "", err
	}
	// The spec controllers.GameReconciler.launch builds for a new game (generation 0).
	spec := rtm.ContainerSpec{
		GameID: gameID, ImageRef: engineImage, StateDir: dir, StateMount: r.cfg.EngineStateMount,
		Network: r.net, User: r.cfg.EngineUser, ReadOnlyRoot: r.cfg.EngineReadOnlyRoot,
		MemoryBytes: r.cfg.EngineMemoryBytes, NanoCPUs: r.cfg.EngineNanoCPUs, PidsLimit: r.cfg.EnginePidsLimit,
		Env: map[string]string{"GALAXY_GAME_ID": gameID, "GALAXY_STATE_DIR": r.cfg.EngineStateMount},
	}
	cfg, hostCfg, netCfg := containerConfig(spec, rawOwner)
	resp, err := r.cli.ContainerCreate(ctx, cfg, hostCfg, netCfg, nil, rtm.ContainerName(gameID))
	if err != nil {
		return "", fmt.Errorf("creating %s: %w", gameID, err)
	}
	if err := r.cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return "", fmt.Errorf("starting %s: %w", gameID, err)
	}
	return resp.ID, nil
}

// stop stops a container as RTM does (SIGTERM, SIGKILL after the configured grace).
func (r *rawStarter) stop(ctx context.Context, id string) error {
	secs := int(math.Ceil(r.cfg.EngineStopTimeout.Seconds()))
	return r.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs})
}

// containerConfig is the container RTM creates for spec (runtime.ContainerConfig), with the
// owner label's value as a parameter. checkParity compares the result with RTM's containers.
func containerConfig(spec rtm.ContainerSpec, owner string) (*container.Config, *container.HostConfig, *network.NetworkingConfig) {
	cfg, hostCfg, netCfg := runtime.ContainerConfig(spec)
	cfg.Labels[rtm.LabelOwner] = owner
	return cfg, hostCfg, netCfg
}

// checkParity inspects a container RTM created and one the raw path created and reports any
// difference in what costs Docker work: user, env names, labels, mounts, limits, security
// options, tmpfs, read-only root, restart policy, networks and aliases.
func checkParity(ctx context.Context, cli *client.Client, rtmID, rawID string) error {
	a, err := cli.ContainerInspect(ctx, rtmID)
	if err != nil {
		return err
	}
	b, err := cli.ContainerInspect(ctx, rawID)
	if err != nil {
		return err
	}
	type shape struct {
		User, Image                      string
		EnvNames, LabelKeys, Mounts      []string
		Memory, Swap, CPUs, Pids         int64
		SecOpt, CapDrop, Tmpfs, Networks []string
		ReadOnly                         bool
		Restart                          string
		Aliases                          int
	}
	of := func(c container.InspectResponse) shape {
		s := shape{User: c.Config.User, Image: c.Config.Image, Memory: c.HostConfig.Memory, Swap: c.HostConfig.MemorySwap,
			CPUs: c.HostConfig.NanoCPUs, SecOpt: c.HostConfig.SecurityOpt, CapDrop: c.HostConfig.CapDrop,
			ReadOnly: c.HostConfig.ReadonlyRootfs, Restart: string(c.HostConfig.RestartPolicy.Name)}
		if c.HostConfig.PidsLimit != nil {
			s.Pids = *c.HostConfig.PidsLimit
		}
		for _, e := range c.Config.Env {
			k, _, _ := strings.Cut(e, "=")
			s.EnvNames = append(s.EnvNames, k)
		}
		for k := range c.Config.Labels {
			s.LabelKeys = append(s.LabelKeys, k)
		}
		for _, m := range c.Mounts {
			s.Mounts = append(s.Mounts, fmt.Sprintf("%s:%s:%v", m.Type, m.Destination, m.RW))
		}
		for k, v := range c.HostConfig.Tmpfs {
			s.Tmpfs = append(s.Tmpfs, k+"="+v)
		}
		for n, ep := range c.NetworkSettings.Networks {
			s.Networks = append(s.Networks, n)
			s.Aliases = len(ep.Aliases)
		}
		for _, l := range [][]string{s.EnvNames, s.LabelKeys, s.Mounts, s.Tmpfs, s.Networks} {
			slices.Sort(l)
		}
		return s
	}
	sa, sb := of(a), of(b)
	if fmt.Sprint(sa) != fmt.Sprint(sb) {
		return fmt.Errorf("the raw baseline's container differs from RTM's:\n  rtm %+v\n  raw %+v", sa, sb)
	}
	return nil
}
