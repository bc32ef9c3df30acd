// Package publisher is the publisher worker: it relays outbox rows (job results, health events,
// notification intents) to their Redis streams, each exactly once. A transaction that adds rows
// offers them to the publisher as it commits, and the publisher relays them straight away,
// without reading them back; it also polls the outbox, in id order, for rows another RTM process
// added and for rows a failed relay left behind.
//
// The entries of one stream keep the outbox's id order, as far as this process's rows go: the
// offered rows are relayed in id order, and once a relay of offered rows has failed (or offered
// rows were dropped because too many waited) no offered row is relayed until a poll has emptied
// the outbox in id order, so a later row never overtakes an earlier one left behind.
package publisher

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Outbox is the PostgreSQL side.
type Outbox interface {
	OutboxEpoch(ctx context.Context) (string, error)
	RelayOutbox(ctx context.Context, limit int, publish func(context.Context, []rtm.OutboxEntry) (int, error)) (int, error)
	MarkSent(ctx context.Context, ids []int64) error
	PruneOutbox(ctx context.Context) (int64, error)
}

// Streams publishes entries to Redis idempotently, once per outbox id of the database epoch: for
// each leading entry it got through, it reports whether the entry was added now (false: it had
// been published before).
type Streams interface {
	Publish(ctx context.Context, epoch string, entries []rtm.OutboxEntry, sentTTL time.Duration) ([]bool, error)
}

// Observer is told what was published, for telemetry.
type Observer interface {
	Published(ctx context.Context, e rtm.OutboxEntry)
}

// Publisher relays the outbox.
type Publisher struct {
	Outbox   Outbox
	Redis    Streams
	Names    map[string]string // logical stream → Redis stream name
	Log      *slog.Logger
	Observer Observer
	// Poll is the period of the outbox poll while the publisher is behind (default 250ms): a
	// relay failed, offered rows were dropped, or the last poll found rows nobody offered it.
	Poll time.Duration
	// IdlePoll is its period otherwise (default 1s): every commit of this process offers its
	// rows, so an idle poll only looks for what another process left.
	IdlePoll time.Duration
	Batch    int

	wake    chan struct{}
	offered *offers
	failing bool
	found   bool // the last poll relayed rows nobody offered
	// epoch is the database's outbox epoch, read by every poll; nothing is published before the
	// first poll has read it.
	epoch string
}

// offers are the rows offered and not yet relayed.
type offers struct {
	mu   sync.Mutex
	rows []rtm.OutboxEntry
	// catchUp is set when offered rows were left unpublished (a failed relay, rows dropped): from
	// then on offered rows wait until a poll has emptied the outbox, so as not to overtake them.
	catchUp bool
	// drops counts the times the queued rows were dropped.
	drops int
}

// maxOffered bounds the offered rows kept in memory (Redis down for long); beyond it they are
// dropped, and the poll relays them from the outbox.
const maxOffered = 4096

// sentTTL is how long a published entry's marker key outlives it: a row relayed again within it
// (a crash between publishing and marking it sent) is not added twice.
const sentTTL = 24 * time.Hour

// New returns a Publisher; hand it committed outbox rows with Offer.
func New(p Publisher) *Publisher {
	p.wake, p.offered = make(chan struct{}, 1), &offers{}
	if p.Poll <= 0 {
		p.Poll = 250 * time.Millisecond
	}
	if p.IdlePoll <= 0 {
		p.IdlePoll = time.Second
	}
	p.IdlePoll = max(p.IdlePoll, p.Poll)
	if p.Batch <= 0 {
		p.Batch = 256
	}
	return &p
}

// Offer hands the publisher outbox rows that have just been committed, to relay at once. It never
// blocks. Rows offered and never relayed (Redis down, the process ending) are still in the outbox
// and the poll relays them.
func (p *Publisher) Offer(entries []rtm.OutboxEntry) {
	p.offered.mu.Lock()
	if len(p.offered.rows)+len(entries) > maxOffered {
		p.offered.rows, p.offered.catchUp = nil, true
		p.offered.drops++
	} else {
		p.offered.rows = append(p.offered.rows, entries...)
	}
	p.offered.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends, then makes one last attempt to flush what is queued. It polls the
// outbox once at the start, for rows left from before (another process, a previous run), then
// every Poll while it is behind and every IdlePoll otherwise.
func (p *Publisher) Run(ctx context.Context) error {
	p.report(ctx, p.poll(ctx))
	poll := time.NewTimer(p.period())
	defer poll.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = p.poll(fctx)
			cancel()
			return nil
		case <-p.wake:
			if tried, err := p.relayOffered(ctx); tried {
				p.report(ctx, err)
				if err != nil {
					poll.Reset(p.Poll) // behind from now on: catch up soon
				}
			}
		case <-poll.C:
			p.report(ctx, p.poll(ctx))
			poll.Reset(p.period())
		case <-prune.C:
			if n, err := p.Outbox.PruneOutbox(ctx); err == nil && n > 0 {
				p.Log.Debug("pruned published outbox rows", "worker", "publisher", "rows", n)
			}
		}
	}
}

// period is how long until the next poll: Poll while behind, IdlePoll otherwise.
func (p *Publisher) period() time.Duration {
	p.offered.mu.Lock()
	behind := p.offered.catchUp
	p.offered.mu.Unlock()
	if behind || p.failing || p.found || p.epoch == "" {
		return p.Poll
	}
	return p.IdlePoll
}

// poll reads the database's epoch, relays the outbox in id order until it is empty, and then,
// offered rows being safe to relay again, the offered rows. It stops at the first error.
func (p *Publisher) poll(ctx context.Context) error {
	epoch, err := p.Outbox.OutboxEpoch(ctx)
	switch {
	case err != nil && p.epoch == "":
		return err
	case err == nil && epoch != p.epoch:
		if p.epoch != "" {
			p.Log.Info("database epoch changed; outbox ids count anew", "worker", "publisher", "from", p.epoch, "to", epoch)
		}
		p.epoch = epoch
	}
	p.offered.mu.Lock()
	drops := p.offered.drops
	p.offered.mu.Unlock()
	n, err := p.drain(ctx)
	p.found = n > 0
	if err != nil {
		return err
	}
	p.offered.mu.Lock()
	if p.offered.drops == drops { // rows dropped meanwhile may have been committed after the claim
		p.offered.catchUp = false
	}
	p.offered.mu.Unlock()
	_, err = p.relayOffered(ctx)
	return err
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
// it could not publish stay unsent in the outbox, and offered rows wait for the poll from then on;
// rows it could not mark are published and the poll marks them. It reports whether it tried:
// while catching up, or before the first poll read the epoch, it leaves the rows queued.
func (p *Publisher) relayOffered(ctx context.Context) (bool, error) {
	p.offered.mu.Lock()
	if p.offered.catchUp || p.epoch == "" {
		p.offered.mu.Unlock()
		return false, nil
	}
	entries := p.offered.rows
	p.offered.rows = nil
	p.offered.mu.Unlock()
	if len(entries) == 0 {
		return false, nil
	}
	slices.SortFunc(entries, func(a, b rtm.OutboxEntry) int { return cmp.Compare(a.ID, b.ID) })
	n, err := p.publish(ctx, entries)
	if err != nil {
		p.offered.mu.Lock()
		p.offered.catchUp = true
		p.offered.mu.Unlock()
	}
	if n > 0 {
		ids := make([]int64, n)
		for i := range ids {
			ids[i] = entries[i].ID
		}
		if merr := p.Outbox.MarkSent(ctx, ids); err == nil {
			err = merr
		}
	}
	return true, err
}

// drain relays outbox batches in id order until the outbox is empty or an error stops it (the
// error of the publishing too, even when some rows of the batch got through), and returns how
// many rows it claimed.
func (p *Publisher) drain(ctx context.Context) (int, error) {
	total := 0
	for {
		var pubErr error
		n, err := p.Outbox.RelayOutbox(ctx, p.Batch, func(ctx context.Context, entries []rtm.OutboxEntry) (int, error) {
			n, err := p.publish(ctx, entries)
			pubErr = err
			return n, err
		})
		total += n
		if err == nil {
			err = pubErr
		}
		if err != nil {
			return total, err
		}
		if n < p.Batch {
			return total, nil
		}
	}
}

// publish adds entries to their streams and returns how many leading ones got through; the
// observer hears of those added now, so each entry is counted once however often it is relayed.
func (p *Publisher) publish(ctx context.Context, entries []rtm.OutboxEntry) (int, error) {
	out := make([]rtm.OutboxEntry, len(entries))
	for i, e := range entries {
		name := p.Names[e.Stream]
		if name == "" {
			name = e.Stream
		}
		out[i] = rtm.OutboxEntry{ID: e.ID, Stream: name, Fields: e.Fields}
	}
	added, err := p.Redis.Publish(ctx, p.epoch, out, sentTTL)
	if p.Observer != nil {
		for i, e := range entries[:len(added)] {
			if added[i] {
				p.Observer.Published(ctx, e)
			}
		}
	}
	return len(added), err
}
