//go:build integration

package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// The contract's verbs, spoken the way RTM's peers speak them: job entries on the input
// streams as Lobby writes them, the output streams as Lobby and Notification read them, and the
// runbook's tables (CONTRACT §4, §5).

// entry is one stream entry.
type entry struct {
	ID string
	F  map[string]string
}

func (e entry) String() string { return fmt.Sprintf("%s %v", e.ID, e.F) }

func (r *rig) xadd(stream string, fields ...string) string {
	r.t.Helper()
	vals := make([]any, len(fields))
	for i, f := range fields {
		vals[i] = f
	}
	id, err := r.RDB.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: vals}).Result()
	if err != nil {
		r.t.Fatalf("XADD %s: %v", stream, err)
	}
	return id
}

// StartJob writes a start job as Lobby does and returns its entry id.
func (r *rig) StartJob(gameID, image, requestID string) string {
	r.t.Helper()
	return r.xadd(r.Config().StartJobsStream, "game_id", gameID, "image_ref", image, "request_id", requestID)
}

// StopJob writes a stop job as Lobby does and returns its entry id.
func (r *rig) StopJob(gameID, requestID, reason string) string {
	r.t.Helper()
	return r.xadd(r.Config().StopJobsStream, "game_id", gameID, "reason", reason, "request_id", requestID)
}

// Entries returns every entry of a stream, oldest first.
func (r *rig) Entries(stream string) []entry {
	r.t.Helper()
	msgs, err := r.RDB.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		r.t.Fatalf("XRANGE %s: %v", stream, err)
	}
	out := make([]entry, 0, len(msgs))
	for _, m := range msgs {
		f := make(map[string]string, len(m.Values))
		for k, v := range m.Values {
			f[k] = fmt.Sprint(v)
		}
		out = append(out, entry{ID: m.ID, F: f})
	}
	return out
}

func (r *rig) matching(stream string, keep func(entry) bool) []entry {
	var out []entry
	for _, e := range r.Entries(stream) {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// Results returns the job results of a request id.
func (r *rig) Results(requestID string) []entry {
	r.t.Helper()
	return r.matching(r.Config().JobResultsStream, func(e entry) bool { return e.F["request_id"] == requestID })
}

// WaitResult waits for the job result of a request id and returns it.
func (r *rig) WaitResult(requestID string, timeout time.Duration) entry {
	r.t.Helper()
	var got []entry
	testenv.Eventually(r.t, timeout, "job result for "+requestID, func() (bool, string) {
		got = r.Results(requestID)
		return len(got) > 0, "none on the job results stream"
	})
	return got[0]
}

// WaitSucceeded waits for the job result of a request id and fails the test unless it succeeded.
func (r *rig) WaitSucceeded(requestID string) entry {
	r.t.Helper()
	e := r.WaitResult(requestID, 30*time.Second)
	if e.F["outcome"] != "succeeded" {
		r.t.Fatalf("job %s: %v, want outcome succeeded", requestID, e)
	}
	return e
}

// StartGame sends a start job for a new game and waits for it to succeed.
func (r *rig) StartGame(gameID, image string) entry {
	r.t.Helper()
	r.StartJob(gameID, image, "req-"+gameID+"-start")
	return r.WaitSucceeded("req-" + gameID + "-start")
}

// HealthEvents returns the game's health events of one type ("" for all), oldest first.
func (r *rig) HealthEvents(gameID, eventType string) []entry {
	r.t.Helper()
	return r.matching(r.Config().HealthEventsStream, func(e entry) bool {
		return e.F["game_id"] == gameID && (eventType == "" || e.F["event_type"] == eventType)
	})
}

// WaitHealth waits for a health event of the game and returns the first one.
func (r *rig) WaitHealth(gameID, eventType string, timeout time.Duration) entry {
	r.t.Helper()
	var got []entry
	testenv.Eventually(r.t, timeout, eventType+" event for "+gameID, func() (bool, string) {
		got = r.HealthEvents(gameID, eventType)
		return len(got) > 0, fmt.Sprintf("events of the game so far: %v", r.HealthEvents(gameID, ""))
	})
	return got[0]
}

// Intents returns the notification intents of the game (all of them for "").
func (r *rig) Intents(gameID string) []entry {
	r.t.Helper()
	return r.matching(r.Config().NotificationIntentsStream, func(e entry) bool {
		return gameID == "" || e.F["game_id"] == gameID
	})
}

// ---- PostgreSQL ----

// record is the part of a runtime_records row the tests look at ("" for NULL).
type record struct {
	Exists                                  bool
	Status, Desired                         string
	DesiredImage, CurrentImage, ContainerID string
	Endpoint, StateDir                      string
	ErrorCode, ErrorMessage                 string
}

// Record reads the game's runtime record.
func (r *rig) Record(gameID string) record {
	r.t.Helper()
	var rec record
	err := r.PG.QueryRow(context.Background(), `SELECT status::text, desired_state::text,
		coalesce(desired_image_ref, ''), coalesce(current_image_ref, ''), coalesce(current_container_id, ''),
		coalesce(engine_endpoint, ''), coalesce(state_dir, ''), coalesce(last_error_code::text, ''),
		coalesce(last_error_message, '')
		FROM rtmanager.runtime_records WHERE game_id = $1`, gameID).
		Scan(&rec.Status, &rec.Desired, &rec.DesiredImage, &rec.CurrentImage, &rec.ContainerID,
			&rec.Endpoint, &rec.StateDir, &rec.ErrorCode, &rec.ErrorMessage)
	if errors.Is(err, pgx.ErrNoRows) {
		return rec
	}
	if err != nil {
		r.t.Fatalf("reading the runtime record of %s: %v", gameID, err)
	}
	rec.Exists = true
	return rec
}

// WaitStatus waits until the game's record has the status.
func (r *rig) WaitStatus(gameID, status string, timeout time.Duration) record {
	r.t.Helper()
	var rec record
	testenv.Eventually(r.t, timeout, "record "+gameID+" "+status, func() (bool, string) {
		rec = r.Record(gameID)
		return rec.Status == status, fmt.Sprintf("record %+v", rec)
	})
	return rec
}

// WaitBoots waits until gameID's engine has counted n boots in its state, failing the test as
// what. An engine counts its boot a moment after its container runs; on a host loaded by the
// parallel suites that moment came over 5 s late, so the wait allows 15 s.
func (r *rig) WaitBoots(gameID string, n int, what string) {
	r.t.Helper()
	want := fmt.Sprint(n)
	testenv.Eventually(r.t, 15*time.Second, what, func() (bool, string) {
		got := r.Boots(gameID)
		return got == want, "boots " + got
	})
}

// Ops counts the game's operation_log rows with op_kind kind and the extra SQL condition cond
// over the columns (may be empty), with args as $2, $3, ….
func (r *rig) Ops(gameID, kind, cond string, args ...any) int {
	r.t.Helper()
	q := `SELECT count(*) FROM rtmanager.operation_log WHERE game_id = $1 AND op_kind::text = $2`
	if cond != "" {
		q += " AND " + renumber(cond, 3)
	}
	var n int
	if err := r.PG.QueryRow(context.Background(), q, append([]any{gameID, kind}, args...)...).Scan(&n); err != nil {
		r.t.Fatalf("counting %s operations of %s: %v", kind, gameID, err)
	}
	return n
}

// OpKinds lists the game's operations as "op_kind/op_source/outcome", oldest first.
func (r *rig) OpKinds(gameID string) []string {
	r.t.Helper()
	rows, err := r.PG.Query(context.Background(), `SELECT op_kind::text || '/' || op_source::text || '/' || outcome::text
		FROM rtmanager.operation_log WHERE game_id = $1 ORDER BY id`, gameID)
	if err != nil {
		r.t.Fatalf("reading the operation log of %s: %v", gameID, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		r.t.Fatalf("reading the operation log of %s: %v", gameID, err)
	}
	return out
}

// renumber shifts the $1, $2, … placeholders of cond to start at from.
func renumber(cond string, from int) string {
	for i := 9; i >= 1; i-- {
		cond = strings.ReplaceAll(cond, fmt.Sprintf("$%d", i), fmt.Sprintf("$%d", i+from-1))
	}
	return cond
}

// snapshot is the game's health_snapshots row.
type snapshot struct {
	Exists        bool
	Status        string
	LastEventType string
	ProbeFailures int
	LastProbeAt   *time.Time
	ExitCode      *int
	OOMKilled     bool
	DockerState   string
}

// Snapshot reads the game's health snapshot.
func (r *rig) Snapshot(gameID string) snapshot {
	r.t.Helper()
	var s snapshot
	var exit *int32
	err := r.PG.QueryRow(context.Background(), `SELECT status::text, coalesce(last_event_type::text, ''),
		coalesce(consecutive_probe_failures, 0)::int, last_probe_at, exit_code::int, coalesce(oom_killed, false),
		coalesce(docker_state, '')
		FROM rtmanager.health_snapshots WHERE game_id = $1`, gameID).
		Scan(&s.Status, &s.LastEventType, &s.ProbeFailures, &s.LastProbeAt, &exit, &s.OOMKilled, &s.DockerState)
	if errors.Is(err, pgx.ErrNoRows) {
		return s
	}
	if err != nil {
		r.t.Fatalf("reading the health snapshot of %s: %v", gameID, err)
	}
	s.Exists = true
	if exit != nil {
		v := int(*exit)
		s.ExitCode = &v
	}
	return s
}

// expect fails the test with msg when ok is false.
func expect(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Fatalf(format, args...)
	}
}

// pretty prints a snapshot for failure messages.
func pretty(s snapshot) string {
	exit, probe := "NULL", "NULL"
	if s.ExitCode != nil {
		exit = fmt.Sprint(*s.ExitCode)
	}
	if s.LastProbeAt != nil {
		probe = s.LastProbeAt.Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("snapshot{exists %v status %q last_event %q probe_failures %d last_probe_at %s exit_code %s oom %v docker_state %q}",
		s.Exists, s.Status, s.LastEventType, s.ProbeFailures, probe, exit, s.OOMKilled, s.DockerState)
}
