package publisher_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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

func (c *counter) Published(_ context.Context, e rtm.OutboxEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id := e.Field("request_id"); id != "" {
		c.seen[id]++
	}
}

func (c *counter) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id]
}

// rig is a store whose commits are offered to a publisher, and a second store on the same
// database whose commits are not (another RTM process).
type rig struct {
	st, other *store.Store
	rdb       *redis.Client
	pub       *publisher.Publisher
	obs       *counter
	outbox    *countingOutbox
	stop      func() // stops the publisher and waits for its last flush
}

// countingOutbox counts the publisher's MarkSent calls (one per offered batch relayed) and its
// polls of the outbox that have returned.
type countingOutbox struct {
	publisher.Outbox
	marks, polls atomic.Int64
}

func (o *countingOutbox) RelayOutbox(ctx context.Context, limit int, publish func(context.Context, []rtm.OutboxEntry) (int, error)) (int, error) {
	defer o.polls.Add(1)
	return o.Outbox.RelayOutbox(ctx, limit, publish)
}

func (o *countingOutbox) MarkSent(ctx context.Context, ids []int64) error {
	defer o.marks.Add(1)
	return o.Outbox.MarkSent(ctx, ids)
}

// faultyStreams fails the Publish calls fail picks (numbered from 1).
type faultyStreams struct {
	publisher.Streams
	mu    sync.Mutex
	calls int
	fail  func(call int, entries []rtm.OutboxEntry) bool
}

func (f *faultyStreams) Publish(ctx context.Context, epoch string, entries []rtm.OutboxEntry, ttl time.Duration) ([]bool, error) {
	f.mu.Lock()
	f.calls++
	bad := f.fail(f.calls, entries)
	f.mu.Unlock()
	if bad {
		return nil, errors.New("injected publish fault")
	}
	return f.Streams.Publish(ctx, epoch, entries, ttl)
}

// rigOptions tune a rig: the poll period, a fault on publishing, and whether the test starts the
// publisher itself (rig.start).
type rigOptions struct {
	poll   time.Duration
	fail   func(call int, entries []rtm.OutboxEntry) bool
	manual bool
	rdb    *redis.Client // the Redis to relay to (default: a database of its own)
}

func newRig(t *testing.T, poll time.Duration) *rig {
	t.Helper()
	return newRigWith(t, rigOptions{poll: poll})
}

func newRigWith(t *testing.T, o rigOptions) *rig {
	t.Helper()
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	r := &rig{obs: &counter{seen: map[string]int{}}}
	if r.rdb = o.rdb; r.rdb == nil {
		r.rdb = env.MustRedis(t)
	}
	var err error
	r.st, err = store.Open(ctx, dsn, store.Options{OnOutbox: func(rows []rtm.OutboxEntry) { r.pub.Offer(rows) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.st.Close)
	if r.other, err = store.Open(ctx, dsn, store.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.other.Close)
	var streams publisher.Streams = coord.New(r.rdb, "test", time.Minute)
	if o.fail != nil {
		streams = &faultyStreams{Streams: streams, fail: o.fail}
	}
	r.outbox = &countingOutbox{Outbox: r.st}
	r.pub = publisher.New(publisher.Publisher{Outbox: r.outbox, Redis: streams,
		Names: map[string]string{rtm.StreamJobResults: "results"}, Observer: r.obs, Poll: o.poll,
		Log: slog.New(slog.DiscardHandler)})
	if !o.manual {
		r.start(t)
	}
	return r
}

// start runs the publisher until the test ends or r.stop is called.
func (r *rig) start(t *testing.T) {
	t.Helper()
	pctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.pub.Run(pctx); close(done) }()
	var once sync.Once
	r.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(r.stop)
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
	// The row is committed after the publisher's first poll, and the next is an hour away: only
	// the test's offers relay it.
	waitFor(t, "the publisher's first poll", func() bool { return r.outbox.polls.Load() >= 1 })
	stopUnknown(t, r.other, "x")
	var rows []rtm.OutboxEntry
	if _, err := r.other.RelayOutbox(context.Background(), 10, func(_ context.Context, es []rtm.OutboxEntry) (int, error) {
		rows = es
		return 0, nil // read, not sent
	}); err != nil || len(rows) != 1 {
		t.Fatalf("outbox rows %v, %v", rows, err)
	}
	// Offered twice (a relay that published but could not mark the row sent, then the poll).
	// Each offer relayed ends with one MarkSent.
	r.pub.Offer(rows)
	waitFor(t, "the first offer relayed", func() bool { return r.outbox.marks.Load() >= 1 })
	if ids := r.results(t, 1, 0); len(ids) != 1 {
		t.Fatalf("results stream holds %v after the first offer, want x", ids)
	}
	r.pub.Offer(rows)
	waitFor(t, "the second offer relayed", func() bool { return r.outbox.marks.Load() >= 2 })
	if ids := r.results(t, 2, 0); len(ids) != 1 {
		t.Fatalf("results stream holds %v, want x once", ids)
	}
	if n := r.obs.count("x"); n != 1 {
		t.Fatalf("observer told of x %d times, want 1", n)
	}
}

// waitFor waits up to 5 s for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// requestIDs returns n request ids in commit order: r001, r002, ….
func requestIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("r%03d", i+1)
	}
	return ids
}

// carries reports whether entries hold the result of request id.
func carries(entries []rtm.OutboxEntry, id string) bool {
	for _, e := range entries {
		if slices.Contains(e.Fields, id) {
			return true
		}
	}
	return false
}

// A relay of offered rows fails: the rows committed after them must not overtake them, though
// they are offered at once and the failed ones wait for the poll (here: the last flush).
func TestPublisher_Offer_failedRelayIsNotOvertakenByLaterRows(t *testing.T) {
	var failed atomic.Bool
	r := newRigWith(t, rigOptions{poll: time.Hour, fail: func(_ int, es []rtm.OutboxEntry) bool {
		return carries(es, "r006") && failed.CompareAndSwap(false, true)
	}})
	// Offered rows wait for the first poll (it reads the database's epoch); committed before it
	// ends, they would all go with the last flush, whose relay is the one that fails.
	waitFor(t, "the first poll", func() bool { return r.outbox.polls.Load() >= 1 })
	want := requestIDs(20)
	for _, id := range want {
		stopUnknown(t, r.st, id) // one game: all answered for game "nobody"
	}
	// Stopped before, the publisher could cancel an offered relay in flight and meet the fault
	// in its last flush instead.
	waitFor(t, "the relay of r006 to fail", failed.Load)
	r.stop() // the last flush polls the outbox
	if got := r.results(t, len(want), 0); !slices.Equal(got, want) {
		t.Fatalf("results stream holds %v, want %v (outbox id order)", got, want)
	}
}

// Many commits for one game while every third publish fails and the poll runs often: the
// stream keeps outbox id order, each entry once.
func TestPublisher_entriesOfAGameKeepIDOrderUnderPublishFaults(t *testing.T) {
	r := newRigWith(t, rigOptions{poll: 5 * time.Millisecond, fail: func(call int, _ []rtm.OutboxEntry) bool { return call%3 == 0 }})
	want := requestIDs(40)
	for _, id := range want {
		stopUnknown(t, r.st, id)
	}
	r.results(t, len(want), 10*time.Second)
	r.stop()
	if got := r.results(t, len(want)+1, 0); !slices.Equal(got, want) {
		t.Fatalf("results stream holds %v, want %v (outbox id order, each once)", got, want)
	}
}

// Two databases (a restored one starts its ids again) relayed to one Redis: the same outbox ids
// are published by both, since their epochs differ.
func TestPublisher_sameOutboxIDsOfAnotherDatabaseArePublished(t *testing.T) {
	first := newRig(t, 5*time.Millisecond)
	second := newRigWith(t, rigOptions{poll: 5 * time.Millisecond, rdb: first.rdb})
	stopUnknown(t, first.st, "before-restore")
	if ids := first.results(t, 1, 5*time.Second); len(ids) != 1 {
		t.Fatalf("results %v", ids)
	}
	stopUnknown(t, second.st, "after-restore") // the same outbox id, 1, in the other database
	if ids := first.results(t, 2, 5*time.Second); !slices.Equal(ids, []string{"before-restore", "after-restore"}) {
		t.Fatalf("results stream holds %v, want both entries", ids)
	}
}

// The epoch is readable by the service role (not a superuser), the same for every session of one
// database, and differs between databases.
func TestStore_OutboxEpoch_perDatabase(t *testing.T) {
	ctx := context.Background()
	epoch := func(dsn string) string {
		t.Helper()
		st, err := store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		e, err := st.OutboxEpoch(ctx)
		if err != nil || e == "" {
			t.Fatalf("OutboxEpoch as %s: %q %v", testenv.ServiceRole, e, err)
		}
		return e
	}
	a, b := env.NewDatabase(t), env.NewDatabase(t)
	ea, ea2, eb := epoch(a), epoch(a), epoch(b)
	if ea != ea2 || ea == eb {
		t.Fatalf("epochs %q, %q (same database) and %q (another): want equal, then different", ea, ea2, eb)
	}
	if strings.HasPrefix(ea, "db-") {
		t.Fatalf("epoch %q: the service role could not read pg_control_system()", ea)
	}
}
