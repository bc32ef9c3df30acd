package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

const (
	testRepo    = "rtm-runtime-test/game"
	testVersion = "1.0.0"
	testImage   = testRepo + ":" + testVersion
	// absentImage names a registry on loopback where nothing listens: the pull fails at once,
	// and no test traffic leaves the machine (no DNS lookup of a public registry).
	absentImage = "127.0.0.1:1/" + testRepo + ":9.9.9"
	stateMount  = "/var/lib/galaxy-game"
)

// testNetwork is the user-defined network TestMain creates for this package's containers.
var testNetwork string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	if err := testenv.BuildEngineImages(ctx, testRepo, testVersion); err != nil {
		fmt.Fprintf(os.Stderr, "building engine image: %v\n", err)
		return 1
	}

	d, err := New(Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "docker client: %v\n", err)
		return 1
	}
	defer d.Close()
	testNetwork = "rtm-runtime-test-" + randomHex(4)
	if _, err := d.cli.NetworkCreate(ctx, testNetwork, network.CreateOptions{Driver: "bridge"}); err != nil {
		fmt.Fprintf(os.Stderr, "creating network %s: %v\n", testNetwork, err)
		return 1
	}
	defer func() {
		// Containers left by a failed test would hold the network: remove them first.
		cleanup, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if nw, err := d.cli.NetworkInspect(cleanup, testNetwork, network.InspectOptions{}); err == nil {
			for id := range nw.Containers {
				_ = d.cli.ContainerRemove(cleanup, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
			}
		}
		if err := d.cli.NetworkRemove(cleanup, testNetwork); err != nil {
			fmt.Fprintf(os.Stderr, "removing network %s: %v\n", testNetwork, err)
		}
	}()

	return m.Run()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newDocker returns an adapter on the test network, closed at the end of the test.
func newDocker(t testing.TB, opts Options) *Docker {
	t.Helper()
	if opts.Network == "" {
		opts.Network = testNetwork
	}
	d, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// newGameID returns a game id unique to this run.
func newGameID(t testing.TB) string {
	t.Helper()
	return "rtmtest-" + randomHex(6)
}

// newSpec returns a spec for gameID with a fresh, world-writable state dir (the engine may run
// as any user) and the test image.
func newSpec(t testing.TB, gameID string) rtm.ContainerSpec {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return rtm.ContainerSpec{
		GameID:     gameID,
		ImageRef:   testImage,
		Generation: 1,
		StateDir:   dir,
		StateMount: stateMount,
		Network:    testNetwork,
		Env: map[string]string{
			"GALAXY_GAME_ID":   gameID,
			"GALAXY_STATE_DIR": stateMount,
		},
		ReadOnlyRoot: true,
		MemoryBytes:  64 << 20,
		NanoCPUs:     500_000_000,
		PidsLimit:    64,
	}
}

// create creates spec's container and removes it when the test ends.
func create(t testing.TB, d *Docker, spec rtm.ContainerSpec) string {
	t.Helper()
	id, err := d.Create(context.Background(), spec)
	if err != nil {
		t.Fatalf("Create(%s): %v", spec.GameID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.Remove(ctx, id); err != nil && !errors.Is(err, rtm.ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return id
}

// createStarted creates and starts spec's container and waits until the engine answers.
func createStarted(t testing.TB, d *Docker, spec rtm.ContainerSpec) (string, rtm.Container) {
	t.Helper()
	id := create(t, d, spec)
	if err := d.Start(context.Background(), id); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
	c, err := d.InspectID(context.Background(), id)
	if err != nil {
		t.Fatalf("InspectID(%s): %v", id, err)
	}
	waitEngine(t, c.IP)
	return id, c
}

// startGame creates and starts the container of a new game with newSpec's settings and waits
// until its engine answers; the container returned carries the game id, the id and the address.
func startGame(t testing.TB, d *Docker) rtm.Container {
	t.Helper()
	_, c := createStarted(t, d, newSpec(t, newGameID(t)))
	return c
}

// waitEngine waits until the engine at ip answers /healthz.
func waitEngine(t testing.TB, ip string) {
	t.Helper()
	if ip == "" {
		t.Fatal("container has no address on the test network")
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + ip + ":8080/healthz")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine at %s never answered: %v", ip, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// control calls one of the engine's control endpoints.
func control(t testing.TB, ip, path string) {
	t.Helper()
	resp, err := http.Get("http://" + ip + ":8080" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// collector gathers one container's events from an Events stream.
type collector struct {
	evs  <-chan rtm.DockerEvent
	errc <-chan error
}

// subscribe opens an event stream that ends with the test.
func subscribe(t testing.TB, d *Docker) collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	evs, errc := d.Events(ctx)
	return collector{evs: evs, errc: errc}
}

// waitAction returns the first event of container id with the given action, failing the test
// after 20 s or when the stream ends.
func (c collector) waitAction(t testing.TB, id, action string) rtm.DockerEvent {
	t.Helper()
	timeout := time.After(20 * time.Second)
	var seen []string
	for {
		select {
		case ev := <-c.evs:
			if ev.ContainerID != id {
				continue
			}
			seen = append(seen, ev.Action)
			if ev.Action == action {
				return ev
			}
		case err := <-c.errc:
			t.Fatalf("event stream ended while waiting for %s: %v", action, err)
		case <-timeout:
			t.Fatalf("no %s event for %s; saw %v", action, id, seen)
		}
	}
}

func TestDocker_Ping_ok(t *testing.T) {
	d := newDocker(t, Options{})
	if err := d.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestDocker_Ping_unreachableHost(t *testing.T) {
	d := newDocker(t, Options{Host: "unix:///nonexistent.sock"})
	err := d.Ping(context.Background())
	if !errors.Is(err, rtm.ErrUnavailable) {
		t.Fatalf("Ping = %v, want an error wrapping ErrUnavailable", err)
	}
	if _, err := d.List(context.Background()); !errors.Is(err, rtm.ErrUnavailable) {
		t.Fatalf("List = %v, want an error wrapping ErrUnavailable", err)
	}
	if err := d.EnsureImage(context.Background(), testImage); !errors.Is(err, rtm.ErrUnavailable) || rtm.CodeOf(err, "") != "" {
		t.Fatalf("EnsureImage = %v, want ErrUnavailable and no code", err)
	}
}

func TestDocker_Ping_recordsSpanAndLatency(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test")
	spans := tracetest.NewSpanRecorder()
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)).Tracer("test")
	d := newDocker(t, Options{Meter: meter, Tracer: tracer})

	if err := d.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if _, err := d.Inspect(context.Background(), newGameID(t)); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("Inspect of a missing game = %v, want ErrNotFound", err)
	}

	// The SDK adds its own HTTP spans under ours; only the adapter's are checked here.
	var names []string
	for _, s := range spans.Ended() {
		if strings.HasPrefix(s.Name(), "docker.") {
			names = append(names, s.Name())
		}
	}
	// A missing game is looked up by name, then by label.
	if want := []string{"docker.ping", "docker.inspect", "docker.list"}; !slices.Equal(names, want) {
		t.Errorf("spans = %v, want %v", names, want)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != LatencyMetric {
				continue
			}
			if m.Unit != "s" {
				t.Errorf("unit = %q, want s", m.Unit)
			}
			hist, ok := m.Data.(metricdata.Histogram[float64])
			if !ok {
				t.Fatalf("%s is a %T, want a float64 histogram", m.Name, m.Data)
			}
			for _, dp := range hist.DataPoints {
				if !slices.Equal(dp.Bounds, latencyBuckets) {
					t.Errorf("bounds = %v, want %v", dp.Bounds, latencyBuckets)
				}
				op, _ := dp.Attributes.Value(attribute.Key("op"))
				outcome, _ := dp.Attributes.Value(attribute.Key("outcome"))
				got[op.AsString()+"/"+outcome.AsString()] += dp.Count
			}
		}
	}
	want := map[string]uint64{"ping/ok": 1, "inspect/error": 1, "list/ok": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("latency samples = %v, want %v", got, want)
	}
}

func TestDocker_CheckNetwork_found(t *testing.T) {
	d := newDocker(t, Options{})
	if err := d.CheckNetwork(context.Background()); err != nil {
		t.Fatalf("CheckNetwork: %v", err)
	}
}

func TestDocker_CheckNetwork_notFound(t *testing.T) {
	name := "rtm-runtime-test-absent-" + randomHex(4)
	d := newDocker(t, Options{Network: name})
	err := d.CheckNetwork(context.Background())
	if !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("CheckNetwork = %v, want an error wrapping ErrNotFound", err)
	}
	if want := "network " + name + " not found"; err.Error() != want {
		t.Errorf("message = %q, want %q", err.Error(), want)
	}
}

func TestDocker_CheckNetwork_predefined(t *testing.T) {
	d := newDocker(t, Options{Network: "bridge"})
	err := d.CheckNetwork(context.Background())
	if err == nil || errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("CheckNetwork(bridge) = %v, want a not-user-defined error", err)
	}
}

func TestDocker_Create_fullSpec(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	gameID := newGameID(t)
	spec := newSpec(t, gameID)
	spec.User = "65534:65534"
	spec.Generation = 7
	name := rtm.ContainerName(gameID)

	id, got := createStarted(t, d, spec)

	want := rtm.Container{
		ID:         id,
		Name:       name,
		GameID:     gameID,
		Owned:      true,
		ImageRef:   testImage,
		State:      rtm.StateRunning,
		Generation: 7,
	}
	if got.ID != want.ID || got.Name != want.Name || got.GameID != want.GameID || !got.Owned ||
		got.ImageRef != want.ImageRef || got.State != want.State || got.Generation != want.Generation {
		t.Errorf("Inspect = %+v, want %+v", got, want)
	}
	if got.IP == "" || got.StartedAt.IsZero() || got.Created.IsZero() || !got.FinishedAt.IsZero() {
		t.Errorf("Inspect = %+v, want an IP, Created and StartedAt, no FinishedAt", got)
	}
	byName, err := d.Inspect(ctx, gameID)
	if err != nil || byName.ID != id {
		t.Errorf("Inspect(%s) = %+v, %v; want container %s", gameID, byName, err, id)
	}

	// The engine wrote its boot counter through the bind mount as the configured user.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(spec.StateDir, "boots"))
		if err == nil && strings.TrimSpace(string(b)) == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no boot counter in the state dir: %q, %v", b, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	raw, err := d.cli.ContainerInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	wantLabels := map[string]string{
		rtm.LabelOwner:      rtm.OwnerValue,
		rtm.LabelGameID:     gameID,
		rtm.LabelImageRef:   testImage,
		rtm.LabelGeneration: "7",
	}
	for k, v := range wantLabels {
		if raw.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, raw.Config.Labels[k], v)
		}
	}
	if raw.Config.User != "65534:65534" {
		t.Errorf("user = %q", raw.Config.User)
	}
	for _, e := range []string{"GALAXY_GAME_ID=" + gameID, "GALAXY_STATE_DIR=" + stateMount} {
		if !slices.Contains(raw.Config.Env, e) {
			t.Errorf("env %v lacks %s", raw.Config.Env, e)
		}
	}

	hc := raw.HostConfig
	if !slices.Equal([]string(hc.CapDrop), []string{"ALL"}) {
		t.Errorf("CapDrop = %v", hc.CapDrop)
	}
	if !slices.Contains(hc.SecurityOpt, "no-new-privileges") {
		t.Errorf("SecurityOpt = %v", hc.SecurityOpt)
	}
	if !hc.ReadonlyRootfs || hc.Privileged {
		t.Errorf("ReadonlyRootfs = %v, Privileged = %v", hc.ReadonlyRootfs, hc.Privileged)
	}
	if hc.RestartPolicy.Name != container.RestartPolicyDisabled {
		t.Errorf("RestartPolicy = %q", hc.RestartPolicy.Name)
	}
	if hc.Memory != spec.MemoryBytes || hc.MemorySwap != spec.MemoryBytes || hc.NanoCPUs != spec.NanoCPUs ||
		hc.PidsLimit == nil || *hc.PidsLimit != spec.PidsLimit {
		t.Errorf("limits: memory %d swap %d cpus %d pids %v", hc.Memory, hc.MemorySwap, hc.NanoCPUs, hc.PidsLimit)
	}
	if hc.Tmpfs["/tmp"] == "" {
		t.Errorf("Tmpfs = %v, want /tmp", hc.Tmpfs)
	}
	if hc.PidMode.IsHost() || hc.IpcMode.IsHost() || hc.UTSMode.IsHost() || hc.NetworkMode.IsHost() {
		t.Errorf("host namespace shared: pid %q ipc %q uts %q net %q", hc.PidMode, hc.IpcMode, hc.UTSMode, hc.NetworkMode)
	}

	var bind *container.MountPoint
	for i := range raw.Mounts {
		if raw.Mounts[i].Destination == stateMount {
			bind = &raw.Mounts[i]
		}
	}
	if bind == nil || bind.Type != "bind" || bind.Source != spec.StateDir || !bind.RW {
		t.Errorf("mounts = %+v, want %s bound read-write at %s", raw.Mounts, spec.StateDir, stateMount)
	}

	if len(raw.NetworkSettings.Networks) != 1 {
		t.Errorf("networks = %v, want only %s", keys(raw.NetworkSettings.Networks), testNetwork)
	}
	ep := raw.NetworkSettings.Networks[testNetwork]
	if ep == nil || !slices.Contains(ep.Aliases, name) {
		t.Errorf("endpoint on %s = %+v, want alias %s", testNetwork, ep, name)
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestDocker_List_ownedOnly(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	running := newGameID(t)
	created := newGameID(t)
	runningID, _ := createStarted(t, d, newSpec(t, running))
	createdID := create(t, d, newSpec(t, created))

	// A container without RTM's labels is not listed, whatever its name.
	foreign, err := d.cli.ContainerCreate(ctx, &container.Config{Image: testImage}, nil, nil, nil,
		rtm.ContainerName(newGameID(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Remove(context.Background(), foreign.ID) })

	list, err := d.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	byID := map[string]rtm.Container{}
	for _, c := range list {
		byID[c.ID] = c
	}
	if c := byID[runningID]; c.GameID != running || c.State != rtm.StateRunning || !c.Owned ||
		c.Name != rtm.ContainerName(running) || c.ImageRef != testImage || c.Generation != 1 || c.Created.IsZero() {
		t.Errorf("running container listed as %+v", c)
	}
	// The list gives the running container's address on the network, as an inspection does: the
	// prober reads it from the informer's cache instead of inspecting.
	if in, err := d.Inspect(ctx, running); err != nil || in.IP == "" || byID[runningID].IP != in.IP {
		t.Errorf("listed IP %q, inspected %q (%v)", byID[runningID].IP, in.IP, err)
	}
	if c := byID[createdID]; c.GameID != created || c.State != rtm.StateCreated {
		t.Errorf("created container listed as %+v", c)
	}
	if _, ok := byID[foreign.ID]; ok {
		t.Errorf("List includes a container without the owner label")
	}
}

func TestDocker_List_exitCode(t *testing.T) {
	d := newDocker(t, Options{})
	events := subscribe(t, d)
	c := startGame(t, d)
	id := c.ID
	control(t, c.IP, "/control/exit?code=3")
	events.waitAction(t, id, "die")

	// The daemon's list may trail the die event by a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		list, err := d.List(context.Background())
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		i := slices.IndexFunc(list, func(c rtm.Container) bool { return c.ID == id })
		if i < 0 {
			t.Fatalf("List lacks %s", id)
		}
		if c := list[i]; c.State == rtm.StateExited {
			if c.ExitCode != 3 {
				t.Errorf("listed with exit code %d, want 3", c.ExitCode)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still listed as %s after its die event", list[i].State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDocker_Stop_exitsZero(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	started := startGame(t, d)
	id := started.ID

	if err := d.Stop(ctx, id, 5*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	c, err := d.Inspect(ctx, started.GameID)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if c.State != rtm.StateExited || c.ExitCode != 0 || c.OOMKilled || c.FinishedAt.IsZero() || c.Running() {
		t.Errorf("after Stop: %+v, want exited with 0 and a FinishedAt", c)
	}
	if err := d.Stop(ctx, id, time.Second); err != nil {
		t.Errorf("Stop of a stopped container: %v", err)
	}
}

func TestDocker_Stop_notFound(t *testing.T) {
	d := newDocker(t, Options{})
	err := d.Stop(context.Background(), rtm.ContainerName(newGameID(t)), time.Second)
	if !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("Stop = %v, want ErrNotFound", err)
	}
}

func TestDocker_Remove_thenNotFound(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	gameID := newGameID(t)
	spec := newSpec(t, gameID)
	id, _ := createStarted(t, d, spec)

	if err := d.Remove(ctx, id); err != nil {
		t.Fatalf("Remove of a running container: %v", err)
	}
	if _, err := d.Inspect(ctx, gameID); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("Inspect after Remove = %v, want ErrNotFound", err)
	}
	if _, err := d.InspectID(ctx, id); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("InspectID after Remove = %v, want ErrNotFound", err)
	}
	if err := d.Remove(ctx, id); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("second Remove = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(spec.StateDir); err != nil {
		t.Fatalf("state dir gone after Remove: %v", err)
	}
}

func TestDocker_Create_conflict(t *testing.T) {
	d := newDocker(t, Options{})
	spec := newSpec(t, newGameID(t))
	create(t, d, spec)

	_, err := d.Create(context.Background(), spec)
	if !errors.Is(err, rtm.ErrConflict) {
		t.Fatalf("second Create = %v, want ErrConflict", err)
	}
	if code := rtm.CodeOf(err, ""); code != "" {
		t.Errorf("conflict carries code %q, want none", code)
	}
}

func TestDocker_Create_imageAbsent(t *testing.T) {
	d := newDocker(t, Options{})
	spec := newSpec(t, newGameID(t))
	spec.ImageRef = absentImage

	_, err := d.Create(context.Background(), spec)
	if code := rtm.CodeOf(err, ""); code != rtm.CodeImagePullFailed {
		t.Fatalf("Create = %v (code %q), want %s", err, code, rtm.CodeImagePullFailed)
	}
}

func TestDocker_Create_missingStateDir(t *testing.T) {
	d := newDocker(t, Options{})
	spec := newSpec(t, newGameID(t))
	spec.StateDir = filepath.Join(t.TempDir(), "absent")

	_, err := d.Create(context.Background(), spec)
	if code := rtm.CodeOf(err, ""); code != rtm.CodeContainerStartFailed {
		t.Fatalf("Create = %v (code %q), want %s", err, code, rtm.CodeContainerStartFailed)
	}
	if _, statErr := os.Stat(spec.StateDir); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("the daemon created the missing state dir: %v", statErr)
	}
}

func TestDocker_Start_failure(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	spec := newSpec(t, newGameID(t))
	spec.Network = "rtm-runtime-test-absent-" + randomHex(4)

	// Docker 20.10 accepts the missing network at create and refuses at start; later daemons
	// refuse at create. Either way the start fails with container_start_failed.
	id, err := d.Create(ctx, spec)
	if err == nil {
		t.Cleanup(func() { _ = d.Remove(context.Background(), id) })
		err = d.Start(ctx, id)
	}
	if code := rtm.CodeOf(err, ""); code != rtm.CodeContainerStartFailed {
		t.Fatalf("Create+Start = %v (code %q), want %s", err, code, rtm.CodeContainerStartFailed)
	}
}

func TestDocker_Start_notFound(t *testing.T) {
	d := newDocker(t, Options{})
	err := d.Start(context.Background(), rtm.ContainerName(newGameID(t)))
	if !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("Start = %v, want ErrNotFound", err)
	}
}

func TestDocker_EnsureImage_local(t *testing.T) {
	d := newDocker(t, Options{})
	if err := d.EnsureImage(context.Background(), testImage); err != nil {
		t.Fatalf("EnsureImage(%s): %v", testImage, err)
	}
}

func TestDocker_EnsureImage_absent(t *testing.T) {
	// No registry is reachable: the pull fails at once. The short timeout only keeps a
	// misbehaving daemon from holding the test.
	d := newDocker(t, Options{PullTimeout: 20 * time.Second})
	err := d.EnsureImage(context.Background(), absentImage)
	var rerr *rtm.Error
	if !errors.As(err, &rerr) || rerr.Code != rtm.CodeImagePullFailed {
		t.Fatalf("EnsureImage(%s) = %v, want code %s", absentImage, err, rtm.CodeImagePullFailed)
	}
	if !strings.HasPrefix(rerr.Message, "pulling "+absentImage+": ") {
		t.Errorf("message = %q, want it to start with %q", rerr.Message, "pulling "+absentImage+": ")
	}
	if errors.Is(err, rtm.ErrUnavailable) {
		t.Errorf("a failed pull is not the daemon being unavailable: %v", err)
	}
}

func TestDocker_Events_lifecycle(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	events := subscribe(t, d)
	c := startGame(t, d)
	id, gameID := c.ID, c.GameID

	start := events.waitAction(t, id, "start")
	if start.GameID != gameID || start.ExitCode != -1 || start.Time.IsZero() {
		t.Errorf("start event = %+v", start)
	}
	control(t, c.IP, "/control/exit?code=3")
	die := events.waitAction(t, id, "die")
	if die.GameID != gameID || die.ExitCode != 3 || die.Time.Before(start.Time) {
		t.Errorf("die event = %+v, want exit code 3 after %v", die, start.Time)
	}
	if err := d.Remove(ctx, id); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if destroy := events.waitAction(t, id, "destroy"); destroy.GameID != gameID {
		t.Errorf("destroy event = %+v", destroy)
	}
}

func TestDocker_Events_oom(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	events := subscribe(t, d)
	gameID := newGameID(t)
	spec := newSpec(t, gameID)
	spec.MemoryBytes = 16 << 20
	id, c := createStarted(t, d, spec)

	control(t, c.IP, "/control/oom")
	if oom := events.waitAction(t, id, "oom"); oom.GameID != gameID {
		t.Errorf("oom event = %+v", oom)
	}
	if die := events.waitAction(t, id, "die"); die.ExitCode != 137 {
		t.Errorf("die after oom = %+v, want exit code 137", die)
	}
	got, err := d.InspectID(ctx, id)
	if err != nil {
		t.Fatalf("InspectID: %v", err)
	}
	if !got.OOMKilled || got.State != rtm.StateExited || got.ExitCode != 137 {
		t.Errorf("after oom: %+v, want exited, 137, OOMKilled", got)
	}
}

func TestDocker_Events_cancel(t *testing.T) {
	d := newDocker(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	_, errc := d.Events(ctx)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) || errors.Is(err, rtm.ErrUnavailable) {
			t.Fatalf("error after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no error after cancel")
	}
	if err, ok := <-errc; ok {
		t.Fatalf("second value on the error channel: %v", err)
	}
}

func TestDocker_Events_unreachableHost(t *testing.T) {
	d := newDocker(t, Options{Host: "unix:///nonexistent.sock"})
	_, errc := d.Events(context.Background())
	select {
	case err := <-errc:
		if !errors.Is(err, rtm.ErrUnavailable) {
			t.Fatalf("Events error = %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no error from an unreachable daemon")
	}
}

func TestEvents_fromMessage(t *testing.T) {
	at := time.Date(2026, 11, 30, 1, 2, 3, 456, time.UTC)
	actor := func(attrs map[string]string) events.Actor {
		attrs[rtm.LabelGameID] = "g1"
		return events.Actor{ID: "c1", Attributes: attrs}
	}
	tests := []struct {
		name   string
		given  events.Message
		want   rtm.DockerEvent
		wantOK bool
	}{
		{
			name:   "die carries its exit code",
			given:  events.Message{Action: "die", Actor: actor(map[string]string{"exitCode": "3"}), TimeNano: at.UnixNano()},
			want:   rtm.DockerEvent{GameID: "g1", ContainerID: "c1", Action: "die", ExitCode: 3, Time: at},
			wantOK: true,
		},
		{
			name:   "other actions have no exit code",
			given:  events.Message{Action: "start", Actor: actor(map[string]string{"exitCode": "3"}), TimeNano: at.UnixNano()},
			want:   rtm.DockerEvent{GameID: "g1", ContainerID: "c1", Action: "start", ExitCode: -1, Time: at},
			wantOK: true,
		},
		{
			name:   "health status is split",
			given:  events.Message{Action: "health_status: unhealthy", Actor: actor(map[string]string{}), TimeNano: at.UnixNano()},
			want:   rtm.DockerEvent{GameID: "g1", ContainerID: "c1", Action: "health_status", Health: "unhealthy", ExitCode: -1, Time: at},
			wantOK: true,
		},
		{
			name:   "exec events are dropped",
			given:  events.Message{Action: "exec_start: sh -c true", Actor: actor(map[string]string{})},
			wantOK: false,
		},
		{
			name:   "seconds when no nanoseconds",
			given:  events.Message{Action: "oom", Actor: actor(map[string]string{}), Time: at.Unix()},
			want:   rtm.DockerEvent{GameID: "g1", ContainerID: "c1", Action: "oom", ExitCode: -1, Time: at.Truncate(time.Second)},
			wantOK: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := fromMessage(tt.given)
			if ok != tt.wantOK || (ok && got != tt.want) {
				t.Errorf("fromMessage = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestList_exitCodeFromStatus(t *testing.T) {
	tests := []struct {
		name  string
		given string
		want  int
	}{
		{name: "exited", given: "Exited (3) 2 seconds ago", want: 3},
		{name: "killed", given: "Exited (137) About a minute ago", want: 137},
		{name: "running", given: "Up 5 minutes", want: 0},
		{name: "empty", given: "", want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exitCodeFromStatus(tt.given); got != tt.want {
				t.Errorf("exitCodeFromStatus(%q) = %d, want %d", tt.given, got, tt.want)
			}
		})
	}
}
