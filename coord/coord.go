// Package coord is RTM's Redis coordination: per-game leases, persisted stream offsets, and the
// idempotent relay of outbox entries to the output streams. Redis holds no business state here:
// losing it loses no runtime.
package coord

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Key prefixes of CONTRACT §5.
const (
	leasePrefix    = "rtmanager:game_lease:"
	instancePrefix = "rtmanager:instance:"
	offsetPrefix   = "rtmanager:stream_offsets:"
	sentPrefix     = "rtmanager:outbox_sent:"
)

// Coord wraps a Redis client with RTM's coordination operations.
type Coord struct {
	rdb   *redis.Client
	owner string
	ttl   time.Duration
}

// New returns a Coord whose leases carry owner (unique per process) and last ttl unless renewed.
func New(rdb *redis.Client, owner string, ttl time.Duration) *Coord {
	return &Coord{rdb: rdb, owner: owner, ttl: ttl}
}

// Ping checks that Redis answers.
func (c *Coord) Ping(ctx context.Context) error {
	if err := c.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("pinging redis: %w", err)
	}
	return nil
}

var (
	// acquireScript takes a free lease, or one whose holder's instance key has expired (a process
	// killed without releasing: its leases would otherwise block the game for a whole TTL).
	acquireScript = redis.NewScript(`local cur = redis.call('GET', KEYS[1])
if cur and redis.call('EXISTS', ARGV[3] .. cur) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if cur then return 2 end
return 1`)
	releaseScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
	renewScript   = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`)
	// publishScript adds an entry to a stream once per outbox id: the marker key and the XADD
	// happen atomically, so a crash between XADD and marking the row sent cannot publish twice.
	publishScript = redis.NewScript(`if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
end
return false`)
)

// LeaseStats counts lease outcomes for telemetry.
type LeaseStats interface {
	LeaseAcquired(ctx context.Context, ok bool)
}

// Acquire takes gameID's lease. When another holder has it, the error wraps rtm.ErrConflict.
// On success it returns a context that is cancelled if the lease is lost, and a release function
// that stops renewal and deletes the key if still ours.
//
// The lease is lost when a renewal finds another owner, and also when no renewal has got through
// for three quarters of the TTL (Redis unreachable from this process, or the process frozen):
// the key may expire at any moment after that and another process take the game, so this one
// must stop acting first. The TTL counts from when the SET or PEXPIRE was sent, so Redis's
// expiry is never earlier than this process's reckoning.
func (c *Coord) Acquire(ctx context.Context, gameID string) (context.Context, func(), error) {
	key := leasePrefix + gameID
	sent := time.Now()
	n, err := acquireScript.Run(ctx, c.rdb, []string{key}, c.owner, c.ttl.Milliseconds(), instancePrefix).Int()
	if err != nil {
		return nil, nil, fmt.Errorf("taking lease of %s: %w: %w", gameID, rtm.ErrUnavailable, err)
	}
	if n == 0 {
		return nil, nil, fmt.Errorf("lease of %s is held elsewhere: %w", gameID, rtm.ErrConflict)
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	safe := c.ttl - c.ttl/4 // how long a renewal sent at t keeps the lease ours: until t+safe
	go func() {
		defer close(done)
		t := time.NewTicker(c.ttl / 3)
		defer t.Stop()
		deadline := sent.Add(safe)
		expiry := time.NewTimer(time.Until(deadline))
		defer expiry.Stop()
		for {
			select {
			case <-lctx.Done():
				return
			case <-expiry.C:
				cancel() // no renewal got through in time: the key may be gone any moment now
				return
			case <-t.C:
				at := time.Now()
				rctx, rcancel := context.WithDeadline(lctx, deadline) // a hung call must not outlast the lease
				n, err := renewScript.Run(rctx, c.rdb, []string{key}, c.owner, c.ttl.Milliseconds()).Int()
				rcancel()
				switch {
				case err == nil && n == 0:
					cancel() // lost: someone else holds it now
					return
				case err == nil && at.Before(deadline):
					deadline = at.Add(safe)
					expiry.Reset(time.Until(deadline))
				}
			}
		}
	}()
	release := func() {
		cancel()
		<-done
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer rcancel()
		_ = releaseScript.Run(rctx, c.rdb, []string{key}, c.owner).Err()
	}
	return lctx, release, nil
}

// Heartbeat keeps this process's instance key alive until ctx ends, then deletes it. Leases held
// by an instance whose key expired (InstanceTTL after its last beat) may be taken over: a killed
// process does not block its games for a whole lease TTL. Call it before the first Acquire.
func (c *Coord) Heartbeat(ctx context.Context) error {
	key := instancePrefix + c.owner
	beat := func() error { return c.rdb.Set(ctx, key, "1", InstanceTTL).Err() }
	if err := beat(); err != nil {
		return fmt.Errorf("registering instance: %w", err)
	}
	go func() {
		t := time.NewTicker(InstanceTTL / 5)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				_ = c.rdb.Del(dctx, key).Err()
				cancel()
				return
			case <-t.C:
				_ = beat()
			}
		}
	}()
	return nil
}

// InstanceTTL is how long an instance key outlives its last heartbeat.
const InstanceTTL = 5 * time.Second

// Offset returns the persisted offset of a consumer ("" when none).
func (c *Coord) Offset(ctx context.Context, consumer string) (string, error) {
	v, err := c.rdb.Get(ctx, offsetPrefix+consumer).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading offset of %s: %w", consumer, err)
	}
	return v, nil
}

// SetOffset persists a consumer's offset: the last entry id fully handled.
func (c *Coord) SetOffset(ctx context.Context, consumer, id string) error {
	if err := c.rdb.Set(ctx, offsetPrefix+consumer, id, 0).Err(); err != nil {
		return fmt.Errorf("saving offset of %s: %w", consumer, err)
	}
	return nil
}

// Entry is one stream entry as the consumers see it.
type Entry struct {
	ID     string
	Fields map[string]string
}

// Read blocks up to block for entries of stream after id, at most count of them.
// No entries is not an error.
func (c *Coord) Read(ctx context.Context, stream, after string, count int64, block time.Duration) ([]Entry, error) {
	res, err := c.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{stream, after}, Count: count, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", stream, err)
	}
	var out []Entry
	for _, s := range res {
		for _, m := range s.Messages {
			f := make(map[string]string, len(m.Values))
			for k, v := range m.Values {
				if s, ok := v.(string); ok {
					f[k] = s
				}
			}
			out = append(out, Entry{ID: m.ID, Fields: f})
		}
	}
	return out, nil
}

// LastID returns the id of a stream's newest entry ("0-0" when the stream is empty or absent).
func (c *Coord) LastID(ctx context.Context, stream string) (string, error) {
	res, err := c.rdb.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil {
		return "", fmt.Errorf("reading last id of %s: %w", stream, err)
	}
	if len(res) == 0 {
		return "0-0", nil
	}
	return res[0].ID, nil
}

// Lag returns how many entries of stream come after id (the consumer's lag).
func (c *Coord) Lag(ctx context.Context, stream, after string) (int64, error) {
	if after == "" {
		after = "0-0"
	}
	n, err := c.rdb.XLen(ctx, stream).Result()
	if err != nil || n == 0 {
		return 0, err
	}
	// XRANGE with an exclusive start counts what lies after the offset, up to maxLag.
	res, err := c.rdb.XRangeN(ctx, stream, "("+after, "+", maxLag).Result()
	if err != nil {
		return 0, fmt.Errorf("measuring lag of %s: %w", stream, err)
	}
	return int64(len(res)), nil
}

// Publish adds entries to their streams in order, each exactly once per outbox id (sentTTL keeps
// the marker). It returns, for each leading entry it got through (published now, or found
// published before), whether it was added now; an error stops it at the first entry that failed.
func (c *Coord) Publish(ctx context.Context, entries []OutboxEntry, sentTTL time.Duration) ([]bool, error) {
	pipe := c.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(entries))
	for i, e := range entries {
		args := make([]any, 0, len(e.Fields)+1)
		args = append(args, int64(sentTTL.Seconds()))
		for _, f := range e.Fields {
			args = append(args, f)
		}
		cmds[i] = publishScript.EvalSha(ctx, pipe, []string{e.Stream, sentPrefix + strconv.FormatInt(e.ID, 10)}, args...)
	}
	_, _ = pipe.Exec(ctx)
	added := make([]bool, 0, len(entries))
	for i, cmd := range cmds {
		err := cmd.Err()
		switch {
		case err == nil:
			added = append(added, true)
		case errors.Is(err, redis.Nil): // the marker was there: published before
			added = append(added, false)
		case redis.HasErrorPrefix(err, "NOSCRIPT"):
			if err := publishScript.Load(ctx, c.rdb).Err(); err != nil {
				return added, fmt.Errorf("loading publish script: %w", err)
			}
			rest, err := c.Publish(ctx, entries[i:], sentTTL)
			return append(added, rest...), err
		default:
			return added, fmt.Errorf("publishing to %s: %w", entries[i].Stream, err)
		}
	}
	return added, nil
}

// OutboxEntry is an entry to publish: its outbox id, the Redis stream and the fields.
type OutboxEntry struct {
	ID     int64
	Stream string
	Fields []string
}

// maxLag caps what Lag counts, so that measuring a badly lagging consumer stays cheap.
const maxLag = 100000
