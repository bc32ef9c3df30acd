package runtime

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	rtm "github.com/galaxy-platform/rtmanager"
)

// startForeign starts a container without RTM's labels on the test network (say, Lobby or RTM
// itself) and returns its address there.
func startForeign(t testing.TB, d *Docker) netip.Addr {
	t.Helper()
	id := createByHand(t, d, newSpec(t, newGameID(t)), "rtmtest-foreign-"+randomHex(4), true,
		func(cfg *container.Config, _ *container.HostConfig, _ *network.NetworkingConfig) { cfg.Labels = nil })
	raw, err := d.cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddr(raw.NetworkSettings.Networks[testNetwork].IPAddress)
}

// addrs are the addresses the EngineAddrs tests ask about on the test network.
type addrs struct {
	engine  netip.Addr // a running engine's
	other   netip.Addr // a running container's that is no engine
	gateway netip.Addr // the network's gateway: the host
	unused  netip.Addr // inside the network's subnet, held by no container
}

// startAddrs starts an engine and a foreign container on the test network and returns their
// addresses with the gateway and an unused one.
func startAddrs(t testing.TB, d *Docker) addrs {
	t.Helper()
	engine := startGame(t, d)
	a := addrs{engine: netip.MustParseAddr(engine.IP), other: startForeign(t, d)}
	nw, err := d.cli.NetworkInspect(context.Background(), testNetwork, network.InspectOptions{})
	if err != nil || len(nw.IPAM.Config) == 0 {
		t.Fatalf("inspecting %s: %+v, %v", testNetwork, nw.IPAM, err)
	}
	a.gateway = netip.MustParseAddr(nw.IPAM.Config[0].Gateway)
	a.unused = netip.MustParsePrefix(nw.IPAM.Config[0].Subnet).Addr()
	for range 200 { // far above the addresses the tests' containers take
		a.unused = a.unused.Next()
	}
	return a
}

func TestEngineAddrs_IsEngine_realContainers(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	a := startAddrs(t, d)
	e := NewEngineAddrs(d, EngineAddrsOptions{})
	if err := e.Refresh(ctx); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	// An engine started after the last refresh is refused from its first request: the unknown
	// address inside the network makes IsEngine refresh before answering.
	fresh := startGame(t, d)
	tests := []struct {
		name string
		addr netip.Addr
		want bool
	}{
		{"engine", a.engine, true},
		{"engine, IPv4-mapped", netip.AddrFrom16(a.engine.As16()), true},
		{"engine started after the refresh", netip.MustParseAddr(fresh.IP), true},
		{"other container on the network", a.other, false},
		{"gateway (the host)", a.gateway, false},
		{"loopback", netip.MustParseAddr("127.0.0.1"), false},
		{"IPv6 loopback", netip.IPv6Loopback(), false},
		{"outside the network", netip.MustParseAddr("203.0.113.5"), false},
		{"unknown inside the network", a.unused, true},
		{"link-local", netip.MustParseAddr("fe80::42:acff:fe1e:7"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := e.IsEngine(ctx, tt.addr); got != tt.want {
				t.Errorf("IsEngine(%s) = %v, want %v", tt.addr, got, tt.want)
			}
		})
	}
}

// TestEngineAddrs_Run_followsNetworkEvents checks that Run refreshes on a connect event: the
// address of a container started while Run follows the network is in a trusted snapshot without
// any request asking for it.
func TestEngineAddrs_Run_followsNetworkEvents(t *testing.T) {
	d := newDocker(t, Options{})
	e := NewEngineAddrs(d, EngineAddrsOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	}()
	waitFor(t, "the event stream to connect", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.live && e.loaded
	})

	ip := netip.MustParseAddr(startGame(t, d).IP)
	waitFor(t, "the engine in a trusted snapshot", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.snap.addrs[ip] && e.snap.seq == e.changes
	})
	other := startForeign(t, d)
	waitFor(t, "the other container in a trusted snapshot", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		owned, attached := e.snap.addrs[other]
		return attached && !owned && e.snap.seq == e.changes
	})
	e.mu.Lock()
	_, sure := e.lookupLocked(other)
	e.mu.Unlock()
	if !sure {
		t.Error("a known other container needs a refresh while the snapshot is trusted")
	}
}

// TestEngineAddrs_IsEngine_dockerWedged checks the outage policy: the last snapshot answers,
// unknown addresses inside the network are refused, and after one failed refresh requests do not
// wait for Docker again until the backoff has passed.
func TestEngineAddrs_IsEngine_dockerWedged(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	a := startAddrs(t, d)
	e := NewEngineAddrs(d, EngineAddrsOptions{RefreshTimeout: 300 * time.Millisecond})
	if err := e.Refresh(ctx); err != nil {
		t.Fatalf("Refresh: %v", err)
	}

	// A daemon that accepts connections and never answers.
	var calls atomic.Int64
	wedged := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/_ping") {
			w.Header().Set("Api-Version", "1.41")
			return
		}
		calls.Add(1)
		<-r.Context().Done()
	}))
	defer wedged.Close()
	e.d = newDocker(t, Options{Host: "tcp://" + wedged.Listener.Addr().String()})
	e.mu.Lock()
	e.changes++ // a network event arrived: the snapshot is no longer trusted
	e.mu.Unlock()

	start := time.Now()
	if !e.IsEngine(ctx, a.unused) {
		t.Error("an unknown address inside the network was allowed while Docker was wedged")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the first request waited %s, want about RefreshTimeout", took)
	}
	if calls.Load() == 0 {
		t.Fatal("the first request did not try Docker")
	}
	before := calls.Load()
	start = time.Now()
	if e.IsEngine(ctx, a.other) {
		t.Error("a container the last snapshot knew as no engine was refused during the outage")
	}
	if !e.IsEngine(ctx, a.engine) {
		t.Error("a known engine was allowed during the outage")
	}
	if !e.IsEngine(ctx, a.unused) {
		t.Error("an unknown address inside the network was allowed during the outage")
	}
	if took := time.Since(start); took > 100*time.Millisecond || calls.Load() != before {
		t.Errorf("requests within the backoff took %s and %d Docker calls, want none", took, calls.Load()-before)
	}
	if err := e.Refresh(ctx); !errors.Is(err, rtm.ErrUnavailable) {
		t.Errorf("Refresh = %v, want ErrUnavailable", err)
	}
}

// TestDocker_Create_logLimit checks the log limit both in the create request (whatever the
// daemon's own default, which on some hosts already is the same limit) and as the daemon
// applied it.
func TestDocker_Create_logLimit(t *testing.T) {
	d := newDocker(t, Options{})
	spec := newSpec(t, newGameID(t))
	_, hc, _ := d.containerConfig(spec)
	if lc := hc.LogConfig; lc.Type != "json-file" || lc.Config["max-size"] != "10m" || lc.Config["max-file"] != "3" {
		t.Errorf("create request LogConfig = %+v, want json-file with max-size 10m and max-file 3", lc)
	}
	id := create(t, d, spec)
	raw, err := d.cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if lc := raw.HostConfig.LogConfig; lc.Type != "json-file" || lc.Config["max-size"] != "10m" || lc.Config["max-file"] != "3" {
		t.Errorf("LogConfig = %+v, want json-file with max-size 10m and max-file 3", lc)
	}
}

// createByHand creates spec's container under name through the SDK, not through Create, as an
// operator or another program would, after edit changed the request; it starts the container
// when start is set and removes it when the test ends.
func createByHand(t testing.TB, d *Docker, spec rtm.ContainerSpec, name string, start bool,
	edit func(*container.Config, *container.HostConfig, *network.NetworkingConfig)) string {
	t.Helper()
	ctx := context.Background()
	cfg, hc, nc := d.containerConfig(spec)
	edit(cfg, hc, nc)
	resp, err := d.cli.ContainerCreate(ctx, cfg, hc, nc, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Remove(context.Background(), resp.ID) })
	if start {
		if err := d.Start(ctx, resp.ID); err != nil {
			t.Fatal(err)
		}
	}
	return resp.ID
}

// withoutOwner drops the owner label from a create request: the container is nobody's.
func withoutOwner(cfg *container.Config, _ *container.HostConfig, _ *network.NetworkingConfig) {
	delete(cfg.Labels, rtm.LabelOwner)
}

// createNamed creates spec's container under another name than RTM's, as an operator starting
// an engine by hand would, and removes it when the test ends.
func createNamed(t testing.TB, d *Docker, spec rtm.ContainerSpec, name string, start bool) string {
	t.Helper()
	return createByHand(t, d, spec, name, start, func(_ *container.Config, _ *container.HostConfig, nc *network.NetworkingConfig) {
		nc.EndpointsConfig[spec.Network].Aliases = nil
	})
}

func TestDocker_Inspect_byLabel(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	gameID := newGameID(t)
	id := createNamed(t, d, newSpec(t, gameID), "hand-"+gameID, true)

	c, err := d.Inspect(ctx, gameID)
	if err != nil {
		t.Fatalf("Inspect(%s) = %v, want the labelled container", gameID, err)
	}
	if c.ID != id || !c.Owned || c.GameID != gameID || c.State != rtm.StateRunning || c.IP == "" {
		t.Errorf("Inspect(%s) = %+v, want %s owned and running with an address", gameID, c, id)
	}
}

func TestDocker_Inspect_byLabelPrefersRunning(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	gameID := newGameID(t)
	spec := newSpec(t, gameID)
	createNamed(t, d, spec, "hand-a-"+gameID, false)
	running := createNamed(t, d, spec, "hand-b-"+gameID, true)
	createNamed(t, d, spec, "hand-c-"+gameID, false) // newer, but not running

	c, err := d.Inspect(ctx, gameID)
	if err != nil || c.ID != running {
		t.Errorf("Inspect(%s) = %s %s, %v; want the running container %s", gameID, c.ID, c.State, err, running)
	}
}

func TestDocker_Inspect_byLabelNotFound(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})

	// Labelled with the game but without the owner label: not RTM's, not found.
	gameID := newGameID(t)
	createByHand(t, d, newSpec(t, gameID), "hand-"+gameID, false, withoutOwner)
	if _, err := d.Inspect(ctx, gameID); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Inspect of a game whose container lacks the owner label = %v, want ErrNotFound", err)
	}

	// No container at all.
	if _, err := d.Inspect(ctx, newGameID(t)); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Inspect of a game without containers = %v, want ErrNotFound", err)
	}

	// Fully labelled but on another network: another RTM's, not found here.
	other := newDocker(t, Options{Network: "bridge"})
	gameID = newGameID(t)
	spec := newSpec(t, gameID)
	spec.Network = "bridge"
	createByHand(t, other, spec, "hand-"+gameID, false,
		func(_ *container.Config, _ *container.HostConfig, nc *network.NetworkingConfig) {
			*nc = network.NetworkingConfig{}
		})
	if _, err := d.Inspect(ctx, gameID); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Inspect of a game whose container is on another network = %v, want ErrNotFound", err)
	}
}

// waitFor polls cond every 10 ms for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
