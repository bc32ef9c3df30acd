package coord

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// LastGeneratedID returns a stream's last-generated-id (XINFO STREAM): the greatest id ever added
// to it, which stays put when the newest entries are deleted (XDEL) or trimmed (XTRIM), unlike
// the id of its newest entry (LastID). An offset past it can only come from another stream of
// the same name (Redis emptied, the stream recreated). An absent stream gives "0-0"; any other
// failure is an error.
func (c *Coord) LastGeneratedID(ctx context.Context, stream string) (string, error) {
	info, err := c.rdb.XInfoStream(ctx, stream).Result()
	if redis.HasErrorPrefix(err, "no such key") {
		return "0-0", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading last generated id of %s: %w", stream, err)
	}
	return info.LastGeneratedID, nil
}
