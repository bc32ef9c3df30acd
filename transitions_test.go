package rtmanager_test

import (
	"testing"

	rtm "github.com/galaxy-platform/rtmanager"
)

// TestRecord_transitions_clearStaleFields holds the rule transitions.go states: each transition
// clears the fields it makes stale, the same way whichever path took it.
func TestRecord_transitions_clearStaleFields(t *testing.T) {
	failedPatch := rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodePatchRolledBack, Message: "probe failed"}
	// A record that carries everything a later transition may have to clear.
	worn := func() rtm.Record {
		return rtm.Record{GameID: "g1", Status: rtm.StatusFailed, DesiredState: rtm.DesiredRunning,
			DesiredImageRef: "galaxy/game:1", CurrentImageRef: "galaxy/game:1", CurrentContainerID: "c-old",
			ExitCode: rtm.IntPtr(3), LastErrorCode: rtm.CodeContainerStartFailed, LastErrorMessage: "no", Generation: 4}
	}
	tests := []struct {
		name      string
		apply     func(*rtm.Record)
		status    rtm.Status
		container string
		exit      *int
		code      rtm.ErrorCode
	}{
		{"started", func(r *rtm.Record) { r.Started("c-new", "galaxy/game:2", 4) }, rtm.StatusRunning, "c-new", nil, ""},
		{"stopped", func(r *rtm.Record) { r.Stopped("c-old", rtm.IntPtr(0), 4) }, rtm.StatusStopped, "c-old", rtm.IntPtr(0), ""},
		{"removed by RTM", func(r *rtm.Record) { r.ContainerRemoved("c-old", 4) }, rtm.StatusRemoved, "", nil, ""},
		{"vanished (dispose)", func(r *rtm.Record) { r.Disposed(true) }, rtm.StatusRemoved, "", nil, ""},
		{"converged removed", func(r *rtm.Record) { r.Converged(rtm.StatusRemoved, nil, 4) }, rtm.StatusRemoved, "", nil, ""},
		{"converged running", func(r *rtm.Record) {
			r.Converged(rtm.StatusRunning, &rtm.Container{ID: "c-old", ImageRef: "galaxy/game:1", State: rtm.StateRunning}, 4)
		}, rtm.StatusRunning, "c-old", nil, ""},
		{"exited alone", func(r *rtm.Record) { r.ExitedAlone("c-old", 137, true) }, rtm.StatusExited, "c-old", rtm.IntPtr(137), ""},
		{"synced to a hand-started container", func(r *rtm.Record) {
			r.Synced(rtm.Container{ID: "c-hand", ImageRef: "galaxy/game:1", State: rtm.StateRunning})
		}, rtm.StatusRunning, "c-hand", nil, ""},
		{"failed keeps the container it acted on", func(r *rtm.Record) {
			r.Failed(rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeInternalError, Message: "refused"}, "c-old", 4)
		}, rtm.StatusFailed, "c-old", rtm.IntPtr(3), rtm.CodeInternalError},
		{"rolled back keeps the patch's error", func(r *rtm.Record) { r.RolledBack("c-back", "galaxy/game:1", failedPatch, 4, true) },
			rtm.StatusRunning, "c-back", nil, rtm.CodePatchRolledBack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := worn()
			tt.apply(&r)
			if r.Status != tt.status || r.CurrentContainerID != tt.container {
				t.Errorf("status %s container %q, want %s %q", r.Status, r.CurrentContainerID, tt.status, tt.container)
			}
			if (r.ExitCode == nil) != (tt.exit == nil) || (r.ExitCode != nil && *r.ExitCode != *tt.exit) {
				t.Errorf("exit code %v, want %v", r.ExitCode, tt.exit)
			}
			if r.LastErrorCode != tt.code || (tt.code == "" && r.LastErrorMessage != "") {
				t.Errorf("last error %q %q, want code %q", r.LastErrorCode, r.LastErrorMessage, tt.code)
			}
			if r.CurrentImageRef == "" {
				t.Error("the image the game last ran was forgotten")
			}
		})
	}
}

// TestAnswer_For: one reconcile's answer, given to each pending request, carries a code that
// request's kind may get.
func TestAnswer_For(t *testing.T) {
	fail := func(c rtm.ErrorCode) rtm.Answer { return rtm.Answer{Outcome: rtm.OutcomeFailed, Code: c, Message: "m"} }
	for _, tt := range []struct {
		a    rtm.Answer
		kind rtm.OpKind
		want rtm.ErrorCode
	}{
		{fail(rtm.CodeInternalError), rtm.OpStart, rtm.CodeContainerStartFailed},
		{fail(rtm.CodeServiceUnavailable), rtm.OpRestart, rtm.CodeContainerStartFailed},
		{fail(rtm.CodeInternalError), rtm.OpPatch, rtm.CodeContainerStartFailed},
		{fail(rtm.CodeInternalError), rtm.OpStop, rtm.CodeInternalError},
		{fail(rtm.CodeServiceUnavailable), rtm.OpCleanupContainer, rtm.CodeServiceUnavailable},
		{fail(rtm.CodePatchRolledBack), rtm.OpPatch, rtm.CodePatchRolledBack},
		{fail(rtm.CodePatchRolledBack), rtm.OpStart, rtm.CodeContainerStartFailed},
		{fail(rtm.CodeImagePullFailed), rtm.OpStart, rtm.CodeImagePullFailed},
		{rtm.Succeeded, rtm.OpStart, ""},
	} {
		got := tt.a.For(tt.kind)
		if got.Code != tt.want || got.Outcome != tt.a.Outcome || got.Message != tt.a.Message {
			t.Errorf("%s answer for a %s: %+v, want code %q", tt.a.Code, tt.kind, got, tt.want)
		}
	}
}
