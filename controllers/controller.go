package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// Controller runs the game reconciler behind controller-runtime's rate-limited workqueue, keyed
// by game id. Every source (jobs, Docker events, ticks, sweeps, REST) feeds it through Enqueue.
type Controller struct {
	ctrl    controller.TypedController[string]
	r       reconcile.TypedReconciler[string]
	pending chan string
	workers int
}

// NewController wraps r with workers concurrent reconciles. The rate limiter combines per-game
// exponential backoff (5ms to 1m) with an overall token bucket (50/s, burst 300).
func NewController(r reconcile.TypedReconciler[string], workers int, log logr.Logger) (*Controller, error) {
	c := &Controller{r: r, pending: make(chan string, 8192), workers: workers}
	skip, noPQ := true, false
	limiter := workqueue.NewTypedMaxOfRateLimiter[string](
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, time.Minute),
		&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(50), 300)},
	)
	ctrl, err := controller.NewTypedUnmanaged[string]("game", controller.TypedOptions[string]{
		MaxConcurrentReconciles: workers,
		Reconciler:              r,
		RateLimiter:             limiter,
		SkipNameValidation:      &skip,
		UsePriorityQueue:        &noPQ,
		Logger:                  log,
		// Every line controller-runtime logs about a reconcile (its "Reconciler error" among
		// them) names the game.
		LogConstructor: func(gameID *string) logr.Logger {
			l := log.WithValues("controller", "game")
			if gameID != nil {
				l = l.WithValues("game_id", *gameID)
			}
			return l
		},
	})
	if err != nil {
		return nil, fmt.Errorf("creating controller: %w", err)
	}
	src := source.TypedFunc[string](func(ctx context.Context, q workqueue.TypedRateLimitingInterface[string]) error {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case id := <-c.pending:
					q.Add(id)
				}
			}
		}()
		return nil
	})
	if err := ctrl.Watch(src); err != nil {
		return nil, fmt.Errorf("watching the enqueue source: %w", err)
	}
	c.ctrl = ctrl
	return c, nil
}

// Enqueue puts a game id on the queue; duplicates collapse there. It blocks only when more than
// 8192 ids wait to be handed to the queue.
func (c *Controller) Enqueue(gameID string) { c.pending <- gameID }

// Start runs the controller until ctx ends.
func (c *Controller) Start(ctx context.Context) error { return c.ctrl.Start(ctx) }

// InitialPass reconciles every given game synchronously (at the controller's concurrency),
// before any worker starts. Games that ask to be retried are enqueued for the running controller.
// The same few goroutines reconcile game after game: a goroutine per game would grow a fresh
// stack through the store's call chain every time, which cost a tenth of a pass over converged
// games.
func (c *Controller) InitialPass(ctx context.Context, ids []string) (failed int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := make(chan string)
	for range min(c.workers, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range next {
				res, err := c.r.Reconcile(ctx, id)
				if err != nil || res.RequeueAfter > 0 {
					if err != nil {
						mu.Lock()
						failed++
						mu.Unlock()
					}
					go c.Enqueue(id)
				}
			}
		}()
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
	return failed
}
