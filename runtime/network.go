package runtime

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/network"

	rtm "github.com/galaxy-platform/rtmanager"
)

// CheckNetwork checks that Options.Network exists and is user-defined (only those give
// containers DNS aliases). RTM validates the network, it never creates it. A missing network
// returns an error reading "network <name> not found" that wraps rtm.ErrNotFound; a
// predefined one (bridge, host, none) a plain error; an unreachable daemon wraps
// rtm.ErrUnavailable.
func (d *Docker) CheckNetwork(ctx context.Context) error {
	name := d.opts.Network
	c := d.begin(ctx, "network", d.opts.CallTimeout, attrNetwork.String(name))
	if name == "" {
		return c.end(errors.New("no docker network configured"))
	}
	nw, err := d.cli.NetworkInspect(c.ctx, name, network.InspectOptions{})
	// The daemon also matches an id prefix: only the exact name (or full id) is the network.
	if err == nil && nw.Name != name && nw.ID != name {
		err = errdefs.ErrNotFound
	}
	switch {
	case err == nil:
	case errdefs.IsNotFound(err) && ctx.Err() == nil:
		err = &kindError{msg: fmt.Sprintf("network %s not found", name), kind: rtm.ErrNotFound, err: err}
	default:
		err = fmt.Errorf("inspecting network %s: %w", name, classify(ctx, err))
	}
	if err == nil && (nw.Name == "bridge" || nw.Name == "host" || nw.Name == "none") {
		err = fmt.Errorf("network %s is not a user-defined network", name)
	}
	return c.end(err)
}
