package rtmanager

import (
	"context"
	"strconv"
	"time"
)

// The output contract in one place: the logical streams RTM publishes to, the entry the store
// queues and the publisher relays, and the field lists of each stream (CONTRACT §5). The store
// encodes with the functions below, the publisher relays the fields as they are, telemetry reads
// them back with Field; nobody else builds or parses them.

// Logical output streams; the publisher maps them to the configured Redis stream names.
const (
	StreamJobResults          = "job_results"
	StreamHealthEvents        = "health_events"
	StreamNotificationIntents = "notification_intents"
)

// OutboxEntry is one entry queued for an output stream: its outbox id, its stream (logical in
// the outbox, the Redis stream's name when the publisher hands it to Redis) and its fields in
// order (field, value, field, value…).
type OutboxEntry struct {
	ID     int64
	Stream string
	Fields []string
}

// Field returns the value of the entry's field name, "" when it has none.
func (e OutboxEntry) Field(name string) string {
	for i := 0; i+1 < len(e.Fields); i += 2 {
		if e.Fields[i] == name {
			return e.Fields[i+1]
		}
	}
	return ""
}

// JobResultFields are the fields of the job result answering req with a: the game's container,
// endpoint and image as the answer leaves them, and when it was answered.
func JobResultFields(req Request, a Answer, containerID, endpoint, image string, at time.Time) []string {
	f := []string{"request_id", req.RequestID, "job", req.Job(), "game_id", req.GameID, "outcome", string(a.Outcome),
		"error_code", string(a.Code), "error_message", a.Message, "container_id", containerID,
		"engine_endpoint", endpoint, "image_ref", image, "finished_at", at.UTC().Format(time.RFC3339Nano)}
	if req.TraceParent != "" {
		f = append(f, "traceparent", req.TraceParent)
	}
	return f
}

// IntentFields are the fields of the notification intent of a failed start (IntentFor(a.Code)).
func IntentFields(req Request, a Answer, at time.Time) []string {
	return []string{"intent", string(IntentFor(a.Code)), "game_id", req.GameID, "image_ref", req.ImageRef,
		"error_code", string(a.Code), "message", a.Message, "created_at", at.UTC().Format(time.RFC3339Nano)}
}

// HealthEventFields are the fields of a health event, observed at at.
func HealthEventFields(e HealthEvent, at time.Time) []string {
	f := []string{"game_id", e.GameID, "event_type", string(e.Type), "container_id", e.ContainerID}
	if e.ExitCode != nil {
		f = append(f, "exit_code", strconv.Itoa(*e.ExitCode))
	}
	return append(f, "message", e.Message, "observed_at", at.UTC().Format(time.RFC3339Nano))
}

// JobKind tells the two job streams apart; it is also the consumer's name in metrics and logs.
type JobKind string

// The job kinds.
const (
	StartJobs JobKind = "startjobs"
	StopJobs  JobKind = "stopjobs"
)

// KindOfJob returns the job stream a job result's job field ("start", "stop") answers.
func KindOfJob(job string) JobKind {
	if job == "stop" {
		return StopJobs
	}
	return StartJobs
}

// StreamEntry is one entry read from an input stream.
type StreamEntry struct {
	ID     string
	Fields map[string]string
}

// SentMarks tells whether Redis still holds the publication marker of an outbox row (the
// coordination's rtmanager:outbox_sent:<epoch>:<id>).
type SentMarks interface {
	OutboxSent(ctx context.Context, epoch string, id int64) (bool, error)
}
