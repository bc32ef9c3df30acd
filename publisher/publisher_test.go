package publisher_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/publisher"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// counter is an Observer that counts what it is told per request id.
type counter struct {
	mu   sync.Mutex
	seen map[string]int
}

func (c *counter) Published(_ context.Context, _ string, fields []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] == "request_id" {
			c.seen[fields[i+1]]++
		}
	}
}

func (c *counter) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id]
}

// rig is a store whose commits are offered to a running publisher, and a second store on the
// same database whose commits are not (another RTM process).
type rig struct {
	st, other *store.Store
	rdb       *redis.Client
	pub       *publisher.Publisher
	obs       *counter
}

func newRig(t *testing.T, poll time.Duration) *rig {
	t.Helper()
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	r := &rig{obs: &counter{seen: map[string]int{}}}
	r.rdb = redis.NewClient(env.RedisOptions(env.NewRedisDB(t)))
	t.Cleanup(func() { r.rdb.Close() })
	var err error
	r.st, err = store.Open(ctx, dsn, store.Options{OnOutbox: func(rows []store.OutboxEntry) { r.pub.Offer(rows) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.st.Close)
	if r.other, err = store.Open(ctx, dsn, store.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.other.Close)
	r.pub = publisher.New(publisher.Publisher{Outbox: r.st, Redis: coord.New(r.rdb, "test", time.Minute),
		Names: map[string]string{store.StreamJobResults: "results"}, Observer: r.obs, Poll: poll,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = r.pub.Run(pctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// stopUnknown submits a stop job for a game without a record: answered at once with a result.
func stopUnknown(t *testing.T, s *store.Store, id string) {
	t.Helper()
	req := rtm.Request{Channel: rtm.ChannelStopJobs, RequestID: id, GameID: "nobody", Kind: rtm.OpStop,
		Source: rtm.SourceStopJobs, ReceivedAt: time.Now().UTC()}
	if _, err := s.Submit(context.Background(), req, func(rec *rtm.Record, busy bool) rtm.Admission {
		return rtm.Admit(rec, req, busy, rtm.Settings{EnginePort: 8080, StateRootJoin: func(string) string { return "/s" }})
	}); err != nil {
		t.Fatal(err)
	}
}

// results waits until the results stream holds n entries and returns their request ids.
func (r *rig) results(t *testing.T, n int, within time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		msgs, err := r.rdb.XRange(context.Background(), "results", "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) >= n || time.Now().After(deadline) {
			ids := make([]string, len(msgs))
			for i, m := range msgs {
				ids[i], _ = m.Values["request_id"].(string)
			}
			return ids
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *rig) backlog(t *testing.T) int64 {
	t.Helper()
	n, err := r.st.OutboxBacklog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPublisher_Offer_relaysCommittedRowsAtOnceAndMarksThemSent(t *testing.T) {
	r := newRig(t, time.Hour) // no poll: only offers can publish
	for _, id := range []string{"a", "b", "c"} {
		stopUnknown(t, r.st, id)
	}
	ids := r.results(t, 3, 5*time.Second)
	if len(ids) != 3 || ids[0] != "a" || ids[1] != "b" || ids[2] != "c" {
		t.Fatalf("results stream holds %v, want a, b, c once each in order", ids)
	}
	for deadline := time.Now().Add(5 * time.Second); r.backlog(t) != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d offered rows still unsent in the outbox", r.backlog(t))
		}
	}
	if r.obs.count("a") != 1 {
		t.Fatalf("observer told of a %d times, want 1", r.obs.count("a"))
	}
}

func TestPublisher_poll_relaysRowsNobodyOffered(t *testing.T) {
	r := newRig(t, 20*time.Millisecond)
	stopUnknown(t, r.other, "from-another-process")
	if ids := r.results(t, 1, 5*time.Second); len(ids) != 1 || ids[0] != "from-another-process" {
		t.Fatalf("results stream holds %v, want the other process's result", ids)
	}
}

func TestPublisher_rowRelayedTwiceIsAddedAndCountedOnce(t *testing.T) {
	r := newRig(t, time.Hour)
	stopUnknown(t, r.other, "x")
	var rows []store.OutboxEntry
	if _, err := r.other.RelayOutbox(context.Background(), 10, func(_ context.Context, es []store.OutboxEntry) (int, error) {
		rows = es
		return 0, nil // read, not sent
	}); err != nil || len(rows) != 1 {
		t.Fatalf("outbox rows %v, %v", rows, err)
	}
	// Offered twice (a relay that published but could not mark the row sent, then the poll).
	r.pub.Offer(rows)
	r.results(t, 1, 5*time.Second)
	r.pub.Offer(rows)
	time.Sleep(200 * time.Millisecond)
	if ids := r.results(t, 2, 0); len(ids) != 1 {
		t.Fatalf("results stream holds %v, want x once", ids)
	}
	if n := r.obs.count("x"); n != 1 {
		t.Fatalf("observer told of x %d times, want 1", n)
	}
}
