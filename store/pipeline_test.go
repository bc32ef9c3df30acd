package store_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/store"
)

// openWithOutbox is open with an OnOutbox that collects what the store hands over.
func openWithOutbox(t *testing.T) (*store.Store, func() []rtm.OutboxEntry) {
	t.Helper()
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	var mu sync.Mutex
	var got []rtm.OutboxEntry
	s, err := store.Open(ctx, dsn, store.Options{OnOutbox: func(rows []rtm.OutboxEntry) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, rows...)
	}})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s, func() []rtm.OutboxEntry {
		mu.Lock()
		defer mu.Unlock()
		return append([]rtm.OutboxEntry(nil), got...)
	}
}

func TestStore_OnOutbox_handsOverCommittedRowsAsStored(t *testing.T) {
	s, offered := openWithOutbox(t)
	ctx := context.Background()
	submit(t, s, stopJob("s1", "nobody")) // answered at once: runtime_not_found
	if _, err := s.AnswerInvalid(ctx, rtm.Request{Channel: rtm.ChannelStartJobs, RequestID: "bad", GameID: "../x",
		Kind: rtm.OpStart, Source: rtm.SourceStartJobs}, rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeInvalidJob}); err != nil {
		t.Fatal(err)
	}
	submit(t, s, stopJob("s1", "nobody")) // a duplicate adds nothing
	got := offered()
	stored := outbox(t, s)
	if len(got) != 2 || len(stored) != 2 {
		t.Fatalf("offered %d rows, outbox holds %d; want 2 and 2", len(got), len(stored))
	}
	for i := range got {
		if got[i].ID != stored[i].ID || got[i].Stream != stored[i].Stream || fields(got[i])["request_id"] != fields(stored[i])["request_id"] {
			t.Fatalf("offered %+v, stored %+v", got[i], stored[i])
		}
	}
}

func TestStore_MarkSent_leavesOnlyUnsentRowsForTheRelay(t *testing.T) {
	s, offered := openWithOutbox(t)
	ctx := context.Background()
	submit(t, s, stopJob("s1", "a"))
	submit(t, s, stopJob("s2", "b"))
	got := offered()
	if len(got) != 2 {
		t.Fatalf("offered %d rows, want 2", len(got))
	}
	if err := s.MarkSent(ctx, []int64{got[0].ID}); err != nil {
		t.Fatal(err)
	}
	rest := outbox(t, s)
	if len(rest) != 1 || rest[0].ID != got[1].ID {
		t.Fatalf("relay found %+v, want only row %d", rest, got[1].ID)
	}
}

func TestStore_Update_decidesOnTheLockedRecord(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	// Concurrent updates each add one to the exit code they read: none is lost.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Update(ctx, "g", func(rec *rtm.Record) *rtm.Change {
				n := 1
				if rec.ExitCode != nil {
					n = *rec.ExitCode + 1
				}
				return &rtm.Change{GameID: "g", Gen: rec.Generation, Apply: func(x *rtm.Record, _ bool) { x.ExitCode = rtm.IntPtr(n) }}
			})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	rec, err := s.Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if rec.ExitCode == nil || *rec.ExitCode != 8 {
		t.Fatalf("exit code %v after 8 read-and-add updates, want 8", rec.ExitCode)
	}
	// A decision to change nothing writes nothing.
	got, err := s.Update(ctx, "g", func(*rtm.Record) *rtm.Change { return nil })
	if err != nil || got != nil {
		t.Fatalf("Update with no change = %v, %v; want nil, nil", got, err)
	}
	if again, _ := s.Get(ctx, "g"); !again.UpdatedAt.Equal(rec.UpdatedAt) {
		t.Fatalf("updated_at moved from %s to %s without a change", rec.UpdatedAt, again.UpdatedAt)
	}
	// A game without a record is decided on as nil.
	var sawNil bool
	if _, err := s.Update(ctx, "none", func(rec *rtm.Record) *rtm.Change { sawNil = rec == nil; return nil }); err != nil || !sawNil {
		t.Fatalf("Update of a game without a record: saw nil %v, %v", sawNil, err)
	}
}

func TestStore_Commit_aFailingStatementWritesNothing(t *testing.T) {
	s, offered := openWithOutbox(t)
	ctx := context.Background()
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	before, err := s.Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	n := len(offered())
	// The operation row breaks a CHECK constraint: the record change queued before it and the
	// event queued after it must not stay.
	_, err = s.Commit(ctx, rtm.Change{GameID: "g", Gen: before.Generation,
		Apply:  func(x *rtm.Record, _ bool) { x.Status = rtm.StatusRunning },
		Ops:    []rtm.Operation{{GameID: "g", Kind: "no_such_kind", Source: rtm.SourceReconciler, Outcome: rtm.OutcomeSucceeded}},
		Events: []rtm.HealthEvent{{GameID: "g", Type: rtm.EventContainerStarted, ContainerID: "c"}}})
	if err == nil {
		t.Fatal("Commit with an invalid operation row succeeded")
	}
	after, err := s.Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if after.Status != before.Status || !after.UpdatedAt.Equal(before.UpdatedAt) {
		t.Fatalf("record moved to %s (updated %s) though its commit failed", after.Status, after.UpdatedAt)
	}
	if len(offered()) != n {
		t.Fatal("a failed commit handed outbox rows to the publisher")
	}
	if _, err := s.Health(ctx, "g"); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("health snapshot written by a failed commit: %v", err)
	}
	// The store stays usable: the connection was rolled back, not left in a failed transaction.
	for i := 0; i < 30; i++ {
		if _, err := s.Commit(ctx, rtm.Change{GameID: "g", Gen: before.Generation}); err != nil {
			t.Fatalf("Commit after a failed one: %v", err)
		}
	}
}

func TestStore_FenceAndMarkStopping(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	if rec, pending, err := s.Fence(ctx, "g"); err != nil || rec != nil || len(pending) != 0 {
		t.Fatalf("Fence of an unknown game = %v, %v, %v", rec, pending, err)
	}
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	submit(t, s, stopJob("s1", "g"))
	rec, pending, err := s.Fence(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil || rec.DesiredState != rtm.DesiredStopped || len(pending) != 2 ||
		pending[0].RequestID != "r1" || pending[1].RequestID != "s1" {
		t.Fatalf("Fence = %+v with pending %+v; want desired stopped and r1, s1 pending", rec, pending)
	}
	time.Sleep(time.Millisecond)
	if err := s.MarkStopping(ctx, "g", rec.FenceEpoch); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(ctx, "g"); got.Status != rtm.StatusStopping || !got.UpdatedAt.After(rec.UpdatedAt) {
		t.Fatalf("after MarkStopping: status %s, updated %s (was %s)", got.Status, got.UpdatedAt, rec.UpdatedAt)
	}
	if err := s.MarkStopping(ctx, "none", 1); !errors.Is(err, rtm.ErrFenced) {
		t.Fatalf("MarkStopping of a game without a record: %v, want rtm.ErrFenced", err)
	}
}
