package coord_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/coord"
)

// Short TTLs keep the lease tests fast; the rule is the same as with the production defaults.
const (
	testLeaseTTL    = 3 * time.Second
	testInstanceTTL = time.Second
)

// A holder cut off from Redis (a network that drops packets) must stop acting before another
// process can take its lease: when the other's Acquire succeeds, the holder's lease context
// already reports an error. The other takes it over once the holder's instance key expires.
func TestCoord_Acquire_holderCutOffFromRedisStopsBeforeAnotherTakesItsLease(t *testing.T) {
	px, proxied, direct := viaProxy(t)
	ctx := context.Background()
	a := coord.New(proxied, "a", testLeaseTTL, coord.WithInstanceTTL(testInstanceTTL))
	b := coord.New(direct, "b", testLeaseTTL, coord.WithInstanceTTL(testInstanceTTL))
	heartbeat(t, a)
	heartbeat(t, b)
	lctx, release, err := a.Acquire(ctx, "g1")
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan time.Time, 1)
	go func() { <-lctx.Done(); ended <- time.Now() }()

	px.Cut()
	cut := time.Now()
	var took time.Time
	var holderErr error
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for took.IsZero() && time.Since(cut) < 6*time.Second {
		_, releaseB, err := b.Acquire(ctx, "g1")
		switch {
		case err == nil:
			holderErr = lctx.Err() // at the instant b holds the lease
			took = time.Now()
			releaseB()
		case !errors.Is(err, rtm.ErrConflict):
			t.Fatalf("b: %v", err)
		default:
			<-tick.C
		}
	}
	px.Heal()
	var end time.Time
	select {
	case end = <-ended:
	case <-time.After(2 * testLeaseTTL):
		t.Fatal("the lease context of a holder cut off from Redis never ended")
	}
	release()
	if took.IsZero() {
		t.Fatal("the lease of a holder cut off from Redis for 6 s was never taken over")
	}
	t.Logf("cut off at 0; holder's context ended at %s; b acquired at %s", end.Sub(cut), took.Sub(cut))
	if holderErr == nil {
		t.Fatalf("b acquired the lease %s after the cut while the holder's lease context still reported no error", took.Sub(cut))
	}
	if !errors.Is(context.Cause(lctx), coord.ErrLeaseLost) {
		t.Fatalf("cause %v, want ErrLeaseLost", context.Cause(lctx))
	}
}

// A process frozen or paused with its VM resumes with its monotonic clock behind: the wall clock
// alone must end the lease, and synchronously, before any timer has run.
func TestCoord_Acquire_wallClockPastTheDeadlineEndsTheLeaseAtOnce(t *testing.T) {
	rdb := client(t)
	var jump atomic.Int64
	clock := func() time.Time {
		if d := jump.Load(); d != 0 {
			return time.Now().Round(0).Add(time.Duration(d)) // the wall clock only
		}
		return time.Now()
	}
	c := coord.New(rdb, "a", 30*time.Second, coord.WithClock(clock)) // the production TTLs
	heartbeat(t, c)
	lctx, release, err := c.Acquire(context.Background(), "g1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if err := lctx.Err(); err != nil {
		t.Fatalf("fresh lease: %v", err)
	}
	jump.Store(int64(time.Minute))
	if lctx.Err() == nil {
		t.Fatal("a wall clock a minute past the lease's deadline did not end it")
	}
	select {
	case <-lctx.Done():
	default:
		t.Fatal("Err reported the end but Done is open")
	}
	if !errors.Is(context.Cause(lctx), coord.ErrLeaseLost) {
		t.Fatalf("cause %v, want ErrLeaseLost", context.Cause(lctx))
	}
}

// Done, too, reports a passed deadline at once.
func TestCoord_Acquire_doneIsClosedOnceTheWallClockIsPastTheDeadline(t *testing.T) {
	rdb := client(t)
	var jump atomic.Int64
	clock := func() time.Time { return time.Now().Round(0).Add(time.Duration(jump.Load())) }
	c := coord.New(rdb, "a", 30*time.Second, coord.WithClock(clock))
	heartbeat(t, c)
	lctx, release, err := c.Acquire(context.Background(), "g1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	jump.Store(int64(time.Hour))
	select {
	case <-lctx.Done():
	default:
		t.Fatal("Done of a lease past its deadline is open")
	}
}

// Without heartbeats, the lease lasts no longer than the instance key Acquire itself beat: once
// that key is gone (and another process could take the lease), the lease context reports it.
func TestCoord_Acquire_withoutHeartbeatEndsBeforeTheInstanceKeyExpires(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	c := coord.New(rdb, "a", testLeaseTTL, coord.WithInstanceTTL(testInstanceTTL))
	lctx, release, err := c.Acquire(ctx, "g1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(testLeaseTTL); rdb.Exists(ctx, "rtmanager:instance:a").Val() == 1; <-tick.C {
		if time.Now().After(deadline) {
			t.Fatal("the instance key Acquire beat never expired")
		}
	}
	if lctx.Err() == nil {
		t.Fatal("the instance key expired while the lease context reported no error")
	}
}

// A release whose DEL did not get through leaves a key naming this process: its next Acquire of
// the game takes it, while other processes still cannot.
func TestCoord_Acquire_takesItsOwnLeaseLeftByALostRelease(t *testing.T) {
	px, proxied, direct := viaProxy(t)
	ctx := context.Background()
	a := coord.New(proxied, "a", 30*time.Second)
	heartbeat(t, a)
	_, release := acquire(t, a, "g1")
	px.Cut()
	release() // the DEL never reaches Redis
	px.Heal()
	if v := direct.Get(ctx, "rtmanager:game_lease:g1").Val(); v != "a" {
		t.Fatalf("lease key holds %q after a lost release, want a (the test's premise)", v)
	}
	wantConflict(t, coord.New(direct, "b", 30*time.Second), "g1", "another process, of a live process's lease")
	lctx, release, err := a.Acquire(ctx, "g1")
	if err != nil {
		t.Fatalf("the process's own lease left by a lost release: %v", err)
	}
	defer release()
	if lctx.Err() != nil {
		t.Fatal(lctx.Err())
	}
}

// Inside one process a game's lease is held by one caller at a time.
func TestCoord_Acquire_refusesAGameThisProcessHolds(t *testing.T) {
	a := coord.New(client(t), "a", 30*time.Second)
	heartbeat(t, a)
	handOver(t, a, a, "g1")
}

// When the heartbeat ends, the instance key is deleted: the leases still held end, and no new
// one is taken.
func TestCoord_Heartbeat_endingEndsTheLeases(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	a := coord.New(rdb, "a", 30*time.Second)
	stop := heartbeat(t, a)
	lctx, release := acquire(t, a, "g1")
	defer release()
	stop()
	select {
	case <-lctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a lease outlived the heartbeat")
	}
	if _, _, err := a.Acquire(ctx, "g2"); !errors.Is(err, rtm.ErrUnavailable) {
		t.Fatalf("Acquire after the heartbeat ended: %v, want ErrUnavailable", err)
	}
}

// Outbox ids start again after a database restore: the same id under another database epoch is
// a new entry.
func TestCoord_Publish_sameIDInAnotherEpochIsPublished(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	c := coord.New(rdb, "a", time.Second)
	for i, step := range []struct {
		epoch string
		want  bool
	}{{"before-restore", true}, {"after-restore", true}, {"after-restore", false}, {"before-restore", false}} {
		added, err := c.Publish(ctx, step.epoch, []rtm.OutboxEntry{{ID: 1, Stream: "out", Fields: []string{"n", step.epoch}}}, time.Hour)
		if err != nil || len(added) != 1 || added[0] != step.want {
			t.Fatalf("#%d Publish id 1 in epoch %s: %v %v, want added=%v", i, step.epoch, added, err, step.want)
		}
	}
	if n := rdb.XLen(ctx, "out").Val(); n != 2 {
		t.Fatalf("stream holds %d entries, want 2", n)
	}
}

// attempts records the lease observer's reports.
type attempts struct {
	mu  sync.Mutex
	got []string
}

func (a *attempts) LeaseAttempt(_ context.Context, result string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, result)
}

// The coordination counts its own lease outcomes: acquired, contended (held elsewhere), error
// (Redis refused).
func TestCoord_Acquire_reportsEachAttemptToItsObserver(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	obs := &attempts{}
	a := coord.New(rdb, "a", 30*time.Second, coord.WithLeaseObserver(obs))
	b := coord.New(rdb, "b", 30*time.Second)
	heartbeat(t, a)
	heartbeat(t, b)
	handOver(t, b, a, "g1")
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := a.Acquire(cancelled, "g2"); err == nil {
		t.Fatal("Acquire under a cancelled context succeeded")
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if want := []string{"contended", "acquired", "error"}; !slices.Equal(obs.got, want) {
		t.Errorf("observer told %v, want %v", obs.got, want)
	}
}
