// Package publisher is the publisher worker: it relays outbox rows (job results, health events,
// notification intents) to their Redis streams in id order, each exactly once. It is woken when
// a transaction adds rows and also polls, for rows another RTM process added.
package publisher

import (
	"context"
	"log/slog"
	"time"

	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/store"
)

// Outbox is the PostgreSQL side.
type Outbox interface {
	RelayOutbox(ctx context.Context, limit int, publish func(context.Context, []store.OutboxEntry) (int, error)) (int, error)
	PruneOutbox(ctx context.Context) (int64, error)
}

// Streams publishes entries to Redis idempotently.
type Streams interface {
	Publish(ctx context.Context, entries []coord.OutboxEntry, sentTTL time.Duration) (int, error)
}

// Observer is told what was published, for telemetry.
type Observer interface {
	Published(ctx context.Context, stream string, fields []string)
}

// Publisher relays the outbox.
type Publisher struct {
	Outbox   Outbox
	Redis    Streams
	Names    map[string]string // logical stream → Redis stream name
	Log      *slog.Logger
	Observer Observer
	// Poll is the fallback polling period (default 250ms).
	Poll  time.Duration
	Batch int

	wake chan struct{}
}

// New returns a Publisher; call Wake after committing outbox rows.
func New(p Publisher) *Publisher {
	p.wake = make(chan struct{}, 1)
	if p.Poll <= 0 {
		p.Poll = 250 * time.Millisecond
	}
	if p.Batch <= 0 {
		p.Batch = 256
	}
	return &p
}

// Wake asks the publisher to relay now. It never blocks.
func (p *Publisher) Wake() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends, then makes one last attempt to flush what is queued.
func (p *Publisher) Run(ctx context.Context) error {
	poll := time.NewTicker(p.Poll)
	defer poll.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	var failing bool
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = p.drain(fctx)
			cancel()
			return nil
		case <-p.wake:
		case <-poll.C:
		case <-prune.C:
			if n, err := p.Outbox.PruneOutbox(ctx); err == nil && n > 0 {
				p.Log.Debug("pruned published outbox rows", "worker", "publisher", "rows", n)
			}
			continue
		}
		err := p.drain(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			p.Log.Warn("publishing failed; entries stay queued", "worker", "publisher", "error", err)
		case err == nil && failing:
			failing = false
			p.Log.Info("publishing resumed", "worker", "publisher")
		}
	}
}

// drain relays batches until the outbox is empty or an error stops it.
func (p *Publisher) drain(ctx context.Context) error {
	for {
		n, err := p.Outbox.RelayOutbox(ctx, p.Batch, p.publish)
		if err != nil {
			return err
		}
		if n < p.Batch {
			return nil
		}
	}
}

func (p *Publisher) publish(ctx context.Context, entries []store.OutboxEntry) (int, error) {
	out := make([]coord.OutboxEntry, len(entries))
	for i, e := range entries {
		name := p.Names[e.Stream]
		if name == "" {
			name = e.Stream
		}
		out[i] = coord.OutboxEntry{ID: e.ID, Stream: name, Fields: e.Fields}
	}
	n, err := p.Redis.Publish(ctx, out, 24*time.Hour)
	if p.Observer != nil {
		for _, e := range entries[:n] {
			p.Observer.Published(ctx, e.Stream, e.Fields)
		}
	}
	return n, err
}
