package coord_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

func client(t *testing.T) *redis.Client {
	t.Helper()
	return env.MustRedis(t)
}

// heartbeat starts c's heartbeat until the test ends or stop is called.
func heartbeat(t *testing.T, c *coord.Coord) (stop func()) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	if err := c.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	return stop
}

// acquire takes c's lease on game, failing the test when it cannot.
func acquire(t *testing.T, c *coord.Coord, game string) (context.Context, func()) {
	t.Helper()
	lctx, release, err := c.Acquire(context.Background(), game)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", game, err)
	}
	return lctx, release
}

// handOver checks that while holder holds game's lease other cannot take it, and that other takes
// it once holder released it.
func handOver(t *testing.T, holder, other *coord.Coord, game string) {
	t.Helper()
	_, release := acquire(t, holder, game)
	wantConflict(t, other, game, "another caller while it is held")
	release()
	_, release = acquire(t, other, game)
	release()
}

// viaProxy returns a client of the test's Redis database whose connections go through a proxy
// the test can cut, and a direct client of the same database.
func viaProxy(t *testing.T) (*testenv.Proxy, *redis.Client, *redis.Client) {
	t.Helper()
	opts := env.RedisOptions(env.NewRedisDB(t))
	px := testenv.NewProxy(t, opts.Addr)
	cut := *opts
	cut.Addr = px.Addr()
	cut.ReadTimeout, cut.WriteTimeout, cut.MaxRetries = 300*time.Millisecond, 300*time.Millisecond, -1
	proxied, direct := redis.NewClient(&cut), redis.NewClient(opts)
	t.Cleanup(func() { proxied.Close(); direct.Close() })
	return px, proxied, direct
}

// wantConflict checks that c cannot take game's lease (who names the attempt in the failure).
func wantConflict(t *testing.T, c *coord.Coord, game, who string) {
	t.Helper()
	if _, _, err := c.Acquire(context.Background(), game); !errors.Is(err, rtm.ErrConflict) {
		t.Fatalf("Acquire(%s) by %s: %v, want ErrConflict", game, who, err)
	}
}

func TestCoord_Acquire_excludesOthersUntilReleased(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	a, b := coord.New(rdb, "a", 2*time.Second), coord.New(rdb, "b", 2*time.Second)
	heartbeat(t, a)
	_, release := acquire(t, a, "g1")
	wantConflict(t, b, "g1", "a second holder")
	if ttl := rdb.PTTL(ctx, "rtmanager:game_lease:g1").Val(); ttl <= 0 {
		t.Fatalf("lease has no TTL: %v", ttl)
	}
	// Renewal keeps the lease past its TTL while held.
	time.Sleep(2500 * time.Millisecond)
	if v := rdb.Get(ctx, "rtmanager:game_lease:g1").Val(); v != "a" {
		t.Fatalf("lease holder after a TTL: %q", v)
	}
	release()
	if rdb.Exists(ctx, "rtmanager:game_lease:g1").Val() != 0 {
		t.Fatal("lease key present after release")
	}
	_, release = acquire(t, b, "g1")
	release()
}

func TestCoord_Acquire_lostLeaseCancelsContext(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	lctx, release := acquire(t, coord.New(rdb, "a", 2*time.Second), "g1")
	defer release()
	rdb.Set(ctx, "rtmanager:game_lease:g1", "intruder", time.Minute)
	select {
	case <-lctx.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("a lost lease did not cancel its context")
	}
	release()
	if v := rdb.Get(ctx, "rtmanager:game_lease:g1").Val(); v != "intruder" {
		t.Fatalf("release deleted another holder's lease: %q", v)
	}
}

func TestCoord_Publish_oncePerOutboxID(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	c := coord.New(rdb, "a", time.Second)
	entries := []rtm.OutboxEntry{
		{ID: 1, Stream: "out", Fields: []string{"n", "1"}},
		{ID: 2, Stream: "out", Fields: []string{"n", "2"}},
	}
	for i := 0; i < 2; i++ {
		added, err := c.Publish(ctx, "e1", entries, time.Hour)
		if err != nil || len(added) != 2 || added[0] != (i == 0) || added[1] != (i == 0) {
			t.Fatalf("Publish #%d: added %v, %v; want both added the first time only", i+1, added, err)
		}
	}
	msgs := rdb.XRange(ctx, "out", "-", "+").Val()
	if len(msgs) != 2 || msgs[0].Values["n"] != "1" || msgs[1].Values["n"] != "2" {
		t.Fatalf("stream holds %+v, want entries 1 and 2 once, in order", msgs)
	}
	// After a script flush (Redis restarted), publishing still works.
	rdb.ScriptFlush(ctx)
	if added, err := c.Publish(ctx, "e1", []rtm.OutboxEntry{{ID: 3, Stream: "out", Fields: []string{"n", "3"}}}, time.Hour); err != nil || len(added) != 1 || !added[0] {
		t.Fatalf("Publish after SCRIPT FLUSH: %v %v", added, err)
	}
}

func TestCoord_Offsets_andLag(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	c := coord.New(rdb, "a", time.Second)
	if off, err := c.Offset(ctx, "startjobs"); err != nil || off != "" {
		t.Fatalf("fresh offset: %q %v", off, err)
	}
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, rdb.XAdd(ctx, &redis.XAddArgs{Stream: "jobs", Values: []any{"i", i}}).Val())
	}
	if err := c.SetOffset(ctx, "startjobs", ids[0]); err != nil {
		t.Fatal(err)
	}
	if off, _ := c.Offset(ctx, "startjobs"); off != ids[0] {
		t.Fatalf("offset %q", off)
	}
	if lag, err := c.Lag(ctx, "jobs", ids[0]); err != nil || lag != 2 {
		t.Fatalf("lag %d %v, want 2", lag, err)
	}
	got, err := c.Read(ctx, "jobs", ids[0], 10, 10*time.Millisecond)
	if err != nil || len(got) != 2 || got[0].ID != ids[1] {
		t.Fatalf("Read: %+v %v", got, err)
	}
	if last, _ := c.LastID(ctx, "jobs"); last != ids[2] {
		t.Fatalf("LastID %q", last)
	}
	if last, _ := c.LastID(ctx, "nothing"); last != "0-0" {
		t.Fatalf("LastID of an absent stream %q", last)
	}
}

func TestCoord_LastGeneratedID_staysAfterTheNewestEntriesAreDeleted(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	c := coord.New(rdb, "test", 0)
	if last, err := c.LastGeneratedID(ctx, "absent"); err != nil || last != "0-0" {
		t.Fatalf("absent stream: %q %v, want 0-0", last, err)
	}
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, rdb.XAdd(ctx, &redis.XAddArgs{Stream: "jobs", Values: []any{"i", i}}).Val())
	}
	if err := rdb.XDel(ctx, "jobs", ids[2]).Err(); err != nil {
		t.Fatal(err)
	}
	if last, err := c.LastGeneratedID(ctx, "jobs"); err != nil || last != ids[2] {
		t.Fatalf("after XDEL of the newest entry: %q %v, want %s", last, err, ids[2])
	}
	if err := rdb.XTrimMaxLen(ctx, "jobs", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if last, err := c.LastGeneratedID(ctx, "jobs"); err != nil || last != ids[2] {
		t.Fatalf("after XTRIM to nothing: %q %v, want %s", last, err, ids[2])
	}
	if err := rdb.Set(ctx, "plain", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LastGeneratedID(ctx, "plain"); err == nil {
		t.Fatal("a key that is not a stream gave no error")
	}
}

func TestCoord_Acquire_takesOverTheLeaseOfADeadInstance(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	// A killed process left its lease behind and no longer beats.
	rdb.Set(ctx, "rtmanager:game_lease:g1", "dead", time.Minute)
	b := coord.New(rdb, "b", 2*time.Second)
	_, release := acquire(t, b, "g1") // the dead instance's lease is taken over
	release()
	// A live one keeps it.
	a := coord.New(rdb, "a", 2*time.Second)
	heartbeat(t, a)
	_, releaseA := acquire(t, a, "g1")
	defer releaseA()
	wantConflict(t, b, "g1", "b, of a live instance's lease")
}
