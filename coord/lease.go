package coord

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
)

// The lease rule. Another process may take a game's lease in two ways: when the lease key has
// expired, or when the holder's instance key has expired (a killed process must not block its
// games for a whole lease TTL). Redis counts both TTLs from when it received the SET or PEXPIRE,
// which is never earlier than when this process sent it. So a holder keeps acting only until
//
//	min(last lease SET/PEXPIRE sent + 3/4 lease TTL, last instance-key SET sent + 3/4 InstanceTTL)
//
// counting only calls Redis answered with success. With the defaults (lease TTL 30 s, renewed
// every 10 s; InstanceTTL 5 s, beaten every 500 ms) that is 22.5 s after the last renewal and
// 3.75 s after the last beat, while another process can take the lease no sooner than 30 s and
// 5 s after them: 7.5 s and 1.25 s of margin for the clocks of this host and Redis's to disagree
// in rate. The beat is frequent so that a few slow or lost beats (six in a row) do not end leases.
//
// The deadline is checked against both the monotonic and the wall clock: the monotonic clock
// stops while a VM is paused, the wall clock does not (it is stepped forward when the guest
// resumes); whichever says the deadline has passed wins.
const (
	safeNum, safeDen = 3, 4 // the safe fraction of a TTL
	beatsPerTTL      = 10   // heartbeats (and lease checks) per InstanceTTL
)

// InstanceTTL is how long an instance key outlives its last heartbeat.
const InstanceTTL = 5 * time.Second

// ErrLeaseLost is the cause (context.Cause) of a lease context that ended because the lease
// was lost or could no longer be trusted; errors.Is finds it in the cause.
var ErrLeaseLost = errors.New("lease lost")

var (
	// acquireScript beats this process's instance key (KEYS[2]), then takes the lease (KEYS[1])
	// when it is free, already ours (a release whose DEL did not get through), or held by an
	// instance whose key has expired (a process killed without releasing).
	acquireScript = redis.NewScript(`redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. cur) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if cur then return 2 end
return 1`)
	releaseScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
	renewScript   = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`)
)

// safe returns the part of a TTL a call sent at t may be trusted for.
func safe(ttl time.Duration) time.Duration { return ttl * safeNum / safeDen }

// passed reports whether deadline is not after now by the monotonic clock (when both carry a
// reading) or by the wall clock.
func passed(now, deadline time.Time) bool {
	return !now.Before(deadline) || !now.Round(0).Before(deadline.Round(0))
}

// beaten records a successful SET of the instance key sent at sent.
func (c *Coord) beaten(sent time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sent.After(c.beat) {
		c.beat = sent
	}
}

// instanceDeadline returns until when the instance key is known to exist (zero once
// deregistered).
func (c *Coord) instanceDeadline() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deregistered || c.beat.IsZero() {
		return time.Time{}
	}
	return c.beat.Add(safe(c.instanceTTL))
}

// Heartbeat keeps this process's instance key alive until ctx ends, then deletes it. Leases held
// by an instance whose key expired (InstanceTTL after its last beat) may be taken over: a killed
// process does not block its games for a whole lease TTL. Each lease of this process is therefore
// trusted only until 3/4 InstanceTTL after the last beat that got through, so Heartbeat must run
// while leases are held: call it before the first Acquire (without it, a lease lasts 3/4
// InstanceTTL, the beat Acquire itself makes). When ctx ends, every lease still held ends at once
// and Acquire fails from then on.
func (c *Coord) Heartbeat(ctx context.Context) error {
	key := instancePrefix + c.owner
	period := c.instanceTTL / beatsPerTTL
	beat := func() error {
		sent := c.now()
		bctx, cancel := context.WithTimeout(ctx, 2*period)
		defer cancel()
		if err := c.rdb.Set(bctx, key, "1", c.instanceTTL).Err(); err != nil {
			return err
		}
		c.beaten(sent)
		return nil
	}
	if err := beat(); err != nil {
		return fmt.Errorf("registering instance: %w", err)
	}
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		// Beats go out on time even while earlier ones hang (a client whose reads are bounded by
		// its ReadTimeout rather than by the context), a few at a time.
		inflight := make(chan struct{}, 4)
		for {
			select {
			case <-ctx.Done():
				c.mu.Lock()
				c.deregistered = true // before the DEL: no lease may outlive the key
				c.mu.Unlock()
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				_ = c.rdb.Del(dctx, key).Err()
				cancel()
				return
			case <-t.C:
				select {
				case inflight <- struct{}{}:
					go func() {
						defer func() { <-inflight }()
						_ = beat()
					}()
				default:
				}
			}
		}
	}()
	return nil
}

// lease is one held lease's state.
type lease struct {
	c  *Coord
	mu sync.Mutex
	// renewed is when the last lease SET or PEXPIRE that got through was sent.
	renewed time.Time
}

// deadline is until when the lease may be trusted: the lease rule above.
func (l *lease) deadline() time.Time {
	l.mu.Lock()
	d := l.renewed.Add(safe(l.c.ttl))
	l.mu.Unlock()
	if i := l.c.instanceDeadline(); i.Before(d) {
		return i
	}
	return d
}

// check returns nil while the lease may be trusted, and the reason it may not otherwise.
func (l *lease) check() error {
	now, d := l.c.now(), l.deadline()
	if passed(now, d) {
		return fmt.Errorf("%w: its deadline %s has passed (now %s)", ErrLeaseLost,
			d.Round(0).Format(time.RFC3339Nano), now.Round(0).Format(time.RFC3339Nano))
	}
	return nil
}

// leaseContext is the context of a held lease. Its Err and Done check the lease's deadline on
// every call, so a process resuming from a freeze sees the lease gone before its next action,
// whether or not the goroutine that cancels it has run yet. Contexts derived from it end when that
// goroutine cancels it (within InstanceTTL/10 of the deadline by the monotonic clock); the
// synchronous check is the one made on the lease context itself.
type leaseContext struct {
	context.Context
	cancel context.CancelCauseFunc
	lease  *lease
}

// Err returns the context's error, first ending the context if the lease's deadline has passed.
func (c *leaseContext) Err() error {
	if err := c.Context.Err(); err != nil {
		return err
	}
	if err := c.lease.check(); err != nil {
		c.cancel(err)
		return c.Context.Err()
	}
	return nil
}

// Done returns the context's channel, closed already if the lease's deadline has passed.
func (c *leaseContext) Done() <-chan struct{} {
	_ = c.Err()
	return c.Context.Done()
}

// Acquire takes gameID's lease. When another process holds it, or this process holds it already
// (another goroutine), the error wraps rtm.ErrConflict; when Redis cannot be asked, or Heartbeat
// has ended, it wraps rtm.ErrUnavailable. A lease key naming this process but not held by it (a
// release whose DEL did not get through) is taken again.
//
// On success it returns the lease context and a release function that ends the context, waits for
// the renewal to stop and deletes the key if it is still ours. The lease context ends (context.Cause
// wraps ErrLeaseLost) when a renewal finds another owner, or when the lease can no longer be
// trusted by the lease rule (see the package's lease constants: 3/4 of the lease TTL after the
// last renewal, 3/4 InstanceTTL after the last heartbeat, whichever comes first). Its Err checks
// the deadline synchronously against the monotonic and the wall clock, so a caller must call
// lctx.Err() right before each action that must not happen without the lease (a mutating Docker
// call, a commit) and give up when it is not nil. Each attempt's result goes to the
// LeaseObserver, if any.
func (c *Coord) Acquire(ctx context.Context, gameID string) (context.Context, func(), error) {
	lctx, release, err := c.acquire(ctx, gameID)
	if c.observer != nil {
		r := "acquired"
		switch {
		case errors.Is(err, rtm.ErrConflict):
			r = "contended"
		case err != nil:
			r = "error"
		}
		c.observer.LeaseAttempt(ctx, r)
	}
	return lctx, release, err
}

func (c *Coord) acquire(ctx context.Context, gameID string) (context.Context, func(), error) {
	c.mu.Lock()
	switch {
	case c.deregistered:
		c.mu.Unlock()
		return nil, nil, fmt.Errorf("taking lease of %s: the instance is deregistered: %w", gameID, rtm.ErrUnavailable)
	case c.held[gameID]:
		c.mu.Unlock()
		return nil, nil, fmt.Errorf("lease of %s is held by this process: %w", gameID, rtm.ErrConflict)
	}
	c.held[gameID] = true
	c.mu.Unlock()
	unhold := func() {
		c.mu.Lock()
		delete(c.held, gameID)
		c.mu.Unlock()
	}

	key := leasePrefix + gameID
	sent := c.now()
	n, err := acquireScript.Run(ctx, c.rdb, []string{key, instancePrefix + c.owner},
		c.owner, c.ttl.Milliseconds(), instancePrefix, c.instanceTTL.Milliseconds()).Int()
	if err != nil {
		unhold()
		return nil, nil, fmt.Errorf("taking lease of %s: %w: %w", gameID, rtm.ErrUnavailable, err)
	}
	c.beaten(sent)
	if n == 0 {
		unhold()
		return nil, nil, fmt.Errorf("lease of %s is held elsewhere: %w", gameID, rtm.ErrConflict)
	}
	l := &lease{c: c, renewed: sent}
	inner, cancel := context.WithCancelCause(ctx)
	lctx := &leaseContext{Context: inner, cancel: cancel, lease: l}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.watch(lctx) }()
	go func() { defer wg.Done(); l.renew(lctx, key) }()
	release := func() {
		cancel(fmt.Errorf("%w: released", ErrLeaseLost))
		wg.Wait()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer rcancel()
		// A DEL that does not get through leaves a key naming us: our next Acquire takes it.
		_ = releaseScript.Run(rctx, c.rdb, []string{key}, c.owner).Err()
		unhold()
	}
	return lctx, release, nil
}

// watch ends the lease context as soon as its deadline passes, checking every InstanceTTL/10,
// so that calls made under contexts derived from it stop too.
func (l *lease) watch(lctx *leaseContext) {
	rtm.Every(lctx.Context, l.c.instanceTTL/beatsPerTTL, func() bool {
		_ = lctx.Err() // ends the context if the deadline has passed, by either clock
		return true
	})
}

// renew extends the lease key every third of its TTL; a renewal that finds another owner ends
// the lease context. A renewal call may not outlast the lease's current deadline.
func (l *lease) renew(lctx *leaseContext, key string) {
	rtm.Every(lctx.Context, l.c.ttl/3, func() bool {
		sent := l.c.now()
		rctx, cancel := context.WithDeadline(lctx.Context, l.deadline())
		n, err := renewScript.Run(rctx, l.c.rdb, []string{key}, l.c.owner, l.c.ttl.Milliseconds()).Int()
		cancel()
		switch {
		case err == nil && n == 0:
			lctx.cancel(fmt.Errorf("%w: %s is held by another process now", ErrLeaseLost, key))
			return false
		case err == nil && lctx.Err() == nil: // a lease already untrusted is not revived
			l.mu.Lock()
			if sent.After(l.renewed) {
				l.renewed = sent
			}
			l.mu.Unlock()
		}
		return true
	})
}
