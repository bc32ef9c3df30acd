package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Submit records req and its effect on the game's desired state in one transaction. A request
// already recorded on the same channel is a duplicate and changes nothing. req's game id must be
// valid; AnswerInvalid takes the others. An admission that asks to Discard its refusal leaves no
// trace (Submission.Discarded); a game id that differs only in case from a recorded game's is
// refused with an error wrapping rtm.ErrGameIDCaseTaken, nothing written.
//
// The transaction costs two round trips: the request's insert with the reads admission needs
// (the record, locked, and whether other work is pending), then the writes admission asks for.
func (s *Store) Submit(ctx context.Context, req rtm.Request, admit rtm.Admitter) (rtm.Submission, error) {
	var sub rtm.Submission
	err := s.inPipe(ctx, func(p *pipe) error {
		sub = rtm.Submission{}
		var inserted, busy bool
		var rec *rtm.Record
		p.execTag("recording request "+req.RequestID, func(t pgconn.CommandTag) { inserted = t.RowsAffected() > 0 },
			`INSERT INTO requests (channel, request_id, game_id, op_kind, op_source, image_ref,
			old_image_ref, reason, generation, traceparent, received_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,0,$9,$10)
			ON CONFLICT DO NOTHING`, string(req.Channel), req.RequestID, req.GameID, string(req.Kind), string(req.Source),
			req.ImageRef, req.OldImageRef, req.Reason, req.TraceParent, req.ReceivedAt)
		queueLockRecord(p, req.GameID, &rec)
		p.queryRow("reading pending requests of "+req.GameID, func(row pgx.Row) error { return row.Scan(&busy) },
			`SELECT EXISTS (SELECT 1 FROM requests WHERE game_id = $1 AND answered_at IS NULL AND op_kind <> $2)`,
			req.GameID, string(req.Kind))
		if err := p.flush(ctx); err != nil {
			return err
		}
		if !inserted {
			sub.Duplicate = true
			return nil
		}
		adm := admit(rec, busy)
		sub.Record = rec
		if adm.Write {
			queueRecord(p, &adm.Record, rec == nil, &sub.Record)
			rec = &adm.Record // as written: the answer below reports it
		}
		if rec != nil {
			req.Generation = rec.Generation
		}
		p.exec("recording request "+req.RequestID, `UPDATE requests SET generation = $3 WHERE channel = $1 AND request_id = $2`,
			string(req.Channel), req.RequestID, req.Generation)
		sub.Request = req
		if adm.Answer != nil {
			sub.Answer = adm.Answer
			if adm.Discard {
				sub.Discarded = true
				return errDiscarded // rolled back: the request leaves no trace
			}
			queueAnswer(p, rec, req, *adm.Answer, "")
		}
		return nil
	})
	switch {
	case errors.Is(err, errDiscarded):
		return sub, nil
	case gameIDCaseTaken(err):
		return rtm.Submission{}, fmt.Errorf("recording request %s for game %s: %w", req.RequestID, req.GameID, errors.Join(rtm.ErrGameIDCaseTaken, err))
	case err != nil:
		return rtm.Submission{}, err
	}
	return sub, nil
}

// errDiscarded rolls back a submission whose admission asked for nothing to be stored.
var errDiscarded = errors.New("submission discarded")

// AnswerInvalid records a request that cannot be understood (its game id may be anything) and
// answers it at once; a duplicate changes nothing. No operation_log row is written for it, since
// it names no game RTM could know.
func (s *Store) AnswerInvalid(ctx context.Context, req rtm.Request, a rtm.Answer) (duplicate bool, err error) {
	err = s.inPipe(ctx, func(p *pipe) error {
		var inserted bool
		p.execTag("recording request "+req.RequestID, func(t pgconn.CommandTag) { inserted = t.RowsAffected() > 0 },
			`INSERT INTO requests (channel, request_id, game_id, op_kind, op_source, generation,
			traceparent, received_at) VALUES ($1,$2,$3,$4,$5,0,$6,$7) ON CONFLICT DO NOTHING`, string(req.Channel),
			req.RequestID, req.GameID, string(req.Kind), string(req.Source), req.TraceParent, req.ReceivedAt)
		if err := p.flush(ctx); err != nil {
			return err
		}
		if duplicate = !inserted; duplicate {
			return nil
		}
		queueAnswer(p, nil, req, a, "")
		return nil
	})
	return duplicate, err
}

// Commit writes c and returns the record as committed (nil when the game has none).
//
// The transaction costs two round trips: the reads (the record, locked; its pending requests
// when c answers them; the last health transitions c's probe and inspect events depend on),
// then every write with COMMIT.
func (s *Store) Commit(ctx context.Context, c rtm.Change) (*rtm.Record, error) {
	return s.commit(ctx, c.GameID, func(*rtm.Record) *rtm.Change { return &c }, &c)
}

// Update reads a game's record, locked, asks decide what to change (decide gets a copy, nil when
// the game has no record), and commits that change in the same transaction: the change is
// decided on the record as it is, and nobody can move it in between. decide returning nil
// writes nothing. It returns the record as committed, nil when nothing was written.
//
// A change that neither answers requests nor carries probe or inspect events costs two round
// trips, like Commit; one that does costs a third (its reads are known only once decided).
// decide may run more than once (the transaction is retried on a serialization failure).
func (s *Store) Update(ctx context.Context, gameID string, decide func(rec *rtm.Record) *rtm.Change) (*rtm.Record, error) {
	return s.commit(ctx, gameID, decide, nil)
}

// commit is Commit and Update: known, when set, is the change decide will return, so that its
// reads travel with the record's.
func (s *Store) commit(ctx context.Context, gameID string, decide func(*rtm.Record) *rtm.Change, known *rtm.Change) (*rtm.Record, error) {
	var out *rtm.Record
	err := s.inPipe(ctx, func(p *pipe) error {
		out = nil
		var rec *rtm.Record
		var pending []rtm.Request
		last := map[string]string{}
		queueLockRecord(p, gameID, &rec)
		if known != nil {
			if known.Answer != nil {
				queuePending(p, gameID, true, &pending)
			}
			last = queueLastTransitions(p, known.Events)
		}
		if err := p.flush(ctx); err != nil {
			return err
		}
		var view *rtm.Record
		if rec != nil {
			cp := *rec
			view = &cp
		}
		c := decide(view)
		if c == nil {
			return nil
		}
		if known == nil && (c.Answer != nil || len(c.Events) > 0) {
			if c.Answer != nil {
				queuePending(p, gameID, true, &pending)
			}
			last = queueLastTransitions(p, c.Events)
			if err := p.flush(ctx); err != nil {
				return err
			}
		}
		if c.Epoch != 0 && rec != nil && rec.FenceEpoch != c.Epoch {
			return fmt.Errorf("writing record of %s with fencing epoch %d (the record has %d): %w",
				gameID, c.Epoch, rec.FenceEpoch, rtm.ErrFenced)
		}
		desired := ""
		if rec != nil {
			desired = rec.DesiredImageRef
		}
		switch {
		case rec == nil && c.Insert != nil:
			ins := *c.Insert
			rec = &ins
			queueRecord(p, rec, true, &out)
		case rec == nil:
			return nil
		case c.Insert != nil:
			out = rec // someone else recorded it first
			return nil
		default:
			if c.Apply != nil {
				c.Apply(rec, rec.Generation == c.Gen)
			}
			queueRecord(p, rec, false, &out)
		}
		for _, req := range pending {
			if req.Generation > c.Gen {
				continue
			}
			a := *c.Answer
			switch {
			case req.Generation < c.Gen && superseded(req, rec.DesiredState, desired):
				a = rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeConflict,
					Message: "superseded by a later request for game " + gameID}
			default:
				a = a.For(req.Kind) // the code its kind may get
			}
			queueAnswer(p, rec, req, a, c.ContainerID)
		}
		for _, op := range c.Ops {
			queueOp(p, op)
		}
		queueEvents(p, c.Events, last)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// superseded reports whether a request older than the work being answered asked for something
// else than what that work did: another desired state, or another image (a patch or start to
// one image followed by one to another). It is answered conflict, not with the later request's
// outcome. desired is the desired image as it was before the answering change.
func superseded(req rtm.Request, state rtm.DesiredState, desired string) bool {
	if rtm.TargetOf(req.Kind) != state {
		return true
	}
	return (req.Kind == rtm.OpStart || req.Kind == rtm.OpPatch) && req.ImageRef != "" && req.ImageRef != desired
}

// MarkStopping records that RTM is about to stop a game's container (status stopping), in one
// round trip. epoch is the caller's fencing epoch: when the record has another (or the game has
// no record), nothing is written and the error wraps rtm.ErrFenced.
//
// It is the one write that does not wait for its WAL flush (synchronous_commit off for this
// transaction): lost in a PostgreSQL crash, it leaves the record saying running while its
// request is still pending, which the next reconcile settles anyway. Later commits wait for the
// flush, which covers this one too.
func (s *Store) MarkStopping(ctx context.Context, gameID string, epoch int64) error {
	var marked bool
	err := s.pipeOnce(ctx, func(p *pipe) error {
		p.exec("marking "+gameID+" stopping", `SET LOCAL synchronous_commit TO OFF`)
		p.execTag("marking "+gameID+" stopping", func(t pgconn.CommandTag) { marked = t.RowsAffected() > 0 },
			`UPDATE runtime_records SET status = 'stopping', updated_at = now() WHERE game_id = $1 AND fence_epoch = $2`,
			gameID, epoch)
		return nil
	})
	if err == nil && !marked {
		err = fmt.Errorf("marking %s stopping with fencing epoch %d: %w", gameID, epoch, rtm.ErrFenced)
	}
	return err
}

// queueLockRecord queues the read of a game's record, locked for the transaction; *rec is nil
// when it has none.
func queueLockRecord(p *pipe, gameID string, rec **rtm.Record) {
	p.queryRow("reading record of "+gameID, func(row pgx.Row) error {
		r, err := scanRecord(row)
		if errors.Is(err, pgx.ErrNoRows) {
			r, err = nil, nil
		}
		*rec = r
		return err
	}, `SELECT `+recordColumns+` FROM runtime_records WHERE game_id = $1 FOR UPDATE`, gameID)
}

// queueRecord queues the insert or update of r; *out receives the record as written.
func queueRecord(p *pipe, r *rtm.Record, insert bool, out **rtm.Record) {
	args := []any{r.GameID, string(r.Status), string(r.DesiredState), r.DesiredImageRef, r.CurrentImageRef,
		r.CurrentContainerID, r.EngineEndpoint, r.StateDir, string(r.LastErrorCode), r.LastErrorMessage, r.ExitCode,
		r.Generation, r.ObservedGeneration, r.ContainerGeneration, r.ExitReportedContainer, r.FenceEpoch}
	var sql string
	if insert {
		sql = `INSERT INTO runtime_records (game_id, status, desired_state, desired_image_ref, current_image_ref,
			current_container_id, engine_endpoint, state_dir, last_error_code, last_error_message, exit_code, generation,
			observed_generation, container_generation, exit_reported_container, fence_epoch)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16) RETURNING ` + recordColumns
	} else {
		sql = `UPDATE runtime_records SET status=$2, desired_state=$3, desired_image_ref=$4, current_image_ref=$5,
			current_container_id=$6, engine_endpoint=$7, state_dir=$8, last_error_code=$9, last_error_message=$10,
			exit_code=$11, generation=$12, observed_generation=$13, container_generation=$14, exit_reported_container=$15,
			fence_epoch=$16, updated_at=now() WHERE game_id=$1 RETURNING ` + recordColumns
	}
	p.queryRow("writing record of "+r.GameID, func(row pgx.Row) error {
		w, err := scanRecord(row)
		*out = w
		return err
	}, sql, args...)
}

// queuePending queues the read of a game's unanswered requests, oldest first, locked when lock.
func queuePending(p *pipe, gameID string, lock bool, out *[]rtm.Request) {
	sql := pendingSQL
	if lock {
		sql += ` FOR UPDATE`
	}
	p.query("reading pending requests of "+gameID, func(rows pgx.Rows) error {
		q, err := scanRequest(rows)
		*out = append(*out, q)
		return err
	}, sql, gameID)
}

// queueAnswer queues marking req answered with a, its operation row, its job result and, for a
// failed start, its notification intent.
func queueAnswer(p *pipe, rec *rtm.Record, req rtm.Request, a rtm.Answer, containerID string) {
	p.answered = append(p.answered, req)
	now := time.Now().UTC()
	p.exec("answering request "+req.RequestID, `UPDATE requests SET answered_at = $3, outcome = $4, error_code = $5,
		error_message = $6 WHERE channel = $1 AND request_id = $2`, string(req.Channel), req.RequestID, now,
		string(a.Outcome), string(a.Code), a.Message)
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
		queueOp(p, rtm.Operation{GameID: req.GameID, Kind: req.Kind, Source: req.Source,
			Outcome: a.Outcome, ErrorCode: a.Code, ErrorMessage: a.Message, RequestID: req.RequestID,
			OldImageRef: req.OldImageRef, NewImageRef: newImage, ContainerID: containerID,
			StartedAt: received, FinishedAt: now})
	}
	if req.Job() != "" {
		queueOutbox(p, rtm.StreamJobResults, rtm.JobResultFields(req, a, containerID, endpoint, image, now))
	}
	if rtm.IntentFor(a.Code) != "" && req.Kind == rtm.OpStart && a.Outcome == rtm.OutcomeFailed {
		queueOutbox(p, rtm.StreamNotificationIntents, rtm.IntentFields(req, a, now))
	}
}

func queueOp(p *pipe, op rtm.Operation) {
	if op.StartedAt.IsZero() {
		op.StartedAt = time.Now().UTC()
	}
	if op.FinishedAt.IsZero() {
		op.FinishedAt = time.Now().UTC()
	}
	p.exec(fmt.Sprintf("logging %s of %s", op.Kind, op.GameID), `INSERT INTO operation_log (game_id, op_kind, op_source,
		outcome, error_code, error_message, request_id, old_image_ref, new_image_ref, container_id, started_at, finished_at)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)`, op.GameID, string(op.Kind), string(op.Source),
		string(op.Outcome), string(op.ErrorCode), op.ErrorMessage, op.RequestID, op.OldImageRef, op.NewImageRef,
		op.ContainerID, op.StartedAt, op.FinishedAt)
}

// queueOutbox queues an outbox row; once written it is in p.added.
func queueOutbox(p *pipe, stream string, fields []string) {
	p.queryRow("queueing "+stream+" entry", func(row pgx.Row) error {
		e := rtm.OutboxEntry{Stream: stream, Fields: fields}
		if err := row.Scan(&e.ID); err != nil {
			return err
		}
		p.added = append(p.added, e)
		return nil
	}, `INSERT INTO outbox (stream, fields) VALUES ($1, $2) RETURNING id`, stream, fields)
}
