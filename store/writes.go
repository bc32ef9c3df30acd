package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Logical outbox streams; the publisher maps them to the configured Redis stream names.
const (
	StreamJobResults          = "job_results"
	StreamHealthEvents        = "health_events"
	StreamNotificationIntents = "notification_intents"
)

// Submission is what became of a submitted request.
type Submission struct {
	// Duplicate: the request was seen before (same channel and request id); nothing was done.
	Duplicate bool
	// Answer is set when the request was answered at once.
	Answer *rtm.Answer
	// Request is the request as stored (with its generation).
	Request rtm.Request
	// Record is the game's record after the request, nil when it has none.
	Record *rtm.Record
}

// Admitter decides what a request does to a record; see rtm.Admit.
type Admitter func(rec *rtm.Record, busy bool) rtm.Admission

// Submit records req and its effect on the game's desired state in one transaction. A request
// already recorded on the same channel is a duplicate and changes nothing. req's game id must be
// valid; AnswerInvalid takes the others.
func (s *Store) Submit(ctx context.Context, req rtm.Request, admit Admitter) (Submission, error) {
	var sub Submission
	var woke bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		sub, woke = Submission{}, false
		tag, err := tx.Exec(ctx, `INSERT INTO requests (channel, request_id, game_id, op_kind, op_source, image_ref,
			old_image_ref, reason, generation, traceparent, received_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,0,$9,$10)
			ON CONFLICT DO NOTHING`, string(req.Channel), req.RequestID, req.GameID, string(req.Kind), string(req.Source),
			req.ImageRef, req.OldImageRef, req.Reason, req.TraceParent, req.ReceivedAt)
		if err != nil {
			return fmt.Errorf("recording request %s: %w", req.RequestID, err)
		}
		if tag.RowsAffected() == 0 {
			sub.Duplicate = true
			return nil
		}
		rec, err := scanRecord(tx.QueryRow(ctx, `SELECT `+recordColumns+` FROM runtime_records WHERE game_id = $1 FOR UPDATE`, req.GameID))
		if errors.Is(err, pgx.ErrNoRows) {
			rec = nil
		} else if err != nil {
			return fmt.Errorf("reading record of %s: %w", req.GameID, err)
		}
		var busy bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM requests WHERE game_id = $1 AND answered_at IS NULL
			AND op_kind <> $2)`, req.GameID, string(req.Kind)).Scan(&busy); err != nil {
			return fmt.Errorf("reading pending requests of %s: %w", req.GameID, err)
		}
		adm := admit(rec, busy)
		if adm.Write {
			rec, err = writeRecord(ctx, tx, &adm.Record, rec == nil)
			if err != nil {
				return err
			}
		}
		if rec != nil {
			req.Generation = rec.Generation
		}
		if _, err := tx.Exec(ctx, `UPDATE requests SET generation = $3 WHERE channel = $1 AND request_id = $2`,
			string(req.Channel), req.RequestID, req.Generation); err != nil {
			return fmt.Errorf("recording request %s: %w", req.RequestID, err)
		}
		sub.Request, sub.Record = req, rec
		if adm.Answer != nil {
			sub.Answer = adm.Answer
			woke, err = answer(ctx, tx, rec, req, *adm.Answer, "")
			return err
		}
		return nil
	})
	if err != nil {
		return Submission{}, err
	}
	if woke {
		s.wake()
	}
	return sub, nil
}

// AnswerInvalid records a request that cannot be understood (its game id may be anything) and
// answers it at once; a duplicate changes nothing. No operation_log row is written for it, since
// it names no game RTM could know.
func (s *Store) AnswerInvalid(ctx context.Context, req rtm.Request, a rtm.Answer) (duplicate bool, err error) {
	var woke bool
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO requests (channel, request_id, game_id, op_kind, op_source, generation,
			traceparent, received_at) VALUES ($1,$2,$3,$4,$5,0,$6,$7) ON CONFLICT DO NOTHING`, string(req.Channel),
			req.RequestID, req.GameID, string(req.Kind), string(req.Source), req.TraceParent, req.ReceivedAt)
		if err != nil {
			return fmt.Errorf("recording request %s: %w", req.RequestID, err)
		}
		if duplicate = tag.RowsAffected() == 0; duplicate {
			return nil
		}
		woke, err = answer(ctx, tx, nil, req, a, "")
		return err
	})
	if woke {
		s.wake()
	}
	return duplicate, err
}

// Commit writes c and returns the record as committed (nil when the game has none).
func (s *Store) Commit(ctx context.Context, c rtm.Change) (*rtm.Record, error) {
	var out *rtm.Record
	var woke bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out, woke = nil, false
		rec, err := scanRecord(tx.QueryRow(ctx, `SELECT `+recordColumns+` FROM runtime_records WHERE game_id = $1 FOR UPDATE`, c.GameID))
		switch {
		case errors.Is(err, pgx.ErrNoRows) && c.Insert != nil:
			rec, err = writeRecord(ctx, tx, c.Insert, true)
			if err != nil {
				return err
			}
		case errors.Is(err, pgx.ErrNoRows):
			return nil
		case err != nil:
			return fmt.Errorf("reading record of %s: %w", c.GameID, err)
		case c.Insert != nil:
			out = rec // someone else recorded it first
			return nil
		default:
			if c.Apply != nil {
				c.Apply(rec, rec.Generation == c.Gen)
			}
			if rec, err = writeRecord(ctx, tx, rec, false); err != nil {
				return err
			}
		}
		out = rec
		if c.Answer != nil {
			pending, err := pendingRequests(ctx, tx, c.GameID, true)
			if err != nil {
				return err
			}
			for _, req := range pending {
				if req.Generation > c.Gen {
					continue
				}
				a := *c.Answer
				if req.Generation < c.Gen && rtm.TargetOf(req.Kind) != rec.DesiredState {
					a = rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeConflict,
						Message: "superseded by a later request for game " + c.GameID}
				}
				w, err := answer(ctx, tx, rec, req, a, c.ContainerID)
				if err != nil {
					return err
				}
				woke = woke || w
			}
		}
		for _, op := range c.Ops {
			if err := insertOp(ctx, tx, op); err != nil {
				return err
			}
		}
		if len(c.Events) > 0 {
			if err := insertEvents(ctx, tx, c.Events); err != nil {
				return err
			}
			woke = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if woke {
		s.wake()
	}
	return out, nil
}

// RecordHealth publishes health events (through the outbox) and updates the snapshots.
func (s *Store) RecordHealth(ctx context.Context, events []rtm.HealthEvent) error {
	if len(events) == 0 {
		return nil
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error { return insertEvents(ctx, tx, events) })
	if err == nil {
		s.wake()
	}
	return err
}

// RecordProbes stores the latest probe of each game (failure count and time) in one statement.
func (s *Store) RecordProbes(ctx context.Context, results []rtm.ProbeResult) error {
	if len(results) == 0 {
		return nil
	}
	ids := make([]string, len(results))
	fails := make([]int32, len(results))
	ats := make([]time.Time, len(results))
	for i, r := range results {
		ids[i], fails[i], ats[i] = r.GameID, int32(r.Failures), r.At
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO health_snapshots (game_id, status, consecutive_probe_failures, last_probe_at, updated_at)
		SELECT u.game_id, CASE WHEN u.f = 0 THEN 'healthy' ELSE 'unknown' END, u.f, u.at, now() FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS u(game_id, f, at)
		ON CONFLICT (game_id) DO UPDATE SET consecutive_probe_failures = EXCLUDED.consecutive_probe_failures,
			last_probe_at = EXCLUDED.last_probe_at, updated_at = now(),
			-- a game never seen start (adopted, or before a restart) becomes healthy on its first good probe
			status = CASE WHEN health_snapshots.status = 'unknown' AND EXCLUDED.consecutive_probe_failures = 0
				THEN 'healthy' ELSE health_snapshots.status END`, ids, fails, ats)
	if err != nil {
		return fmt.Errorf("recording probes: %w", err)
	}
	return nil
}

func writeRecord(ctx context.Context, tx pgx.Tx, r *rtm.Record, insert bool) (*rtm.Record, error) {
	args := []any{r.GameID, string(r.Status), string(r.DesiredState), r.DesiredImageRef, r.CurrentImageRef,
		r.CurrentContainerID, r.EngineEndpoint, r.StateDir, string(r.LastErrorCode), r.LastErrorMessage, r.ExitCode,
		r.Generation, r.ObservedGeneration, r.ContainerGeneration, r.ExitReportedContainer}
	var sql string
	if insert {
		sql = `INSERT INTO runtime_records (game_id, status, desired_state, desired_image_ref, current_image_ref,
			current_container_id, engine_endpoint, state_dir, last_error_code, last_error_message, exit_code, generation,
			observed_generation, container_generation, exit_reported_container)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15) RETURNING ` + recordColumns
	} else {
		sql = `UPDATE runtime_records SET status=$2, desired_state=$3, desired_image_ref=$4, current_image_ref=$5,
			current_container_id=$6, engine_endpoint=$7, state_dir=$8, last_error_code=$9, last_error_message=$10,
			exit_code=$11, generation=$12, observed_generation=$13, container_generation=$14, exit_reported_container=$15,
			updated_at=now() WHERE game_id=$1 RETURNING ` + recordColumns
	}
	out, err := scanRecord(tx.QueryRow(ctx, sql, args...))
	if err != nil {
		return nil, fmt.Errorf("writing record of %s: %w", r.GameID, err)
	}
	return out, nil
}

// answer marks req answered with a, logs its operation and queues its job result and, for a
// failed start, its notification intent. It reports whether it added outbox rows.
func answer(ctx context.Context, tx pgx.Tx, rec *rtm.Record, req rtm.Request, a rtm.Answer, containerID string) (bool, error) {
	now := time.Now().UTC()
	if _, err := tx.Exec(ctx, `UPDATE requests SET answered_at = $3, outcome = $4, error_code = $5, error_message = $6
		WHERE channel = $1 AND request_id = $2`, string(req.Channel), req.RequestID, now, string(a.Outcome),
		string(a.Code), a.Message); err != nil {
		return false, fmt.Errorf("answering request %s: %w", req.RequestID, err)
	}
	endpoint, image := "", req.ImageRef
	if rec != nil {
		endpoint = rec.EngineEndpoint
		if containerID == "" {
			containerID = rec.CurrentContainerID
		}
		if image == "" {
			image = rec.CurrentImageRef
		}
	}
	if rtm.ValidateGameID(req.GameID) == nil {
		newImage := ""
		if req.Kind == rtm.OpStart || req.Kind == rtm.OpPatch || req.Kind == rtm.OpRestart {
			newImage = image
		}
		received := req.ReceivedAt
		if received.IsZero() {
			received = now
		}
		if err := insertOp(ctx, tx, rtm.Operation{GameID: req.GameID, Kind: req.Kind, Source: req.Source,
			Outcome: a.Outcome, ErrorCode: a.Code, ErrorMessage: a.Message, RequestID: req.RequestID,
			OldImageRef: req.OldImageRef, NewImageRef: newImage, ContainerID: containerID,
			StartedAt: received, FinishedAt: now}); err != nil {
			return false, err
		}
	}
	added := false
	if job := req.Job(); job != "" {
		f := []string{"request_id", req.RequestID, "job", job, "game_id", req.GameID, "outcome", string(a.Outcome),
			"error_code", string(a.Code), "error_message", a.Message, "container_id", containerID,
			"engine_endpoint", endpoint, "image_ref", image, "finished_at", now.Format(time.RFC3339Nano)}
		if req.TraceParent != "" {
			f = append(f, "traceparent", req.TraceParent)
		}
		if err := insertOutbox(ctx, tx, StreamJobResults, f); err != nil {
			return false, err
		}
		added = true
	}
	if intent := rtm.IntentFor(a.Code); intent != "" && req.Kind == rtm.OpStart && a.Outcome == rtm.OutcomeFailed {
		f := []string{"intent", string(intent), "game_id", req.GameID, "image_ref", req.ImageRef,
			"error_code", string(a.Code), "message", a.Message, "created_at", now.Format(time.RFC3339Nano)}
		if err := insertOutbox(ctx, tx, StreamNotificationIntents, f); err != nil {
			return false, err
		}
		added = true
	}
	return added, nil
}

func insertOp(ctx context.Context, tx pgx.Tx, op rtm.Operation) error {
	if op.StartedAt.IsZero() {
		op.StartedAt = time.Now().UTC()
	}
	if op.FinishedAt.IsZero() {
		op.FinishedAt = time.Now().UTC()
	}
	_, err := tx.Exec(ctx, `INSERT INTO operation_log (game_id, op_kind, op_source, outcome, error_code, error_message,
		request_id, old_image_ref, new_image_ref, container_id, started_at, finished_at)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)`, op.GameID, string(op.Kind), string(op.Source),
		string(op.Outcome), string(op.ErrorCode), op.ErrorMessage, op.RequestID, op.OldImageRef, op.NewImageRef,
		op.ContainerID, op.StartedAt, op.FinishedAt)
	if err != nil {
		return fmt.Errorf("logging %s of %s: %w", op.Kind, op.GameID, err)
	}
	return nil
}

func insertOutbox(ctx context.Context, tx pgx.Tx, stream string, fields []string) error {
	if _, err := tx.Exec(ctx, `INSERT INTO outbox (stream, fields) VALUES ($1, $2)`, stream, fields); err != nil {
		return fmt.Errorf("queueing %s entry: %w", stream, err)
	}
	return nil
}

func insertEvents(ctx context.Context, tx pgx.Tx, events []rtm.HealthEvent) error {
	for _, e := range events {
		if repeat, err := repeatedTransition(ctx, tx, e); err != nil {
			return err
		} else if repeat {
			continue
		}
		at := e.ObservedAt
		if at.IsZero() {
			at = time.Now()
		}
		f := []string{"game_id", e.GameID, "event_type", string(e.Type), "container_id", e.ContainerID}
		if e.ExitCode != nil {
			f = append(f, "exit_code", strconv.Itoa(*e.ExitCode))
		}
		f = append(f, "message", e.Message, "observed_at", at.UTC().Format(time.RFC3339Nano))
		if err := insertOutbox(ctx, tx, StreamHealthEvents, f); err != nil {
			return err
		}
		started := e.Type == rtm.EventContainerStarted
		_, err := tx.Exec(ctx, `INSERT INTO health_snapshots (game_id, status, last_event_type, exit_code, oom_killed,
			docker_state, updated_at) VALUES ($1, $2, $3, $4, $5, $6, now())
			ON CONFLICT (game_id) DO UPDATE SET status = EXCLUDED.status, last_event_type = EXCLUDED.last_event_type,
				exit_code = CASE WHEN $7 THEN NULL ELSE COALESCE(EXCLUDED.exit_code, health_snapshots.exit_code) END,
				oom_killed = CASE WHEN $7 THEN false ELSE EXCLUDED.oom_killed OR health_snapshots.oom_killed END,
				consecutive_probe_failures = CASE WHEN $7 OR EXCLUDED.last_event_type = 'probe_recovered' THEN 0
					ELSE health_snapshots.consecutive_probe_failures END,
				docker_state = COALESCE(NULLIF(EXCLUDED.docker_state, ''), health_snapshots.docker_state),
				updated_at = now()`,
			e.GameID, string(e.Status()), string(e.Type), e.ExitCode, e.OOMKilled, e.DockerState, started)
		if err != nil {
			return fmt.Errorf("updating health snapshot of %s: %w", e.GameID, err)
		}
	}
	return nil
}

// inTx runs fn in a transaction, retrying a few times when PostgreSQL reports a serialization
// failure, a deadlock or a unique violation from a concurrent insert of the same game.
func (s *Store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		err = pgx.BeginFunc(ctx, s.pool, fn)
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || (pe.Code != "40001" && pe.Code != "40P01" && pe.Code != "23505") {
			return err
		}
	}
	return err
}

// repeatedTransition reports whether a probe or inspect event repeats the snapshot's last
// transition (another RTM process, or this one before a restart, already published it): such
// events are published once per transition, whoever observes them.
func repeatedTransition(ctx context.Context, tx pgx.Tx, e rtm.HealthEvent) (bool, error) {
	switch e.Type {
	case rtm.EventProbeFailed, rtm.EventProbeRecovered, rtm.EventInspectUnhealthy:
	default:
		return false, nil
	}
	var last string
	err := tx.QueryRow(ctx, `SELECT last_event_type FROM health_snapshots WHERE game_id = $1 FOR UPDATE`, e.GameID).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
		return e.Type == rtm.EventProbeRecovered, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading health snapshot of %s: %w", e.GameID, err)
	}
	switch e.Type {
	case rtm.EventProbeRecovered:
		return last != string(rtm.EventProbeFailed), nil
	default:
		return last == string(e.Type), nil
	}
}
