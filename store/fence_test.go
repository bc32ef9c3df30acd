package store_test

import (
	"context"
	"errors"
	"testing"

	rtm "github.com/galaxy-platform/rtmanager"
)

// running makes game g a settled, running game of image.
func running(t *testing.T, s interface {
	Fence(context.Context, string) (*rtm.Record, []rtm.Request, error)
	Commit(context.Context, rtm.Change) (*rtm.Record, error)
}, g, image string) *rtm.Record {
	t.Helper()
	ctx := context.Background()
	rec, _, err := s.Fence(ctx, g)
	if err != nil || rec == nil {
		t.Fatalf("Fence: %v %v", rec, err)
	}
	got, err := s.Commit(ctx, rtm.Change{GameID: g, Gen: rec.Generation, Epoch: rec.FenceEpoch, Answer: &rtm.Succeeded,
		ContainerID: "c1", Apply: func(x *rtm.Record, _ bool) { x.Started("c1", image, rec.Generation) }})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return got
}

func answer(t *testing.T, s interface {
	RequestAnswer(context.Context, rtm.Channel, string) (*rtm.Answer, error)
}, ch rtm.Channel, id string) *rtm.Answer {
	t.Helper()
	a, err := s.RequestAnswer(context.Background(), ch, id)
	if err != nil {
		t.Fatalf("RequestAnswer %s: %v", id, err)
	}
	return a
}

// A holder fenced out by a newer one (its lease lost while it was frozen or cut off) can no
// longer change the record: its commit and its stopping mark are refused and write nothing.
func TestStore_Fence_aStaleHolderWritesNothing(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.2"))
	old, _, err := s.Fence(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	newer, pending, err := s.Fence(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if newer.FenceEpoch != old.FenceEpoch+1 || len(pending) != 1 {
		t.Fatalf("epochs %d then %d, pending %d: want one bump per fence and the start pending", old.FenceEpoch, newer.FenceEpoch, len(pending))
	}
	_, err = s.Commit(ctx, rtm.Change{GameID: "g", Gen: old.Generation, Epoch: old.FenceEpoch, Answer: &rtm.Succeeded,
		ContainerID: "stale", Apply: func(x *rtm.Record, _ bool) { x.Started("stale", "galaxy/game:1.4.2", old.Generation) }})
	if !errors.Is(err, rtm.ErrFenced) {
		t.Fatalf("stale commit: %v, want ErrFenced", err)
	}
	if err := s.MarkStopping(ctx, "g", old.FenceEpoch); !errors.Is(err, rtm.ErrFenced) {
		t.Fatalf("stale MarkStopping: %v, want ErrFenced", err)
	}
	rec, err := s.Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Status != rtm.StatusStarting || rec.CurrentContainerID != "" || !rec.UpdatedAt.Equal(newer.UpdatedAt) {
		t.Fatalf("the stale holder changed the record: %+v", rec)
	}
	if a := answer(t, s, rtm.ChannelStartJobs, "r1"); a != nil {
		t.Fatalf("the stale holder answered the request: %+v", a)
	}
	if got := outbox(t, s); len(got) != 0 {
		t.Fatalf("the stale holder published %d entries", len(got))
	}
	// The current holder's writes go through.
	if err := s.MarkStopping(ctx, "g", newer.FenceEpoch); err != nil {
		t.Fatalf("current MarkStopping: %v", err)
	}
	if _, err := s.Commit(ctx, rtm.Change{GameID: "g", Gen: newer.Generation, Epoch: newer.FenceEpoch, Answer: &rtm.Succeeded,
		ContainerID: "c1", Apply: func(x *rtm.Record, _ bool) { x.Started("c1", "galaxy/game:1.4.2", newer.Generation) }}); err != nil {
		t.Fatalf("current commit: %v", err)
	}
	if a := answer(t, s, rtm.ChannelStartJobs, "r1"); a == nil || a.Outcome != rtm.OutcomeSucceeded {
		t.Fatalf("answer %+v, want succeeded", a)
	}
}

// Two patches to different images admitted one after the other: the earlier is answered
// conflict (superseded), not with the outcome of the later one's image.
func TestStore_Commit_patchesToDifferentImagesGetTheirOwnAnswers(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	running(t, s, "g", "galaxy/game:1.4.1")
	patch := func(id, image string) {
		submit(t, s, rtm.Request{Channel: rtm.ChannelREST, RequestID: id, GameID: "g", Kind: rtm.OpPatch,
			Source: rtm.SourceAdminREST, ImageRef: image, OldImageRef: "galaxy/game:1.4.1"})
	}
	patch("p2", "galaxy/game:1.4.2")
	patch("p3", "galaxy/game:1.4.3")
	rec, _, err := s.Fence(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, rtm.Change{GameID: "g", Gen: rec.Generation, Epoch: rec.FenceEpoch, Answer: &rtm.Succeeded,
		ContainerID: "c3", Apply: func(x *rtm.Record, _ bool) { x.Started("c3", "galaxy/game:1.4.3", rec.Generation) }}); err != nil {
		t.Fatal(err)
	}
	if a := answer(t, s, rtm.ChannelREST, "p2"); a == nil || a.Code != rtm.CodeConflict {
		t.Errorf("patch to 1.4.2 answered %+v, want conflict (superseded)", a)
	}
	if a := answer(t, s, rtm.ChannelREST, "p3"); a == nil || a.Outcome != rtm.OutcomeSucceeded {
		t.Errorf("patch to 1.4.3 answered %+v, want succeeded", a)
	}
}

// A start job that joined a pending patch of its image is never answered patch_rolled_back (a
// code a job may not get): for it, the new engine failed to start.
func TestStore_Commit_aStartJoinedToARolledBackPatchIsAStartFailure(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	running(t, s, "g", "galaxy/game:1.4.1")
	submit(t, s, rtm.Request{Channel: rtm.ChannelREST, RequestID: "p2", GameID: "g", Kind: rtm.OpPatch,
		Source: rtm.SourceAdminREST, ImageRef: "galaxy/game:1.4.2", OldImageRef: "galaxy/game:1.4.1"})
	submit(t, s, startJob("r2", "g", "galaxy/game:1.4.2"))
	rec, _, err := s.Fence(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	a := rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodePatchRolledBack, Message: "1.4.2 failed; 1.4.1 runs again"}
	if _, err := s.Commit(ctx, rtm.Change{GameID: "g", Gen: rec.Generation, Epoch: rec.FenceEpoch, Answer: &a,
		ContainerID: "c4", Apply: func(x *rtm.Record, current bool) {
			x.RolledBack("c4", "galaxy/game:1.4.1", a, rec.Generation, current)
		}}); err != nil {
		t.Fatal(err)
	}
	if got := answer(t, s, rtm.ChannelREST, "p2"); got == nil || got.Code != rtm.CodePatchRolledBack {
		t.Errorf("patch answered %+v, want patch_rolled_back", got)
	}
	if got := answer(t, s, rtm.ChannelStartJobs, "r2"); got == nil || got.Code != rtm.CodeContainerStartFailed {
		t.Errorf("joined start answered %+v, want container_start_failed", got)
	}
}

// A start job queued behind a stop, answered together when the stop's work ran out of its retry
// budget (internal_error: the daemon kept refusing), is a start failure: internal_error is a
// stop's code, never a start job's. (Found by make model at 10,000 schedules.)
func TestStore_Commit_aStartAnsweredWithAStopsFailureIsAStartFailure(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	running(t, s, "g", "galaxy/game:1.4.1")
	submit(t, s, rtm.Request{Channel: rtm.ChannelStopJobs, RequestID: "s2", GameID: "g", Kind: rtm.OpStop,
		Source: rtm.SourceStopJobs, Reason: "unspecified"})
	submit(t, s, startJob("r3", "g", "galaxy/game:1.4.9"))
	rec, _, err := s.Fence(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	a := rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeInternalError,
		Message: "gave up after 3 attempts in 210ms: inspecting container galaxy-game-g: injected daemon refusal"}
	if _, err := s.Commit(ctx, rtm.Change{GameID: "g", Gen: rec.Generation, Epoch: rec.FenceEpoch, Answer: &a,
		Apply: func(x *rtm.Record, current bool) { x.Status, x.LastErrorCode = rtm.StatusFailed, a.Code }}); err != nil {
		t.Fatal(err)
	}
	if got := answer(t, s, rtm.ChannelStopJobs, "s2"); got == nil || got.Code != rtm.CodeInternalError && got.Code != rtm.CodeConflict {
		t.Errorf("stop answered %+v, want internal_error (or conflict, superseded)", got)
	}
	got := answer(t, s, rtm.ChannelStartJobs, "r3")
	if got == nil || got.Code != rtm.CodeContainerStartFailed || got.Message != a.Message {
		t.Errorf("start answered %+v, want container_start_failed with the daemon's words", got)
	}
}
