package controllers_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/galaxy-platform/rtmanager/controllers"
)

// TestController_EnqueueFirst_goesAheadOfTheQueue: with one worker busy, games queued by Enqueue
// wait in the order they came, and a game queued by EnqueueFirst (new, or already queued) is
// reconciled before them.
func TestController_EnqueueFirst_goesAheadOfTheQueue(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	r := reconcile.TypedFunc[string](func(_ context.Context, id string) (reconcile.Result, error) {
		mu.Lock()
		order = append(order, id)
		mu.Unlock()
		if id == "busy" {
			<-release
		}
		return reconcile.Result{}, nil
	})
	reconciled := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(order)
	}
	ctrl, err := controllers.NewController(r, controllers.QueueOptions{Workers: 1}, logr.Discard())
	if err != nil {
		t.Fatalf("NewController: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	ctrl.Enqueue("busy")
	waitFor(t, "the worker is busy", func() bool { return len(reconciled()) == 1 })
	for _, id := range []string{"g1", "g2", "g3"} {
		ctrl.Enqueue(id)
	}
	ctrl.EnqueueFirst("g3") // already queued: it moves ahead
	ctrl.EnqueueFirst("g4")
	waitFor(t, "four games waiting", func() bool { return queueDepth(t) == 4 })
	close(release)

	waitFor(t, "every game reconciled", func() bool { return len(reconciled()) == 5 })
	if got, want := reconciled(), []string{"busy", "g3", "g4", "g1", "g2"}; !slices.Equal(got, want) {
		t.Errorf("reconciled %v, want %v", got, want)
	}
}

// queueDepth is the game queue's workqueue_depth, across priorities.
func queueDepth(t *testing.T) int {
	t.Helper()
	fams, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	var depth float64
	for _, f := range fams {
		if f.GetName() != "workqueue_depth" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "name" && l.GetValue() == "game" {
					depth += m.GetGauge().GetValue()
				}
			}
		}
	}
	return int(depth)
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
