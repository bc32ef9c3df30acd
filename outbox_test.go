package rtmanager_test

import (
	"slices"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// keys returns the field names of an entry's fields.
func keys(fields []string) []string {
	var out []string
	for i := 0; i < len(fields); i += 2 {
		out = append(out, fields[i])
	}
	return out
}

// TestOutputFields_areTheContractsLists: each output stream's fields are CONTRACT §5's list, in
// its order.
func TestOutputFields_areTheContractsLists(t *testing.T) {
	at := time.Date(2026, 12, 4, 1, 2, 3, 4, time.FixedZone("x", 3600))
	req := rtm.Request{Channel: rtm.ChannelStartJobs, RequestID: "r1", GameID: "g1", Kind: rtm.OpStart, ImageRef: "galaxy/game:1.0.0"}
	a := rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeImagePullFailed, Message: "pulling: no"}

	res := rtm.JobResultFields(req, a, "c1", "http://galaxy-game-g1:8080", "galaxy/game:1.0.0", at)
	want := []string{"request_id", "job", "game_id", "outcome", "error_code", "error_message", "container_id",
		"engine_endpoint", "image_ref", "finished_at"}
	if !slices.Equal(keys(res), want) {
		t.Errorf("job result fields %v, want %v", keys(res), want)
	}
	e := rtm.OutboxEntry{Stream: rtm.StreamJobResults, Fields: res}
	if e.Field("job") != "start" || e.Field("finished_at") != "2026-12-04T00:02:03.000000004Z" || e.Field("nope") != "" {
		t.Errorf("job result field values: %v", res)
	}
	req.TraceParent = "00-1-2-01"
	if got := rtm.JobResultFields(req, a, "", "", "", at); got[len(got)-2] != "traceparent" {
		t.Errorf("a traced request's result ends %v, want traceparent", got[len(got)-2:])
	}

	in := rtm.IntentFields(req, a, at)
	if want := []string{"intent", "game_id", "image_ref", "error_code", "message", "created_at"}; !slices.Equal(keys(in), want) {
		t.Errorf("intent fields %v, want %v", keys(in), want)
	}
	if got := (rtm.OutboxEntry{Fields: in}).Field("intent"); got != "runtime.image_pull_failed" {
		t.Errorf("intent %q", got)
	}

	ev := rtm.HealthEvent{GameID: "g1", Type: rtm.EventContainerExited, ContainerID: "c1", ExitCode: rtm.IntPtr(137)}
	if want := []string{"game_id", "event_type", "container_id", "exit_code", "message", "observed_at"}; !slices.Equal(keys(rtm.HealthEventFields(ev, at)), want) {
		t.Errorf("health event fields %v, want %v", keys(rtm.HealthEventFields(ev, at)), want)
	}
	ev.ExitCode = nil
	if got := (rtm.OutboxEntry{Fields: rtm.HealthEventFields(ev, at)}).Field("exit_code"); got != "" {
		t.Errorf("an event without an exit code carries exit_code %q", got)
	}
}

func TestKindOfJob(t *testing.T) {
	if rtm.KindOfJob("stop") != rtm.StopJobs || rtm.KindOfJob("start") != rtm.StartJobs {
		t.Error("KindOfJob")
	}
}
