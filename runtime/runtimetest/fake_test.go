package runtimetest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/probe"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/runtime/runtimetest"
	"github.com/galaxy-platform/rtmanager/sources"
)

// The fake stands in for the Docker adapter wherever that is wired.
var (
	_ controllers.ContainerRuntime = (*runtimetest.Fake)(nil)
	_ rtm.EngineProber             = (*runtimetest.Fake)(nil)
	_ runtime.EventSource          = (*runtimetest.Fake)(nil)
	_ sources.Lister               = (*runtimetest.Fake)(nil)
	_ sources.Inspector            = (*runtimetest.Fake)(nil)
	_ probe.Inspector              = (*runtimetest.Fake)(nil)
)

const img = "galaxy/game:1.4.1"

func spec(game string) rtm.ContainerSpec {
	return rtm.ContainerSpec{GameID: game, ImageRef: img, Generation: 3}
}

func TestFake_lifecycle_followsDocker(t *testing.T) {
	ctx := context.Background()
	w := runtimetest.NewWorld(runtimetest.Options{Seed: 1, StopExitCode: 143})
	f := w.As("p1")
	if _, err := f.Create(ctx, spec("g")); rtm.CodeOf(err, "") != rtm.CodeImagePullFailed {
		t.Fatalf("create of a missing image: %v", err)
	}
	if err := f.EnsureImage(ctx, img); rtm.CodeOf(err, "") != rtm.CodeImagePullFailed {
		t.Fatalf("pull of an unknown image: %v", err)
	}
	w.AddPullable(img)
	if err := f.EnsureImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	id, err := f.Create(ctx, spec("g"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Create(ctx, spec("g")); !errors.Is(err, rtm.ErrConflict) {
		t.Fatalf("second create of one name: %v", err)
	}
	c, err := f.Inspect(ctx, "g")
	if err != nil || c.State != rtm.StateCreated || !c.Owned || c.GameID != "g" || c.ImageRef != img || c.Generation != 3 {
		t.Fatalf("created: %+v %v", c, err)
	}
	if err := f.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if c, _ := f.Inspect(ctx, "g"); !c.Running() || c.IP == "" {
		t.Fatalf("started: %+v", c)
	}
	if err := f.Stop(ctx, id, time.Second); err != nil {
		t.Fatal(err)
	}
	if c, _ := f.Inspect(ctx, "g"); c.State != rtm.StateExited || c.ExitCode != 143 {
		t.Fatalf("stopped: %+v", c)
	}
	if err := f.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Inspect(ctx, "g"); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("inspect after remove: %v", err)
	}
	if err := f.Start(ctx, id); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("start of a removed container: %v", err)
	}

	strict := runtimetest.NewWorld(runtimetest.Options{StrictRemove: true})
	strict.AddImages(img)
	sf := strict.As("p1")
	id, _ = sf.Create(ctx, spec("g"))
	_ = sf.Start(ctx, id)
	if err := sf.Remove(ctx, id); !errors.Is(err, rtm.ErrConflict) {
		t.Fatalf("strict remove of a running container: %v", err)
	}
}

func TestFake_faults_failHangAndLate(t *testing.T) {
	ctx := context.Background()
	w := runtimetest.NewWorld(runtimetest.Options{})
	w.AddImages(img)
	f := w.As("p1")

	once := w.Inject(runtimetest.Fault{Kind: runtimetest.Create, GameID: "g", Times: 1})
	if _, err := f.Create(ctx, spec("g")); !errors.Is(err, rtm.ErrUnavailable) {
		t.Fatalf("injected transient failure: %v", err)
	}
	if _, ok := w.Container("g"); ok || once.Hits() != 1 {
		t.Fatal("a failed create made a container")
	}
	id, err := f.Create(ctx, spec("g"))
	if err != nil {
		t.Fatalf("the fault applied twice: %v", err)
	}

	forever := w.Inject(runtimetest.Fault{Kind: runtimetest.Start, Err: runtimetest.Daemon("OCI runtime create failed")})
	for range 3 {
		err := f.Start(ctx, id)
		if rtm.CodeOf(err, "") != rtm.CodeContainerStartFailed || !strings.Contains(rtm.MessageOf(err), "OCI runtime create failed") {
			t.Fatalf("daemon refusal of start: %v", err)
		}
	}
	forever.Clear()
	w.Inject(runtimetest.Fault{Kind: runtimetest.Stop, Err: runtimetest.Daemon("tried to kill container, but did not receive an exit event")})
	if err := f.Stop(ctx, id, 0); err == nil || rtm.CodeOf(err, "") != "" || !strings.Contains(err.Error(), "did not receive an exit event") {
		t.Fatalf("daemon refusal of stop: %v", err)
	}
	w.ClearFaults()

	late := w.Inject(runtimetest.Fault{Kind: runtimetest.Start, Mode: runtimetest.Late, Times: 1})
	if err := f.Start(ctx, id); !errors.Is(err, rtm.ErrUnavailable) {
		t.Fatalf("late reply: %v", err)
	}
	if c, _ := w.Container("g"); !c.Running() || late.Hits() != 1 {
		t.Fatalf("a late start did not take effect: %+v", c)
	}

	hang := w.Inject(runtimetest.Fault{Kind: runtimetest.Stop, Mode: runtimetest.Hang, Times: 1})
	done := make(chan error)
	go func() { done <- f.Stop(ctx, id, 0) }()
	waitFor(t, func() bool { return hang.Hits() == 1 })
	if c, _ := w.Container("g"); !c.Running() {
		t.Fatal("a hanging stop acted before it was released")
	}
	hang.Release()
	if err := <-done; err != nil {
		t.Fatalf("released stop: %v", err)
	}
	if c, _ := w.Container("g"); c.Running() {
		t.Fatal("a released stop did not act")
	}

	w.Inject(runtimetest.Fault{Kind: runtimetest.Start, Mode: runtimetest.Hang})
	cctx, cancel := context.WithCancel(ctx)
	go func() { done <- f.Start(cctx, id) }()
	waitFor(t, func() bool { return len(w.Calls()) > 0 && w.Calls()[len(w.Calls())-1].Kind == runtimetest.Start })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("hang ended by the context: %v", err)
	}
	w.ClearFaults()
	w.Inject(runtimetest.Fault{Kind: runtimetest.Start, Mode: runtimetest.Hang, Timeout: time.Millisecond})
	if err := f.Start(ctx, id); !errors.Is(err, rtm.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hang with a call timeout: %v", err)
	}
	if err := f.Start(cctx, id); !errors.Is(err, context.Canceled) {
		t.Fatalf("call with an ended context: %v", err)
	}
	if calls := w.Calls(); !calls[len(calls)-1].Refused || calls[len(calls)-1].Effect {
		t.Fatalf("a call with an ended context was not refused: %v", calls[len(calls)-1])
	}
}

func TestFake_world_eventsDeathsAndProbes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := runtimetest.NewWorld(runtimetest.Options{})
	w.AddImages(img)
	f := w.As("p1")
	events, errs := f.Events(ctx)

	id, _ := f.Create(ctx, spec("g"))
	_ = f.Start(ctx, id)
	c, _ := f.Inspect(ctx, "g")
	if err := f.Probe(ctx, c, "http://galaxy-game-g:8080"); err != nil {
		t.Fatalf("healthy probe: %v", err)
	}
	w.SetProbe("g", runtimetest.Unhealthy)
	if err := f.Probe(ctx, c, ""); !errors.Is(err, rtm.ErrUnhealthy) {
		t.Fatalf("unhealthy probe: %v", err)
	}
	w.SetProbe("g", runtimetest.NoAnswer)
	if err := f.Probe(ctx, c, ""); err == nil || errors.Is(err, rtm.ErrUnhealthy) {
		t.Fatalf("probe of an engine that does not answer: %v", err)
	}
	if !w.Die("g", 0, true) {
		t.Fatal("no container died")
	}
	if c, _ := w.Container("g"); c.State != rtm.StateExited || !c.OOMKilled || c.ExitCode != 137 {
		t.Fatalf("after OOM: %+v", c)
	}
	// The address went back to the pool: another game's engine may hold it now.
	w.SetProbe("g", runtimetest.Healthy)
	other, _ := w.HandStart("h", img, true)
	if err := f.Probe(ctx, c, ""); err != nil {
		t.Fatalf("a stale address reaches whoever holds it now: %v", err)
	}
	if calls := w.Calls(); calls[len(calls)-1].ContainerID != other {
		t.Fatalf("the probe reached %v, want %s", calls[len(calls)-1], other)
	}
	if !w.Vanish("g") {
		t.Fatal("nothing vanished")
	}
	var got []string
	for _, want := range []string{"create", "start", "oom", "die", "create", "start", "destroy"} {
		ev := <-events
		got = append(got, ev.Action)
		if ev.Action != want {
			t.Fatalf("events %v, want %s next", got, want)
		}
	}
	if list, _ := f.List(ctx); len(list) != 1 || list[0].ID != other || list[0].IP != "" {
		t.Fatalf("list: %+v", list)
	}
	w.BreakEvents()
	if err := <-errs; !errors.Is(err, rtm.ErrUnavailable) {
		t.Fatalf("broken stream: %v", err)
	}
	_, errs = f.Events(ctx)
	cancel()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("stream after its context ended: %v", err)
	}
}

func TestInterleavings_findsOverlappingMutationsOfTwoCallers(t *testing.T) {
	w := runtimetest.NewWorld(runtimetest.Options{})
	w.AddImages(img)
	ctx := context.Background()
	a, b := w.As("a"), w.As("b")
	id, _ := a.Create(ctx, spec("g"))
	_ = a.Start(ctx, id)
	hang := w.Inject(runtimetest.Fault{Kind: runtimetest.Remove, Caller: "a", Mode: runtimetest.Hang, Times: 1})
	done := make(chan error)
	go func() { done <- a.Remove(ctx, id) }()
	waitFor(t, func() bool { return hang.Hits() == 1 })
	_ = b.Stop(ctx, id, 0)
	hang.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := runtimetest.Interleavings(w.Calls()); len(got) != 1 {
		t.Fatalf("interleavings: %v", got)
	}
	if got := runtimetest.Interleavings(w.Calls()[:1]); len(got) != 0 {
		t.Fatalf("one caller alone interleaves: %v", got)
	}
	if w.MaxLive("g") != 1 || len(w.TwoLive()) != 0 {
		t.Fatalf("live count: %d %v", w.MaxLive("g"), w.TwoLive())
	}
}

// waitFor polls cond until it holds, failing the test after 5s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		<-tick.C
	}
}
