package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pipe is one transaction sent to PostgreSQL as pipelined batches: statements are queued, and
// flush sends everything queued in one round trip. BEGIN travels with the first flush and COMMIT
// with the statements still queued when the transaction's function returns, so a transaction
// that reads, decides in Go and then writes costs two round trips however many statements it
// holds (one per statement, plus BEGIN and COMMIT, as a pgx.Tx would send them).
//
// Each statement is queued with what it does, which its error names. When a statement fails,
// PostgreSQL skips the rest of its batch; flush returns that statement's error and inPipe rolls
// the transaction back.
//
// The whole transaction runs under one deadline (ctx): the operation timeout, or the caller's
// deadline when that comes first.
type pipe struct {
	ctx   context.Context
	conn  *pgxpool.Conn
	batch *pgx.Batch
	// added are the outbox rows the transaction inserted (queueOutbox), as they were written.
	added []rtm.OutboxEntry
	// answered are the requests the transaction answered (queueAnswer).
	answered []rtm.Request
}

func newPipe(ctx context.Context, conn *pgxpool.Conn) *pipe {
	p := &pipe{ctx: ctx, conn: conn, batch: &pgx.Batch{}}
	p.batch.Queue("BEGIN")
	return p
}

// exec queues a statement whose result is not needed.
func (p *pipe) exec(what, sql string, args ...any) {
	p.execTag(what, nil, sql, args...)
}

// execTag queues a statement and hands its command tag to fn (which may be nil).
func (p *pipe) execTag(what string, fn func(pgconn.CommandTag), sql string, args ...any) {
	p.batch.Queue(sql, args...).Fn = func(br pgx.BatchResults) error {
		tag, err := br.Exec()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if fn != nil {
			fn(tag)
		}
		return nil
	}
}

// queryRow queues a query of at most one row and hands the row to scan, whose Scan returns
// pgx.ErrNoRows when there is none; scan's error, if any, fails the transaction.
func (p *pipe) queryRow(what string, scan func(pgx.Row) error, sql string, args ...any) {
	p.batch.Queue(sql, args...).Fn = func(br pgx.BatchResults) error {
		if err := scan(br.QueryRow()); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
}

// intoMap is a row scanner for query that reads rows of two text columns into m, key and value.
func intoMap(m map[string]string) func(pgx.Rows) error {
	return func(rows pgx.Rows) error {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		m[k] = v
		return nil
	}
}

// query queues a query and hands each of its rows to scan.
func (p *pipe) query(what string, scan func(pgx.Rows) error, sql string, args ...any) {
	p.batch.Queue(sql, args...).Fn = func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err == nil {
			for rows.Next() {
				if err = scan(rows); err != nil {
					break
				}
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
}

// flush sends what is queued in one round trip and runs the queued callbacks in order. It sends
// under the transaction's deadline; ctx, the caller's context the transaction's function holds,
// only stops it from sending when it has already ended. PostgreSQL not answering in time is an
// error wrapping rtm.ErrUnavailable.
func (p *pipe) flush(ctx context.Context) error {
	b := p.batch
	p.batch = &pgx.Batch{}
	if b.Len() == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return unavailable(p.conn.SendBatch(p.ctx, b).Close())
}

// inPipe runs fn as one pipelined transaction (see pipe), retrying it a few times when
// PostgreSQL reports a serialization failure, a deadlock or a unique violation from a concurrent
// insert of the same game. fn may run more than once: it must start from scratch each time.
// Once committed, the outbox rows it added are handed to Options.OnOutbox. The attempts share
// one operation timeout (unless ctx ends sooner); running out of it is an error wrapping
// rtm.ErrUnavailable.
func (s *Store) inPipe(ctx context.Context, fn func(p *pipe) error) error {
	ctx, cancel := bound(ctx, s.timeouts.Operation)
	defer cancel()
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if err = s.pipeOnce(ctx, fn); !retryable(err) {
			return err
		}
	}
	return err
}

// pipeOnce runs fn as one pipelined transaction: committed when fn returns nil and the final
// batch succeeds, rolled back otherwise. Once committed, the outbox rows it added are handed to
// Options.OnOutbox. It runs within the operation timeout, unless ctx ends sooner; running out of
// it, or not reaching PostgreSQL, is an error wrapping rtm.ErrUnavailable.
func (s *Store) pipeOnce(ctx context.Context, fn func(p *pipe) error) error {
	ctx, cancel := bound(ctx, s.timeouts.Operation)
	defer cancel()
	conn, err := s.pool.pgx.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquiring a postgres connection: %w", unavailable(err))
	}
	defer conn.Release() // a connection still inside a transaction is closed, not reused
	p := newPipe(ctx, conn)
	if err = fn(p); err == nil {
		p.batch.Queue("COMMIT")
		if err = p.flush(ctx); err == nil {
			if len(p.added) > 0 {
				s.onOutbox(p.added)
			}
			if s.onAnswered != nil {
				for _, q := range p.answered {
					s.onAnswered(q.Channel, q.RequestID)
				}
			}
			return nil
		}
	}
	// A connection that timed out is closed already; one that fn left in a transaction is
	// rolled back, even when ctx has ended, within the operation timeout.
	if conn.Conn().PgConn().TxStatus() != 'I' && !conn.Conn().IsClosed() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(5*time.Second, s.timeouts.Operation))
		_, _ = conn.Exec(rctx, "ROLLBACK")
		cancel()
	}
	return err
}

// retryable reports whether a transaction that failed with err is worth running again: a
// serialization failure, a deadlock, or a unique violation by a concurrent insert (not a game id
// that differs only in case from a recorded one's: that stays so).
func retryable(err error) bool {
	code := sqlState(err)
	return (code == "40001" || code == "40P01" || code == "23505") && !gameIDCaseTaken(err)
}

// sqlState returns the SQLSTATE code of the PostgreSQL error err wraps, or "" when it wraps none.
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// gameIDCaseIndex is migration 000004's unique index on lower(game_id): Docker's DNS does not
// tell game ids apart by case, so two such games' engines would share a name on the network.
const gameIDCaseIndex = "runtime_records_game_id_lower_idx"

// gameIDCaseTaken reports whether err is the refusal to record a game whose id differs only in
// case from a recorded game's.
func gameIDCaseTaken(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == gameIDCaseIndex
}
