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

// QueueOptions tune the work queue; a zero field takes the default beside it (RTM's
// configuration sets them all: RTMANAGER_RECONCILE_*).
type QueueOptions struct {
	Workers    int           // concurrent reconciles (16)
	Rate       int           // reconciles started per second, across games (50)
	Burst      int           // bursts of the rate (300)
	BackoffMin time.Duration // a failed game's first wait, doubling per failure (5ms)
	BackoffMax time.Duration // its longest wait (1m)
	Buffer     int           // game ids the sources' hand-off holds before Enqueue blocks (8192)
}

func (o QueueOptions) withDefaults() QueueOptions {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Workers, 16)
	def(&o.Rate, 50)
	def(&o.Burst, 300)
	def(&o.Buffer, 8192)
	if o.BackoffMin <= 0 {
		o.BackoffMin = 5 * time.Millisecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = time.Minute
	}
	return o
}

// NewController wraps r with o.Workers concurrent reconciles. The rate limiter combines per-game
// exponential backoff (o.BackoffMin to o.BackoffMax) with an overall token bucket (o.Rate a
// second, bursts of o.Burst).
func NewController(r reconcile.TypedReconciler[string], o QueueOptions, log logr.Logger) (*Controller, error) {
	o = o.withDefaults()
	c := &Controller{r: r, pending: make(chan string, o.Buffer), workers: o.Workers}
	skip, noPQ := true, false
	limiter := workqueue.NewTypedMaxOfRateLimiter[string](
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](o.BackoffMin, o.BackoffMax),
		&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(o.Rate), o.Burst)},
	)
	ctrl, err := controller.NewTypedUnmanaged[string]("game", controller.TypedOptions[string]{
		MaxConcurrentReconciles: o.Workers,
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
