package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	rtm "github.com/galaxy-platform/rtmanager"
)

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
