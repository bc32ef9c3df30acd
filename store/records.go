package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	rtm "github.com/galaxy-platform/rtmanager"
)

const recordColumns = `game_id, status, desired_state, desired_image_ref, current_image_ref, current_container_id,
	engine_endpoint, state_dir, last_error_code, last_error_message, exit_code, generation, observed_generation,
	container_generation, exit_reported_container, fence_epoch, created_at, updated_at`

func scanRecord(row pgx.Row) (*rtm.Record, error) {
	var r rtm.Record
	err := row.Scan(&r.GameID, &r.Status, &r.DesiredState, &r.DesiredImageRef, &r.CurrentImageRef,
		&r.CurrentContainerID, &r.EngineEndpoint, &r.StateDir, &r.LastErrorCode, &r.LastErrorMessage,
		&r.ExitCode, &r.Generation, &r.ObservedGeneration, &r.ContainerGeneration, &r.ExitReportedContainer,
		&r.FenceEpoch, &r.CreatedAt, &r.UpdatedAt)
	if err != nil {
		return nil, err
	}
	r.CreatedAt, r.UpdatedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC()
	return &r, nil
}

// Get returns a game's record; a game without one is an error wrapping rtm.ErrNotFound.
func (s *Store) Get(ctx context.Context, gameID string) (*rtm.Record, error) {
	r, err := scanRecord(s.pool.QueryRow(ctx, `SELECT `+recordColumns+` FROM runtime_records WHERE game_id = $1`, gameID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("game %s: %w", gameID, rtm.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading record of %s: %w", gameID, err)
	}
	return r, nil
}

// List returns records ordered by game id, at most f.Limit of them.
func (s *Store) List(ctx context.Context, f rtm.ListFilter) ([]rtm.Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+recordColumns+` FROM runtime_records
		WHERE ($1 = '' OR status = $1) AND game_id > $2 ORDER BY game_id LIMIT $3`, string(f.Status), f.After, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("listing records: %w", err)
	}
	defer rows.Close()
	var out []rtm.Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("listing records: %w", err)
		}
		out = append(out, *r)
	}
	return out, rows.Err()
}

// ActiveGameIDs returns the id of every game whose record is not settled as removed: the games a
// full reconcile pass must look at besides the containers Docker lists.
func (s *Store) ActiveGameIDs(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT game_id FROM runtime_records
		WHERE status <> 'removed' OR observed_generation < generation`)
	if err != nil {
		return nil, fmt.Errorf("listing active games: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing active games: %w", err)
	}
	return ids, nil
}

// RunningGames returns every game whose record is running.
func (s *Store) RunningGames(ctx context.Context) ([]rtm.RunningGame, error) {
	rows, err := s.pool.Query(ctx, `SELECT game_id, current_container_id, engine_endpoint, updated_at
		FROM runtime_records WHERE status = 'running' ORDER BY game_id`)
	if err != nil {
		return nil, fmt.Errorf("listing running games: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rtm.RunningGame, error) {
		var g rtm.RunningGame
		err := r.Scan(&g.GameID, &g.ContainerID, &g.Endpoint, &g.UpdatedAt)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing running games: %w", err)
	}
	return out, nil
}

// CountByStatus returns how many records hold each status (absent statuses are absent).
func (s *Store) CountByStatus(ctx context.Context) (map[rtm.Status]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT status, count(*) FROM runtime_records GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("counting records: %w", err)
	}
	defer rows.Close()
	out := map[rtm.Status]int64{}
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("counting records: %w", err)
		}
		out[rtm.Status(st)] = n
	}
	return out, rows.Err()
}

// Operations returns a game's operation log, newest first.
func (s *Store) Operations(ctx context.Context, gameID string, limit int) ([]rtm.Operation, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, game_id, op_kind, op_source, outcome, error_code, error_message,
		request_id, old_image_ref, new_image_ref, container_id, started_at, finished_at
		FROM operation_log WHERE game_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2`, gameID, limit)
	if err != nil {
		return nil, fmt.Errorf("reading operations of %s: %w", gameID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rtm.Operation, error) {
		var o rtm.Operation
		err := r.Scan(&o.ID, &o.GameID, &o.Kind, &o.Source, &o.Outcome, &o.ErrorCode, &o.ErrorMessage,
			&o.RequestID, &o.OldImageRef, &o.NewImageRef, &o.ContainerID, &o.StartedAt, &o.FinishedAt)
		o.StartedAt, o.FinishedAt = o.StartedAt.UTC(), o.FinishedAt.UTC()
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading operations of %s: %w", gameID, err)
	}
	return out, nil
}

// Health returns a game's health snapshot; none is an error wrapping rtm.ErrNotFound.
func (s *Store) Health(ctx context.Context, gameID string) (*rtm.HealthSnapshot, error) {
	var h rtm.HealthSnapshot
	err := s.pool.QueryRow(ctx, `SELECT game_id, status, last_event_type, consecutive_probe_failures,
		last_probe_at, exit_code, oom_killed, docker_state, updated_at FROM health_snapshots WHERE game_id = $1`, gameID).
		Scan(&h.GameID, &h.Status, &h.LastEventType, &h.ConsecutiveProbeFailures, &h.LastProbeAt, &h.ExitCode,
			&h.OOMKilled, &h.DockerState, &h.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("health of %s: %w", gameID, rtm.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading health of %s: %w", gameID, err)
	}
	h.UpdatedAt = h.UpdatedAt.UTC()
	if h.LastProbeAt != nil {
		t := h.LastProbeAt.UTC()
		h.LastProbeAt = &t
	}
	return &h, nil
}

// Fence starts a lease holder's work on a game: it bumps the game's fencing epoch and returns the
// record as bumped (nil when the game has none) with its unanswered requests, oldest first, in
// one round trip. Every write the holder makes afterwards carries the returned record's
// FenceEpoch (rtm.Change.Epoch, MarkStopping), so a holder that lost its lease to this one can no
// longer change the record.
func (s *Store) Fence(ctx context.Context, gameID string) (*rtm.Record, []rtm.Request, error) {
	var rec *rtm.Record
	var pending []rtm.Request
	b := &pgx.Batch{}
	b.Queue(`UPDATE runtime_records SET fence_epoch = fence_epoch + 1 WHERE game_id = $1 RETURNING `+recordColumns,
		gameID).QueryRow(func(row pgx.Row) error {
		r, err := scanRecord(row)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		rec = r
		return err
	})
	b.Queue(pendingSQL, gameID).Query(func(rows pgx.Rows) error {
		var err error
		pending, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (rtm.Request, error) { return scanRequest(r) })
		return err
	})
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, fmt.Errorf("fencing record of %s: %w", gameID, err)
	}
	return rec, pending, nil
}

const pendingSQL = `SELECT channel, request_id, game_id, op_kind, op_source, image_ref, old_image_ref, reason,
	generation, traceparent, received_at FROM requests
	WHERE game_id = $1 AND answered_at IS NULL ORDER BY received_at, request_id`

func scanRequest(row pgx.Row) (rtm.Request, error) {
	var q rtm.Request
	err := row.Scan(&q.Channel, &q.RequestID, &q.GameID, &q.Kind, &q.Source, &q.ImageRef, &q.OldImageRef,
		&q.Reason, &q.Generation, &q.TraceParent, &q.ReceivedAt)
	return q, err
}

// RequestAnswer returns the answer of a request, or nil while it is pending; an unknown request
// is an error wrapping rtm.ErrNotFound.
func (s *Store) RequestAnswer(ctx context.Context, ch rtm.Channel, requestID string) (*rtm.Answer, error) {
	var answered *time.Time
	var a rtm.Answer
	err := s.pool.QueryRow(ctx, `SELECT answered_at, outcome, error_code, error_message FROM requests
		WHERE channel = $1 AND request_id = $2`, string(ch), requestID).Scan(&answered, &a.Outcome, &a.Code, &a.Message)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("request %s: %w", requestID, rtm.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading request %s: %w", requestID, err)
	}
	if answered == nil {
		return nil, nil
	}
	return &a, nil
}

// republishWindow is how old a result may be and still be published again: less than the
// publisher's 24-hour marker TTL, so that a marker that expired is never taken for a lost one
// (which would add a second result beside the first).
const republishWindow = 23 * time.Hour

// RepublishLostResult queues again the job result of an answered request when Redis has lost it:
// the request's newest result row is in the outbox, marked published, and its publication marker
// is gone from Redis (Redis restarted empty, or was flushed). The row is marked unpublished, so
// the publisher's next poll adds it to the stream again, once: publishing sets the marker anew.
// It returns true when it queued the row; false when the request has no result row written within
// republishWindow (not a job channel, an older answer), when the row still waits to be published,
// or when the marker is there (the result is in the stream, or was trimmed from it).
func (s *Store) RepublishLostResult(ctx context.Context, ch rtm.Channel, requestID string, marks rtm.SentMarks) (bool, error) {
	job := rtm.Request{Channel: ch}.Job()
	if job == "" {
		return false, nil
	}
	var id int64
	var published bool
	// fields is request_id, <id>, job, <job>, …: see queueAnswer.
	// Only a row created within republishWindow: its marker, set when it was first published,
	// cannot have expired by its TTL, so a missing marker means Redis lost it (and the entry).
	err := s.pool.QueryRow(ctx, `SELECT id, published_at IS NOT NULL FROM outbox
		WHERE stream = $1 AND fields[2] = $2 AND fields[4] = $3 AND created_at > now() - make_interval(secs => $4)
		ORDER BY id DESC LIMIT 1`,
		rtm.StreamJobResults, requestID, job, republishWindow.Seconds()).Scan(&id, &published)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("finding the result of request %s: %w", requestID, err)
	}
	if !published {
		return false, nil
	}
	epoch, err := s.OutboxEpoch(ctx)
	if err != nil {
		return false, err
	}
	sent, err := marks.OutboxSent(ctx, epoch, id)
	if err != nil {
		return false, err
	}
	if sent {
		return false, nil
	}
	tag, err := s.pool.Exec(ctx, `UPDATE outbox SET published_at = NULL WHERE id = $1 AND published_at IS NOT NULL`, id)
	if err != nil {
		return false, fmt.Errorf("queueing the result of request %s again: %w", requestID, err)
	}
	return tag.RowsAffected() == 1, nil
}
