// Package coord is RTM's Redis coordination: per-game leases, persisted stream offsets, and the
// idempotent relay of outbox entries to the output streams. Redis holds no business state here:
// losing it loses no runtime.
//
// A lease is trusted by its holder only until 3/4 of the lease TTL after its last renewal and
// 3/4 of InstanceTTL after the process's last heartbeat, whichever comes first, counted from when
// those calls were sent, by the monotonic and by the wall clock (see Acquire); another process can
// take it only once one of those keys has expired.
package coord

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"

	"github.com/redis/go-redis/v9"
)

// Key prefixes of CONTRACT §5.
const (
	leasePrefix    = "rtmanager:game_lease:"
	instancePrefix = "rtmanager:instance:"
	offsetPrefix   = "rtmanager:stream_offsets:"
	sentPrefix     = "rtmanager:outbox_sent:"
)

// Coord wraps a Redis client with RTM's coordination operations. Use one Coord per process.
type Coord struct {
	rdb         *redis.Client
	owner       string
	ttl         time.Duration
	instanceTTL time.Duration
	now         func() time.Time
	observer    LeaseObserver // may be nil

	mu sync.Mutex
	// beat is when the last SET of this process's instance key that got through was sent: the
	// key exists until at least beat+instanceTTL.
	beat time.Time
	// deregistered is set when Heartbeat ends: the instance key is deleted, so no lease of this
	// process is safe any more.
	deregistered bool
	// held are the games whose lease this process holds (acquired and not yet released).
	held map[string]bool
	// maxLen is the approximate length Publish trims each output stream to (0: no trimming);
	// see WithStreamMaxLen.
	maxLen int64
}

// Option tunes a Coord.
type Option func(*Coord)

// WithInstanceTTL sets how long the instance key outlives its last heartbeat (default
// InstanceTTL). Tests shorten it; production keeps the default.
func WithInstanceTTL(d time.Duration) Option { return func(c *Coord) { c.instanceTTL = d } }

// LeaseObserver is told the result of every lease attempt: "acquired", "contended" (another
// process holds it) or "error".
type LeaseObserver interface {
	LeaseAttempt(ctx context.Context, result string)
}

// WithLeaseObserver has every Acquire report its result to o.
func WithLeaseObserver(o LeaseObserver) Option { return func(c *Coord) { c.observer = o } }

// WithClock replaces time.Now as the lease's clock, so that tests can jump it.
func WithClock(now func() time.Time) Option { return func(c *Coord) { c.now = now } }

// New returns a Coord whose leases carry owner (unique per process) and last ttl unless renewed.
func New(rdb *redis.Client, owner string, ttl time.Duration, opts ...Option) *Coord {
	c := &Coord{rdb: rdb, owner: owner, ttl: ttl, instanceTTL: InstanceTTL, now: time.Now, held: map[string]bool{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Ping checks that Redis answers.
func (c *Coord) Ping(ctx context.Context) error {
	if err := c.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("pinging redis: %w", err)
	}
	return nil
}

var (
	// publishScript adds an entry to a stream once per outbox id: the marker key and the XADD
	// happen atomically, so a crash between XADD and marking the row sent cannot publish twice.
	// ARGV[2], when not 0, trims the stream to about that many entries (MAXLEN ~) in the XADD.
	publishScript = redis.NewScript(`if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  if ARGV[2] ~= '0' then
    return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
  end
  return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
end
return false`)
)

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

// Read blocks up to block for entries of stream after id, at most count of them.
// No entries is not an error.
func (c *Coord) Read(ctx context.Context, stream, after string, count int64, block time.Duration) ([]rtm.StreamEntry, error) {
	res, err := c.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{stream, after}, Count: count, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", stream, err)
	}
	var out []rtm.StreamEntry
	for _, s := range res {
		for _, m := range s.Messages {
			f := make(map[string]string, len(m.Values))
			for k, v := range m.Values {
				if s, ok := v.(string); ok {
					f[k] = s
				}
			}
			out = append(out, rtm.StreamEntry{ID: m.ID, Fields: f})
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

// Publish adds entries to their streams in order, each exactly once per outbox id of the
// database whose epoch is given (sentTTL keeps the marker
// rtmanager:outbox_sent:<epoch>:<outbox id>). The epoch names one life of the database (see
// store.Store.OutboxEpoch): after a restore from backup the ids start again from an older value,
// and rows with ids published before must not be taken for those. It returns, for each leading
// entry it got through (published now, or found published before), whether it was added now; an
// error stops it at the first entry that failed.
func (c *Coord) Publish(ctx context.Context, epoch string, entries []rtm.OutboxEntry, sentTTL time.Duration) ([]bool, error) {
	pipe := c.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(entries))
	for i, e := range entries {
		args := make([]any, 0, len(e.Fields)+2)
		args = append(args, int64(sentTTL.Seconds()), c.maxLen)
		for _, f := range e.Fields {
			args = append(args, f)
		}
		cmds[i] = publishScript.EvalSha(ctx, pipe, []string{e.Stream, sentPrefix + epoch + ":" + strconv.FormatInt(e.ID, 10)}, args...)
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
			rest, err := c.Publish(ctx, epoch, entries[i:], sentTTL)
			return append(added, rest...), err
		default:
			return added, fmt.Errorf("publishing to %s: %w", entries[i].Stream, err)
		}
	}
	return added, nil
}

// maxLag caps what Lag counts, so that measuring a badly lagging consumer stays cheap.
const maxLag = 100000
