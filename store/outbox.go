package store

import (
	"context"
	"fmt"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"

	"github.com/jackc/pgx/v5"
)

// RelayOutbox claims up to limit unsent entries in id order (rows another process holds are
// skipped), hands them to publish, and marks sent the first n it reports published, all in one
// transaction: a row is never handed to two publishers at once. It returns n. The claim travels
// with BEGIN and the marking with COMMIT: two round trips around publish.
func (s *Store) RelayOutbox(ctx context.Context, limit int, publish func(context.Context, []rtm.OutboxEntry) (int, error)) (int, error) {
	var sent int
	err := s.pipeOnce(ctx, func(p *pipe) error {
		sent = 0
		var entries []rtm.OutboxEntry
		p.query("claiming outbox rows", func(rows pgx.Rows) error {
			var e rtm.OutboxEntry
			err := rows.Scan(&e.ID, &e.Stream, &e.Fields)
			entries = append(entries, e)
			return err
		}, `SELECT id, stream, fields FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`, limit)
		if err := p.flush(ctx); err != nil {
			return err
		}
		if len(entries) == 0 {
			return nil
		}
		n, pubErr := publish(ctx, entries)
		if n > 0 {
			ids := make([]int64, n)
			for i := range ids {
				ids[i] = entries[i].ID
			}
			p.exec("marking outbox rows sent", `UPDATE outbox SET published_at = now() WHERE id = ANY($1)`, ids)
		}
		sent = n
		if pubErr != nil && n == 0 {
			return pubErr
		}
		return nil
	})
	return sent, err
}

// MarkSent marks outbox rows published (rows a publisher relayed straight from their commit,
// without claiming them).
func (s *Store) MarkSent(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, `UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL`, ids); err != nil {
		return fmt.Errorf("marking outbox rows sent: %w", err)
	}
	return nil
}

// OutboxBacklog returns how many entries wait to be published.
func (s *Store) OutboxBacklog(ctx context.Context) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting outbox backlog: %w", err)
	}
	return n, nil
}

// PruneOutbox deletes entries published more than a day ago, and answered requests older than
// RequestRetention: a job redelivered after that long is handled again.
func (s *Store) PruneOutbox(ctx context.Context) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM outbox WHERE published_at < now() - interval '1 day'`)
	if err != nil {
		return 0, fmt.Errorf("pruning outbox: %w", err)
	}
	req, err := s.pool.Exec(ctx, `DELETE FROM requests WHERE answered_at < now() - make_interval(secs => $1)`, RequestRetention.Seconds())
	if err != nil {
		return 0, fmt.Errorf("pruning requests: %w", err)
	}
	return tag.RowsAffected() + req.RowsAffected(), nil
}

// RequestRetention is how long answered requests are kept to recognise a redelivered job.
const RequestRetention = 7 * 24 * time.Hour

// OutboxEpoch names the current life of the database, for the publisher's idempotency markers:
// outbox ids start again from an older value after a restore from backup or in a re-created
// database, and a new row must not be taken for the one published under its id before. It is
// "<system identifier>-<timeline>-<database oid>": the system identifier changes when the cluster
// is created again (initdb, a logical dump restored elsewhere), the timeline when a backup is
// recovered to a point in time or a replica promoted, the oid when the database is re-created.
// Not covered: a file-system snapshot brought back without archive recovery keeps all three.
// A role without EXECUTE on pg_control_system() (some managed services) gets
// "db-<database oid>" alone. Each call asks the database; read it again after errors, since a
// fail-over changes it.
func (s *Store) OutboxEpoch(ctx context.Context) (string, error) {
	var epoch string
	err := s.pool.QueryRow(ctx, `SELECT c.system_identifier::text || '-' ||
	substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || '-' || d.oid::text
FROM pg_control_system() c, pg_database d WHERE d.datname = current_database()`).Scan(&epoch)
	if sqlState(err) == "42501" { // insufficient_privilege
		err = s.pool.QueryRow(ctx, `SELECT 'db-' || oid::text FROM pg_database WHERE datname = current_database()`).Scan(&epoch)
	}
	if err != nil {
		return "", fmt.Errorf("reading the database's outbox epoch: %w", err)
	}
	return epoch, nil
}
