// Package publisher is the publisher worker: it relays outbox rows (job results, health events,
// notification intents) to their Redis streams, each exactly once. A transaction that adds rows
// offers them to the publisher as it commits, and the publisher relays them straight away,
// without reading them back; it also polls the outbox, in id order, for rows another RTM process
// added and for rows a failed relay left behind.
package publisher

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/store"
)

// Outbox is the PostgreSQL side.
type Outbox interface {
	RelayOutbox(ctx context.Context, limit int, publish func(context.Context, []store.OutboxEntry) (int, error)) (int, error)
	MarkSent(ctx context.Context, ids []int64) error
	PruneOutbox(ctx context.Context) (int64, error)
}

// Streams publishes entries to Redis idempotently: for each leading entry it got through, it
// reports whether the entry was added now (false: it had been published before).
type Streams interface {
	Publish(ctx context.Context, entries []coord.OutboxEntry, sentTTL time.Duration) ([]bool, error)
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
	// Poll is the period of the outbox poll (default 250ms).
	Poll  time.Duration
	Batch int

	wake    chan struct{}
	offered *offers
	failing bool
}

// offers are the rows offered and not yet relayed.
type offers struct {
	mu   sync.Mutex
	rows []store.OutboxEntry
}

// sentTTL is how long a published entry's marker key outlives it: a row relayed again within it
// (a crash between publishing and marking it sent) is not added twice.
const sentTTL = 24 * time.Hour

// New returns a Publisher; hand it committed outbox rows with Offer.
func New(p Publisher) *Publisher {
	p.wake, p.offered = make(chan struct{}, 1), &offers{}
	if p.Poll <= 0 {
		p.Poll = 250 * time.Millisecond
	}
	if p.Batch <= 0 {
		p.Batch = 256
	}
	return &p
}

// Offer hands the publisher outbox rows that have just been committed, to relay at once. It never
// blocks. Rows offered and never relayed (Redis down, the process ending) are still in the outbox
// and the poll relays them.
func (p *Publisher) Offer(entries []store.OutboxEntry) {
	p.offered.mu.Lock()
	p.offered.rows = append(p.offered.rows, entries...)
	p.offered.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends, then makes one last attempt to flush what is queued. It polls the
// outbox once at the start, for rows left from before (another process, a previous run).
func (p *Publisher) Run(ctx context.Context) error {
	poll := time.NewTicker(p.Poll)
	defer poll.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	p.report(ctx, p.drain(ctx))
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = p.relayOffered(fctx)
			_ = p.drain(fctx)
			cancel()
			return nil
		case <-p.wake:
			p.report(ctx, p.relayOffered(ctx))
		case <-poll.C:
			p.report(ctx, p.drain(ctx))
		case <-prune.C:
			if n, err := p.Outbox.PruneOutbox(ctx); err == nil && n > 0 {
				p.Log.Debug("pruned published outbox rows", "worker", "publisher", "rows", n)
			}
		}
	}
}

// report logs when relaying starts failing and when it works again, once each.
func (p *Publisher) report(ctx context.Context, err error) {
	switch {
	case err != nil && ctx.Err() == nil && !p.failing:
		p.failing = true
		p.Log.Warn("publishing failed; entries stay queued", "worker", "publisher", "error", err)
	case err == nil && p.failing:
		p.failing = false
		p.Log.Info("publishing resumed", "worker", "publisher")
	}
}

// relayOffered publishes the offered rows in id order and marks those it got through sent. Rows
// it could not publish or mark stay unsent in the outbox, for the poll.
func (p *Publisher) relayOffered(ctx context.Context) error {
	p.offered.mu.Lock()
	entries := p.offered.rows
	p.offered.rows = nil
	p.offered.mu.Unlock()
	if len(entries) == 0 {
		return nil
	}
	slices.SortFunc(entries, func(a, b store.OutboxEntry) int { return cmp.Compare(a.ID, b.ID) })
	n, err := p.publish(ctx, entries)
	if n > 0 {
		ids := make([]int64, n)
		for i := range ids {
			ids[i] = entries[i].ID
		}
		if merr := p.Outbox.MarkSent(ctx, ids); err == nil {
			err = merr
		}
	}
	return err
}

// drain relays outbox batches in id order until the outbox is empty or an error stops it.
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

// publish adds entries to their streams and returns how many leading ones got through; the
// observer hears of those added now, so each entry is counted once however often it is relayed.
func (p *Publisher) publish(ctx context.Context, entries []store.OutboxEntry) (int, error) {
	out := make([]coord.OutboxEntry, len(entries))
	for i, e := range entries {
		name := p.Names[e.Stream]
		if name == "" {
			name = e.Stream
		}
		out[i] = coord.OutboxEntry{ID: e.ID, Stream: name, Fields: e.Fields}
	}
	added, err := p.Redis.Publish(ctx, out, sentTTL)
	if p.Observer != nil {
		for i, e := range entries[:len(added)] {
			if added[i] {
				p.Observer.Published(ctx, e.Stream, e.Fields)
			}
		}
	}
	return len(added), err
}
