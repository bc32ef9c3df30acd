package controllers_test

import (
	"context"
	"sync"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/runtime/runtimetest"
)

// slowPods is the fake runtime behaving as the Kubernetes one does: a start leaves the engine on
// its way (BeginStart answers *rtm.Starting, Inspect shows it Starting) until the test lets it
// run, as a kubelet would, or makes its start fail.
type slowPods struct {
	*runtimetest.Fake
	mu    sync.Mutex
	onWay map[string]bool  // container id → created, not yet running
	fail  map[string]error // container id → what BeginStart answers from now on
	begun int
}

const startWithin = time.Minute

func newSlowPods(f *runtimetest.Fake) *slowPods {
	return &slowPods{Fake: f, onWay: map[string]bool{}, fail: map[string]error{}}
}

func (p *slowPods) BeginStart(_ context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.begun++
	if err := p.fail[id]; err != nil {
		return err
	}
	if c, ok := p.World().Container(p.gameOf(id)); ok && c.ID == id && c.Running() {
		return nil
	}
	p.onWay[id] = true
	return &rtm.Starting{ID: id, Reason: "ContainerCreating", Within: startWithin}
}

func (p *slowPods) gameOf(id string) string {
	for _, c := range p.World().Containers() {
		if c.ID == id {
			return c.GameID
		}
	}
	return ""
}

func (p *slowPods) Inspect(ctx context.Context, gameID string) (rtm.Container, error) {
	c, err := p.Fake.Inspect(ctx, gameID)
	p.mu.Lock()
	c.Starting = err == nil && p.onWay[c.ID]
	p.mu.Unlock()
	return c, err
}

func (p *slowPods) Stop(ctx context.Context, id string, grace time.Duration) error {
	p.mu.Lock()
	delete(p.onWay, id) // deleted before it ran: it never will
	p.mu.Unlock()
	return p.Fake.Stop(ctx, id, grace)
}

// arrive lets game's container on its way run, as the kubelet does once the node, image and
// volume are there.
func (p *slowPods) arrive(t *testing.T, gameID string) {
	t.Helper()
	c, ok := p.World().Container(gameID)
	p.mu.Lock()
	onWay := ok && p.onWay[c.ID]
	delete(p.onWay, c.ID)
	p.mu.Unlock()
	if !onWay {
		t.Fatalf("%s has no container on its way", gameID)
	}
	if err := p.Fake.Start(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
}

// failStart makes game's container on its way show that it cannot start (a pull error): it is no
// longer Starting, and BeginStart answers err.
func (p *slowPods) failStart(gameID string, err error) {
	c, _ := p.World().Container(gameID)
	p.mu.Lock()
	p.fail[c.ID] = err
	delete(p.onWay, c.ID)
	p.mu.Unlock()
}

// slowGame is a game of its own fault world whose reconciler drives slowPods.
func slowGame(t *testing.T, name string) (*faultGame, *slowPods) {
	var pods *slowPods
	g := newFaultEnv(t).gameOn(t, name, func(f *runtimetest.Fake) controllers.ContainerRuntime { pods = newSlowPods(f); return pods })
	return g, pods
}

// reconcileOnce runs one reconcile of g as the controller would on an event.
func (g *faultGame) reconcileOnce() time.Duration {
	g.t.Helper()
	res, err := g.rec.Reconcile(context.Background(), g.id)
	if err != nil {
		g.t.Fatalf("Reconcile: %v", err)
	}
	return res.RequeueAfter
}

func (g *faultGame) answerOf(req rtm.Request) *rtm.Answer {
	g.t.Helper()
	a, err := g.fe.st.RequestAnswer(context.Background(), req.Channel, req.RequestID)
	if err != nil {
		g.t.Fatal(err)
	}
	return a
}

// A runtime whose starts take seconds (Kubernetes) gets BeginStart: the reconcile that creates
// the engine ends at once, waiting for the runtime's event, and the reconcile that event causes
// answers the job, exactly once, with the record and events a synchronous start gives.
func TestGameReconciler_BeginStart_answersWhenTheEngineRuns(t *testing.T) {
	g, pods := slowGame(t, "slow-start")
	req := g.job(rtm.OpStart, imgA)

	for i := range 2 { // the create, then an event while the Pod is still on its way
		if after := g.reconcileOnce(); after <= 0 || after > startWithin {
			t.Fatalf("reconcile %d: requeue after %s, want what is left of the runtime's %s", i+1, after, startWithin)
		}
		if a := g.answerOf(req); a != nil {
			t.Fatalf("start answered while the engine is on its way: %+v", *a)
		}
	}
	if n := len(g.world.Containers()); n != 1 {
		t.Fatalf("%d containers, want the one created", n)
	}
	begunAt := g.record().FenceEpoch
	pods.arrive(t, g.id)
	if after := g.reconcileOnce(); after != 0 {
		t.Fatalf("requeue after %s once running, want none", after)
	}
	a := g.answerOf(req)
	c, _ := g.world.Container(g.id)
	rec := g.record()
	if a == nil || a.Outcome != rtm.OutcomeSucceeded || rec.Status != rtm.StatusRunning || rec.CurrentContainerID != c.ID ||
		rec.CurrentImageRef != imgA || rec.ObservedGeneration != rec.Generation {
		t.Fatalf("answer %+v, record %+v; want success, running on %s", a, rec, c.ID)
	}
	creates := 0
	for _, call := range g.world.Calls() {
		if call.Kind == runtimetest.Create {
			creates++
		}
	}
	// The event while it was on its way cost no lease: the reconcile ended on what it observed.
	if creates != 1 || pods.begun != 1 {
		t.Fatalf("%d creates and %d BeginStarts, want 1 and 1", creates, pods.begun)
	}
	// Nor did the answer: it was written with the epoch the start was begun under.
	if rec.FenceEpoch != begunAt {
		t.Fatalf("fencing epoch %d after the answer, %d when the start was begun: want no second fence", rec.FenceEpoch, begunAt)
	}
}

// Another holder that fenced the record after the start was begun (a second RTM took the lease
// meanwhile) makes the start's own epoch stale: its answer is then written under the lease, as
// any other, and still exactly once.
func TestGameReconciler_BeginStart_fencedMeanwhileSettlesUnderTheLease(t *testing.T) {
	g, pods := slowGame(t, "slow-fenced")
	req := g.job(rtm.OpStart, imgA)
	g.reconcileOnce()
	begunAt := g.record().FenceEpoch
	if _, _, err := g.fe.st.Fence(context.Background(), g.id); err != nil { // the other holder
		t.Fatal(err)
	}
	pods.arrive(t, g.id)
	g.mustSettle()
	a := g.answerOf(req)
	rec := g.record()
	if a == nil || a.Outcome != rtm.OutcomeSucceeded || rec.Status != rtm.StatusRunning {
		t.Fatalf("answer %+v, record %s; want success, running", a, rec.Status)
	}
	if rec.FenceEpoch != begunAt+2 {
		t.Fatalf("fencing epoch %d, begun under %d: want the other holder's fence and this one's lease", rec.FenceEpoch, begunAt)
	}
	if n := len(g.world.Containers()); n != 1 || pods.begun != 1 {
		t.Fatalf("%d containers, %d BeginStarts; want the one begun", n, pods.begun)
	}
}

// A stop that arrives while the Pod is on its way stops it: otherwise it would run by itself
// after the stop was answered.
func TestGameReconciler_BeginStart_stopWhileOnItsWay(t *testing.T) {
	g, pods := slowGame(t, "slow-stop")
	start := g.job(rtm.OpStart, imgA)
	g.reconcileOnce()
	stop := g.job(rtm.OpStop, "")
	g.mustSettle()
	for _, req := range []rtm.Request{start, stop} {
		if g.answerOf(req) == nil {
			t.Fatalf("%s not answered", req.Kind)
		}
	}
	pods.mu.Lock()
	left := len(pods.onWay)
	pods.mu.Unlock()
	if rec := g.record(); rec.Status != rtm.StatusStopped || left != 0 {
		t.Fatalf("record %s with %d containers still on their way; want stopped, none", rec.Status, left)
	}
}

// A start the runtime gives up on (no capacity within its start timeout, an image it cannot
// pull) is answered failed with the runtime's code, and the Pod is removed.
func TestGameReconciler_BeginStart_failureIsAnswered(t *testing.T) {
	g, pods := slowGame(t, "slow-fail")
	req := g.job(rtm.OpStart, imgA)
	g.reconcileOnce()
	pods.failStart(g.id, runtimetest.Coded(rtm.CodeContainerStartFailed, "pod galaxy-game-x is not running after 2m0s: not scheduled"))
	g.mustSettle()
	a := g.answerOf(req)
	if a == nil || a.Outcome == rtm.OutcomeSucceeded || a.Code != rtm.CodeContainerStartFailed {
		t.Fatalf("answer %+v, want failed with container_start_failed", a)
	}
	if rec := g.record(); rec.Status != rtm.StatusFailed || len(g.world.Containers()) != 0 {
		t.Fatalf("record %s, %d containers; want failed, none", rec.Status, len(g.world.Containers()))
	}
}
