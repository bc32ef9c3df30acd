package coord_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/coord"
)

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
