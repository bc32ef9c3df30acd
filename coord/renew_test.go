package coord_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/coord"
)

// A holder that cannot renew (Redis unreachable from it, or the process frozen) must stop acting
// before its key can expire and another process take the game: its lease context ends before the
// TTL is over, while the key is still there.
func TestCoord_Acquire_unrenewableLeaseCancelsContextBeforeItExpires(t *testing.T) {
	opts := env.RedisOptions(env.NewRedisDB(t))
	holder, other := redis.NewClient(opts), redis.NewClient(opts)
	t.Cleanup(func() { other.Close() })
	ctx := context.Background()
	const ttl = 2 * time.Second
	start := time.Now()
	lctx, release, err := coord.New(holder, "a", ttl).Acquire(ctx, "g1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	_ = holder.Close() // every renewal fails from now on
	select {
	case <-lctx.Done():
	case <-time.After(2 * ttl):
		t.Fatal("the context of a lease that could not be renewed outlived the lease")
	}
	if took := time.Since(start); took >= ttl {
		t.Fatalf("cancelled %s after acquiring, not before the TTL (%s) let another process in", took, ttl)
	}
	if n := other.Exists(ctx, "rtmanager:game_lease:g1").Val(); n != 1 {
		t.Fatal("the key expired before the holder's context was cancelled")
	}
}
