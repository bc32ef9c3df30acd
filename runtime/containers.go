package runtime

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"

	"encoding/json"
	"io"

	"github.com/docker/docker/api/types/image"

	rtm "github.com/galaxy-platform/rtmanager"
)

// List returns every container carrying com.galaxy.owner=rtmanager and attached to the
// configured network, running or not, from one ContainerList call: an RTM owns only the labelled
// containers on its own network, so RTMs on other networks of the same daemon never adopt each
// other's games. Health is read from Docker's status line and IP from the container's endpoint
// on the network; inspection-only fields (OOMKilled, StartedAt, FinishedAt) stay empty; ExitCode
// is parsed from Docker's status line for exited containers. The daemon answers
// lists from a copy of its state that may trail a die event by a moment; Inspect does not. A
// failure wraps rtm.ErrUnavailable when the daemon cannot be reached.
func (d *Docker) List(ctx context.Context) ([]rtm.Container, error) {
	c := d.begin(ctx, "list", d.opts.CallTimeout)
	list, err := d.cli.ContainerList(c.ctx, container.ListOptions{
		All: true,
		Filters: filters.NewArgs(filters.Arg("label", rtm.LabelOwner+"="+rtm.OwnerValue),
			filters.Arg("network", d.opts.Network)),
	})
	if err != nil {
		return nil, c.end(fmt.Errorf("listing containers: %w", classify(ctx, err)))
	}
	out := make([]rtm.Container, 0, len(list))
	for _, s := range list {
		out = append(out, fromSummary(s, d.opts.Network))
	}
	return out, c.end(nil)
}

// Inspect returns the container of gameID, owned or not: Owned tells whether it carries RTM's
// owner label and is attached to the configured network.
//
// The container named galaxy-game-<gameID> is the game's whenever it exists (one inspection, as
// RTM names every container it creates). When no container has that name, the game's container
// is the one carrying com.galaxy.owner=rtmanager and com.galaxy.game_id=<gameID> on the
// configured network, whatever its name (an engine an operator started by hand): one list call
// with those filters, then an inspection of the one chosen. When several match, a running one is
// chosen over the others, and the most recently created among equals; a debug line names the
// choice and the number of candidates.
//
// Errors: no container by name or label wraps rtm.ErrNotFound; an unreachable daemon wraps
// rtm.ErrUnavailable.
func (d *Docker) Inspect(ctx context.Context, gameID string) (rtm.Container, error) {
	ct, err := d.inspect(ctx, rtm.ContainerName(gameID), attrGameID.String(gameID))
	if !errors.Is(err, rtm.ErrNotFound) {
		return ct, err
	}
	id, lerr := d.labelled(ctx, gameID)
	if lerr != nil {
		return rtm.Container{}, lerr
	}
	if id == "" {
		return ct, err
	}
	return d.inspect(ctx, id, semconv.ContainerID(id))
}

// labelled returns the id of the owned container on the configured network labelled with
// gameID, chosen as Inspect describes, or "" when there is none.
func (d *Docker) labelled(ctx context.Context, gameID string) (string, error) {
	c := d.begin(ctx, "list", d.opts.CallTimeout, attrGameID.String(gameID))
	list, err := d.cli.ContainerList(c.ctx, container.ListOptions{
		All: true,
		Filters: filters.NewArgs(filters.Arg("label", rtm.LabelOwner+"="+rtm.OwnerValue),
			filters.Arg("label", rtm.LabelGameID+"="+gameID),
			filters.Arg("network", d.opts.Network)),
	})
	if err != nil {
		return "", c.end(fmt.Errorf("listing containers labelled with game %s: %w", gameID, classify(ctx, err)))
	}
	_ = c.end(nil)
	if len(list) == 0 {
		return "", nil
	}
	best := slices.MaxFunc(list, func(a, b container.Summary) int {
		ar, br := a.State == container.StateRunning, b.State == container.StateRunning
		switch {
		case ar != br && ar:
			return 1
		case ar != br:
			return -1
		}
		return cmp.Compare(a.Created, b.Created)
	})
	if len(list) > 1 {
		d.log.Debug("several containers carry the game's label; chose one", "game_id", gameID,
			"container_id", best.ID, "state", best.State, "candidates", len(list))
	}
	return best.ID, nil
}

// InspectID is Inspect by container id (or name), with the same results and errors.
func (d *Docker) InspectID(ctx context.Context, id string) (rtm.Container, error) {
	return d.inspect(ctx, id, semconv.ContainerID(id))
}

func (d *Docker) inspect(ctx context.Context, ref string, attr attribute.KeyValue) (rtm.Container, error) {
	c := d.begin(ctx, "inspect", d.opts.CallTimeout, attr)
	resp, err := d.cli.ContainerInspect(c.ctx, ref)
	if err != nil {
		return rtm.Container{}, c.end(fmt.Errorf("inspecting container %s: %w", ref, classify(ctx, err)))
	}
	return d.fromInspect(resp), c.end(nil)
}

// Create creates (does not start) the container of spec as CONTRACT §3 describes and returns its
// id: name and alias galaxy-game-<id>, RTM's labels, the state dir bind-mounted read-write, no
// restart policy, no new privileges, every capability dropped, the given limits with no swap, a
// small /tmp tmpfs, a size-limited json-file log (EngineLogMaxFiles × EngineLogMaxSize), and
// exactly one network (spec.Network, else Options.Network).
//
// Errors: a container of that name already exists → wraps rtm.ErrConflict; the image is
// not present locally → *rtm.Error with CodeImagePullFailed; the daemon cannot be reached →
// wraps rtm.ErrUnavailable; any other refusal → *rtm.Error with
// CodeContainerStartFailed.
func (d *Docker) Create(ctx context.Context, spec rtm.ContainerSpec) (string, error) {
	name := rtm.ContainerName(spec.GameID)
	c := d.begin(ctx, "create", d.opts.CallTimeout,
		attrGameID.String(spec.GameID), semconv.ContainerName(name), semconv.ContainerImageName(spec.ImageRef))
	cfg, hostCfg, netCfg := d.containerConfig(spec)
	resp, err := d.cli.ContainerCreate(c.ctx, cfg, hostCfg, netCfg, nil, name)
	if err != nil {
		return "", c.end(d.createError(c, name, spec.ImageRef, err))
	}
	c.span.SetAttributes(semconv.ContainerID(resp.ID))
	d.log.Debug("container created", "game_id", spec.GameID, "container_id", resp.ID, "image_ref", spec.ImageRef)
	return resp.ID, c.end(nil)
}

// The log limit of every engine container: the json-file driver keeps at most EngineLogMaxFiles
// files of EngineLogMaxSize each (30 MB per engine), rotating the oldest away.
const (
	EngineLogMaxSize  = "10m"
	EngineLogMaxFiles = 3
)

// containerConfig turns spec into the SDK's create arguments, on the adapter's network unless
// spec names one.
func (d *Docker) containerConfig(spec rtm.ContainerSpec) (*container.Config, *container.HostConfig, *network.NetworkingConfig) {
	if spec.Network == "" {
		spec.Network = d.opts.Network
	}
	return ContainerConfig(spec)
}

// ContainerConfig turns spec (its Network set) into the SDK's create arguments: the container RTM
// creates for a game. It is exported for the benchmark's raw baseline (test/bench), which must
// create the very same container through the SDK to measure what RTM adds; RTM's own code calls
// Docker.Create.
func ContainerConfig(spec rtm.ContainerSpec) (*container.Config, *container.HostConfig, *network.NetworkingConfig) {
	name := rtm.ContainerName(spec.GameID)
	netName := spec.Network

	env := make([]string, 0, len(spec.Env))
	for k, v := range spec.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)

	cfg := &container.Config{
		Image: spec.ImageRef,
		Env:   env,
		User:  spec.User,
		Labels: map[string]string{
			rtm.LabelOwner:      rtm.OwnerValue,
			rtm.LabelGameID:     spec.GameID,
			rtm.LabelImageRef:   spec.ImageRef,
			rtm.LabelGeneration: strconv.FormatInt(spec.Generation, 10),
		},
	}

	hostCfg := &container.HostConfig{
		NetworkMode:   container.NetworkMode(netName),
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
		Mounts: []mount.Mount{{
			// A mount (unlike a -v bind) fails when the source is missing instead of letting
			// the daemon create it as root: the state dir's mode and owner are RTM's to set.
			Type:   mount.TypeBind,
			Source: spec.StateDir,
			Target: spec.StateMount,
		}},
		SecurityOpt:    []string{"no-new-privileges"},
		CapDrop:        []string{"ALL"},
		Privileged:     false,
		ReadonlyRootfs: spec.ReadOnlyRoot,
		Tmpfs:          map[string]string{"/tmp": "rw,noexec,nosuid,size=16m"},
		// Set explicitly rather than left to the daemon's default, whose stock json-file driver keeps
		// logs without limit: a chatty or hostile engine must not fill the host's disk.
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{
			"max-size": EngineLogMaxSize, "max-file": strconv.Itoa(EngineLogMaxFiles),
		}},
	}
	if spec.MemoryBytes > 0 {
		hostCfg.Memory = spec.MemoryBytes
		hostCfg.MemorySwap = spec.MemoryBytes // equal to Memory: no swap at all
	}
	if spec.NanoCPUs > 0 {
		hostCfg.NanoCPUs = spec.NanoCPUs
	}
	if spec.PidsLimit > 0 {
		pids := spec.PidsLimit
		hostCfg.PidsLimit = &pids
	}

	// API 1.41 accepts at most one endpoint at create time.
	netCfg := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
		netName: {Aliases: []string{name}},
	}}
	return cfg, hostCfg, netCfg
}

// createError classifies a ContainerCreate failure.
func (d *Docker) createError(c *call, name, imageRef string, err error) error {
	switch kind := kindOf(c.parent, err); {
	case c.parent.Err() != nil:
		return fmt.Errorf("creating container %s: %w", name, err)
	case kind == rtm.ErrConflict || kind == rtm.ErrUnavailable:
		return fmt.Errorf("creating container %s: %w", name, &kindError{kind: kind, err: err})
	case kind == rtm.ErrNotFound && d.imageMissing(c.ctx, imageRef):
		return &rtm.Error{
			Code:    rtm.CodeImagePullFailed,
			Message: fmt.Sprintf("image %s is not present on the docker host", imageRef),
			Err:     err,
		}
	}
	return &rtm.Error{
		Code:    rtm.CodeContainerStartFailed,
		Message: fmt.Sprintf("creating container %s: %s", name, daemonMessage(err)),
		Err:     err,
	}
}

// imageMissing reports whether ref is certainly absent: the daemon's not-found on create may
// also be about the network, so it is asked about the image itself.
func (d *Docker) imageMissing(ctx context.Context, ref string) bool {
	_, err := d.cli.ImageInspect(ctx, ref)
	return errdefs.IsNotFound(err)
}

// containerMissing reports whether the container id is certainly absent: the daemon's
// not-found on start may also be about the network.
func (d *Docker) containerMissing(ctx context.Context, id string) bool {
	_, err := d.cli.ContainerInspect(ctx, id)
	return errdefs.IsNotFound(err)
}

// Start starts a created (or stopped) container; starting a running one is a no-op. A missing
// container wraps rtm.ErrNotFound; an unreachable daemon wraps rtm.ErrUnavailable;
// any other refusal (a missing network, a bad user, an unusable image, …) is *rtm.Error
// with CodeContainerStartFailed.
func (d *Docker) Start(ctx context.Context, id string) error {
	c := d.begin(ctx, "start", d.opts.CallTimeout, semconv.ContainerID(id))
	err := d.cli.ContainerStart(c.ctx, id, container.StartOptions{})
	if err == nil {
		return c.end(nil)
	}
	switch kind := kindOf(ctx, err); {
	case ctx.Err() != nil:
		err = fmt.Errorf("starting container %s: %w", id, err)
	case kind == rtm.ErrUnavailable,
		kind == rtm.ErrNotFound && d.containerMissing(c.ctx, id):
		err = fmt.Errorf("starting container %s: %w", id, &kindError{kind: kind, err: err})
	default:
		err = &rtm.Error{
			Code:    rtm.CodeContainerStartFailed,
			Message: fmt.Sprintf("starting container %s: %s", shortID(id), daemonMessage(err)),
			Err:     err,
		}
	}
	return c.end(err)
}

// Stop sends SIGTERM and, after grace (rounded up to whole seconds), SIGKILL. The call may take
// grace plus CallTimeout. Stopping a stopped container succeeds; a missing one wraps
// rtm.ErrNotFound; an unreachable daemon wraps rtm.ErrUnavailable.
func (d *Docker) Stop(ctx context.Context, id string, grace time.Duration) error {
	secs := int(math.Ceil(max(grace, 0).Seconds()))
	c := d.begin(ctx, "stop", time.Duration(secs)*time.Second+d.opts.CallTimeout,
		semconv.ContainerID(id), attribute.Int("docker.stop_timeout_s", secs))
	err := d.cli.ContainerStop(c.ctx, id, container.StopOptions{Timeout: &secs})
	if err != nil {
		err = fmt.Errorf("stopping container %s: %w", id, classify(ctx, err))
	}
	return c.end(err)
}

// Remove force-removes a container (killing it if it runs) with its anonymous volumes; the state
// dir, a bind mount, is untouched. A missing container wraps rtm.ErrNotFound, which
// callers treat as done; a removal already in progress wraps rtm.ErrConflict; an
// unreachable daemon wraps rtm.ErrUnavailable.
func (d *Docker) Remove(ctx context.Context, id string) error {
	c := d.begin(ctx, "remove", d.opts.CallTimeout, semconv.ContainerID(id))
	err := d.cli.ContainerRemove(c.ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil {
		err = fmt.Errorf("removing container %s: %w", id, classify(ctx, err))
	}
	return c.end(err)
}

// fromSummary converts a ContainerList entry of a container on network (the list's filter): its
// address there is the one an inspection would give while the container runs.
func fromSummary(s container.Summary, network string) rtm.Container {
	ct := rtm.Container{
		ID:       s.ID,
		ImageRef: s.Image,
		State:    rtm.ContainerState(s.State),
		Created:  time.Unix(s.Created, 0).UTC(),
	}
	if len(s.Names) > 0 {
		ct.Name = strings.TrimPrefix(s.Names[0], "/")
	}
	applyLabels(&ct, s.Labels)
	if ct.State == rtm.StateExited || ct.State == rtm.StateDead {
		ct.ExitCode = exitCodeFromStatus(s.Status)
	}
	ct.Health = healthFromStatus(s.Status)
	if s.NetworkSettings != nil {
		if ep := s.NetworkSettings.Networks[network]; ep != nil {
			ct.IP = ep.IPAddress
		}
	}
	return ct
}

var healthStatus = regexp.MustCompile(`\((healthy|unhealthy|health: starting)\)$`)

// healthFromStatus parses the healthcheck status Docker appends to a running container's status
// line ("Up 5 minutes (unhealthy)"): "healthy", "unhealthy", "starting", or "" when the
// container has no healthcheck.
func healthFromStatus(status string) string {
	m := healthStatus.FindStringSubmatch(status)
	if m == nil {
		return ""
	}
	return strings.TrimPrefix(m[1], "health: ")
}

// fromInspect converts a ContainerInspect answer.
func (d *Docker) fromInspect(r container.InspectResponse) rtm.Container {
	var ct rtm.Container
	if r.ContainerJSONBase != nil {
		ct.ID = r.ID
		ct.Name = strings.TrimPrefix(r.Name, "/")
		ct.Created = parseTime(r.Created)
		if s := r.State; s != nil {
			ct.State = rtm.ContainerState(s.Status)
			ct.ExitCode = s.ExitCode
			ct.OOMKilled = s.OOMKilled
			ct.StartedAt = parseTime(s.StartedAt)
			ct.FinishedAt = parseTime(s.FinishedAt)
			if s.Health != nil {
				ct.Health = string(s.Health.Status)
			}
		}
	}
	if r.Config != nil {
		ct.ImageRef = r.Config.Image
		applyLabels(&ct, r.Config.Labels)
	}
	onNetwork := false
	if r.NetworkSettings != nil {
		if ep := r.NetworkSettings.Networks[d.opts.Network]; ep != nil {
			ct.IP, onNetwork = ep.IPAddress, true
		}
	}
	// A labelled container on another network belongs to another RTM (or to nobody): never ours.
	ct.Owned = ct.Owned && onNetwork
	return ct
}

// applyLabels fills the label-derived fields; the image_ref label wins over the config's image
// because the config may name the image by id after a re-tag.
func applyLabels(ct *rtm.Container, labels map[string]string) {
	ct.Owned = labels[rtm.LabelOwner] == rtm.OwnerValue
	ct.GameID = labels[rtm.LabelGameID]
	if ref := labels[rtm.LabelImageRef]; ref != "" {
		ct.ImageRef = ref
	}
	if g, err := strconv.ParseInt(labels[rtm.LabelGeneration], 10, 64); err == nil {
		ct.Generation = g
	}
}

var exitedStatus = regexp.MustCompile(`^Exited \((-?\d+)\)`)

// exitCodeFromStatus parses Docker's "Exited (3) 2 minutes ago"; 0 when it does not match.
func exitCodeFromStatus(status string) int {
	m := exitedStatus.FindStringSubmatch(status)
	if m == nil {
		return 0
	}
	code, _ := strconv.Atoi(m[1])
	return code
}

// parseTime parses Docker's RFC 3339 timestamps; Docker's "0001-01-01T00:00:00Z" (never) and
// anything unparsable give the zero time.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t.UTC()
}

// daemonMessage strips the SDK's "Error response from daemon: " prefix: the rest is the
// daemon's own explanation, fit for a peer-facing message.
func daemonMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "Error response from daemon: ")
}

// shortID abbreviates a container id the way docker ps does; names pass unchanged.
func shortID(id string) string {
	if len(id) == 64 {
		return id[:12]
	}
	return id
}

// EnsureImage makes ref present on the docker host: an image already there is used as is (no
// pull, so a local build wins); otherwise it is pulled within PullTimeout and the whole progress
// stream is read. Concurrent calls for one missing image share one pull; each caller waits for it
// until its own context ends. Any pull failure (an HTTP error, an error message in the stream, the pull
// timeout) is *rtm.Error with CodeImagePullFailed and a message starting "pulling <ref>:";
// an unreachable daemon wraps rtm.ErrUnavailable instead, since that is transient.
func (d *Docker) EnsureImage(ctx context.Context, ref string) error {
	c := d.begin(ctx, "inspect", d.opts.CallTimeout, semconv.ContainerImageName(ref))
	_, err := d.cli.ImageInspect(c.ctx, ref)
	switch {
	case err == nil:
		return c.end(nil)
	case !errdefs.IsNotFound(err) || ctx.Err() != nil:
		return c.end(fmt.Errorf("inspecting image %s: %w", ref, classify(ctx, err)))
	}
	c.end(err)

	// Games that start on one new image at once share one pull. It runs detached from any one
	// caller (within PullTimeout), so a caller that gives up, or loses its lease, ends only its
	// own wait; the pull itself changes no game.
	ch := d.pulls.DoChan(ref, func() (any, error) {
		pctx := context.WithoutCancel(ctx)
		d.log.Debug("pulling image", "image_ref", ref)
		c := d.begin(pctx, "pull", d.opts.PullTimeout, semconv.ContainerImageName(ref))
		if err := d.pull(c.ctx, ref); err != nil {
			return nil, c.end(pullError(c, ref, d.opts.PullTimeout, err))
		}
		d.log.Debug("image pulled", "image_ref", ref)
		return nil, c.end(nil)
	})
	d.pullWaiters.Add(1)
	defer d.pullWaiters.Add(-1)
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return fmt.Errorf("pulling %s: %w", ref, ctx.Err())
	}
}

// pullMessage is the part of a pull progress message that reports failure: old daemons fill
// only "error", newer ones also "errorDetail".
type pullMessage struct {
	Error       string `json:"error"`
	ErrorDetail *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
}

// pull pulls ref and drains the progress stream, returning the first error it reports.
func (d *Docker) pull(ctx context.Context, ref string) error {
	rc, err := d.cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var m pullMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading pull progress: %w", err)
		}
		switch {
		case m.ErrorDetail != nil && m.ErrorDetail.Message != "":
			return errors.New(m.ErrorDetail.Message)
		case m.Error != "":
			return errors.New(m.Error)
		}
	}
}

// pullError classifies a failed pull.
func pullError(c *call, ref string, timeout time.Duration, err error) error {
	switch {
	case c.parent.Err() != nil:
		return fmt.Errorf("pulling %s: %w", ref, err)
	case c.timedOut():
		return &rtm.Error{
			Code:    rtm.CodeImagePullFailed,
			Message: fmt.Sprintf("pulling %s: timed out after %s", ref, timeout),
			Err:     err,
		}
	case kindOf(c.parent, err) == rtm.ErrUnavailable:
		return fmt.Errorf("pulling %s: %w", ref, &kindError{kind: rtm.ErrUnavailable, err: err})
	}
	return &rtm.Error{
		Code:    rtm.CodeImagePullFailed,
		Message: fmt.Sprintf("pulling %s: %s", ref, daemonMessage(err)),
		Err:     err,
	}
}
