package coord

import (
	"context"
	"fmt"
	"strconv"
)

// WithStreamMaxLen makes Publish trim every output stream it adds to to about n entries
// (XADD MAXLEN ~ n: Redis trims whole nodes, so a stream keeps n entries or slightly more).
// n <= 0 keeps every entry. A consumer that falls more than n entries behind loses the oldest
// ones: it must read faster than RTM publishes or compare its offset with the stream's first
// entry and reread the lost state from RTM's REST API.
func WithStreamMaxLen(n int64) Option {
	return func(c *Coord) { c.maxLen = max(n, 0) }
}

// OutboxSent reports whether the publication marker of outbox row id of the database epoch
// (rtmanager:outbox_sent:<epoch>:<id>) is still in Redis: false when it expired, or Redis lost it
// (restarted without persistence, flushed) with the stream entry it guarded.
func (c *Coord) OutboxSent(ctx context.Context, epoch string, id int64) (bool, error) {
	n, err := c.rdb.Exists(ctx, sentPrefix+epoch+":"+strconv.FormatInt(id, 10)).Result()
	if err != nil {
		return false, fmt.Errorf("reading the publication marker of outbox row %d: %w", id, err)
	}
	return n == 1, nil
}
