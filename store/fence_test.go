package store_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/store"
)

// settle does a new lease holder's work on game g: it fences the game, then commits the change
// apply makes to the record (given the fenced generation and whether the answered request is the
// current one), answering the pending requests with a and leaving containerID.
func settle(t *testing.T, s *store.Store, g string, a *rtm.Answer, containerID string, apply func(x *rtm.Record, gen int64, current bool)) *rtm.Record {
	t.Helper()
	ctx := context.Background()
	rec, _, err := s.Fence(ctx, g)
	if err != nil || rec == nil {
		t.Fatalf("Fence: %v %v", rec, err)
	}
	got, err := s.Commit(ctx, rtm.Change{GameID: g, Gen: rec.Generation, Epoch: rec.FenceEpoch, Answer: a,
		ContainerID: containerID, Apply: func(x *rtm.Record, current bool) { apply(x, rec.Generation, current) }})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return got
}

// openRunning opens a store in which game g, started by job r1, runs galaxy/game:1.4.1.
func openRunning(t *testing.T) *store.Store {
	t.Helper()
	s, _ := open(t)
	submit(t, s, startJob("r1", "g", "galaxy/game:1.4.1"))
	settle(t, s, "g", &rtm.Succeeded, "c1", func(x *rtm.Record, gen int64, _ bool) { x.Started("c1", "galaxy/game:1.4.1", gen) })
	return s
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
	s := openRunning(t)
	patch := func(id, image string) {
		submit(t, s, rtm.Request{Channel: rtm.ChannelREST, RequestID: id, GameID: "g", Kind: rtm.OpPatch,
			Source: rtm.SourceAdminREST, ImageRef: image, OldImageRef: "galaxy/game:1.4.1"})
	}
	patch("p2", "galaxy/game:1.4.2")
	patch("p3", "galaxy/game:1.4.3")
	settle(t, s, "g", &rtm.Succeeded, "c3", func(x *rtm.Record, gen int64, _ bool) { x.Started("c3", "galaxy/game:1.4.3", gen) })
	if a := answer(t, s, rtm.ChannelREST, "p2"); a == nil || a.Code != rtm.CodeConflict {
		t.Errorf("patch to 1.4.2 answered %+v, want conflict (superseded)", a)
	}
	if a := answer(t, s, rtm.ChannelREST, "p3"); a == nil || a.Outcome != rtm.OutcomeSucceeded {
		t.Errorf("patch to 1.4.3 answered %+v, want succeeded", a)
	}
}

// A start job answered together with another request's failure is a start failure: the other's
// code is not a start job's, and the start learns that its engine could not be started, with the
// other's message. A start that joined a pending patch of its image is never answered
// patch_rolled_back; a start queued behind a stop, answered together when the stop's work ran out
// of its retry budget (internal_error: the daemon kept refusing), is never answered internal_error,
// a stop's code. (The second was found by make model at 10,000 schedules.)
func TestStore_Commit_aStartAnsweredWithAnotherRequestsFailureIsAStartFailure(t *testing.T) {
	tests := []struct {
		name       string
		other      rtm.Request // pending before the start job r2 of image
		image      string
		answer     rtm.Answer // the other's
		container  string     // the container the work leaves
		apply      func(x *rtm.Record, a rtm.Answer, gen int64, current bool)
		otherCodes []rtm.ErrorCode // what the other may be answered
	}{
		{
			name: "joined to a rolled-back patch",
			other: rtm.Request{Channel: rtm.ChannelREST, RequestID: "p2", GameID: "g", Kind: rtm.OpPatch,
				Source: rtm.SourceAdminREST, ImageRef: "galaxy/game:1.4.2", OldImageRef: "galaxy/game:1.4.1"},
			image:     "galaxy/game:1.4.2",
			answer:    rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodePatchRolledBack, Message: "1.4.2 failed; 1.4.1 runs again"},
			container: "c4",
			apply: func(x *rtm.Record, a rtm.Answer, gen int64, current bool) {
				x.RolledBack("c4", "galaxy/game:1.4.1", a, gen, current)
			},
			otherCodes: []rtm.ErrorCode{rtm.CodePatchRolledBack},
		},
		{
			name: "behind a stop that ran out of its retry budget",
			other: rtm.Request{Channel: rtm.ChannelStopJobs, RequestID: "s2", GameID: "g", Kind: rtm.OpStop,
				Source: rtm.SourceStopJobs, Reason: "unspecified"},
			image: "galaxy/game:1.4.9",
			answer: rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeInternalError,
				Message: "gave up after 3 attempts in 210ms: inspecting container galaxy-game-g: injected daemon refusal"},
			apply: func(x *rtm.Record, a rtm.Answer, _ int64, _ bool) {
				x.Status, x.LastErrorCode = rtm.StatusFailed, a.Code
			},
			otherCodes: []rtm.ErrorCode{rtm.CodeInternalError, rtm.CodeConflict}, // conflict: superseded
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openRunning(t)
			submit(t, s, tt.other)
			submit(t, s, startJob("r2", "g", tt.image))
			settle(t, s, "g", &tt.answer, tt.container, func(x *rtm.Record, gen int64, current bool) {
				tt.apply(x, tt.answer, gen, current)
			})
			if got := answer(t, s, tt.other.Channel, tt.other.RequestID); got == nil || !slices.Contains(tt.otherCodes, got.Code) {
				t.Errorf("%s answered %+v, want one of %v", tt.other.RequestID, got, tt.otherCodes)
			}
			got := answer(t, s, rtm.ChannelStartJobs, "r2")
			if got == nil || got.Code != rtm.CodeContainerStartFailed || got.Message != tt.answer.Message {
				t.Errorf("start answered %+v, want container_start_failed with the other's message", got)
			}
		})
	}
}
