package telemetry

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/sources"
	"github.com/galaxy-platform/rtmanager/store"
)

// Counts is what the gauges read at each scrape.
type Counts interface {
	CountByStatus(ctx context.Context) (map[rtm.Status]int64, error)
	OutboxBacklog(ctx context.Context) (int64, error)
}

// Offsets is what the stream-lag gauge reads at each scrape.
type Offsets interface {
	Offset(ctx context.Context, consumer string) (string, error)
	Lag(ctx context.Context, stream, after string) (int64, error)
}

// Leaser is the per-game lease, as the reconciler uses it.
type Leaser interface {
	Acquire(ctx context.Context, gameID string) (context.Context, func(), error)
}

// Metrics holds RTM's own instruments (the Docker adapter and the reconciler create theirs).
type Metrics struct {
	jobResults   metric.Int64Counter
	healthEvents metric.Int64Counter
	intents      metric.Int64Counter
	leases       metric.Int64Counter
	probes       metric.Int64Counter
	jobs         metric.Int64Counter
}

// NewMetrics creates the instruments and registers the gauges' callbacks.
func NewMetrics(m metric.Meter, counts Counts, offsets Offsets, cfg config.Config) (*Metrics, error) {
	var errs []error
	c := func(name, desc string) metric.Int64Counter {
		ctr, err := m.Int64Counter(name, metric.WithDescription(desc))
		errs = append(errs, err)
		return ctr
	}
	x := &Metrics{
		jobResults:   c("rtmanager.job_results", "Job results published, by job and outcome."),
		healthEvents: c("rtmanager.health_events", "Health events published, by event type."),
		intents:      c("rtmanager.notification_intents", "Notification intents published, by intent."),
		leases:       c("rtmanager.lease_acquisitions", "Per-game lease attempts, by result (acquired, contended, error)."),
		probes:       c("rtmanager.probe_results", "Active engine probes, by result (ok, failed)."),
		jobs:         c("rtmanager.jobs_handled", "Jobs answered at once by the consumers, by consumer and outcome."),
	}
	byStatus, err := m.Int64ObservableGauge("rtmanager.runtime_records_by_status",
		metric.WithDescription("Runtime records by status; every status is reported, also at zero."))
	errs = append(errs, err)
	backlog, err := m.Int64ObservableGauge("rtmanager.publisher_backlog",
		metric.WithDescription("Outbox entries not yet published to Redis."))
	errs = append(errs, err)
	lag, err := m.Int64ObservableGauge("rtmanager.stream_lag",
		metric.WithDescription("Entries of a job stream after the consumer's persisted offset."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("creating instruments: %w", err)
	}
	consumers := map[string]string{string(sources.StartJobs): cfg.StartJobsStream, string(sources.StopJobs): cfg.StopJobsStream}
	_, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		if n, err := counts.CountByStatus(ctx); err == nil {
			for _, s := range rtm.Statuses {
				o.ObserveInt64(byStatus, n[s], metric.WithAttributes(attribute.String("status", string(s))))
			}
		}
		if n, err := counts.OutboxBacklog(ctx); err == nil {
			o.ObserveInt64(backlog, n)
		}
		for consumer, stream := range consumers {
			off, err := offsets.Offset(ctx, consumer)
			if err != nil {
				continue
			}
			if n, err := offsets.Lag(ctx, stream, off); err == nil {
				o.ObserveInt64(lag, n, metric.WithAttributes(attribute.String("consumer", consumer), attribute.String("stream", stream)))
			}
		}
		return nil
	}, byStatus, backlog, lag)
	if err != nil {
		return nil, fmt.Errorf("registering gauges: %w", err)
	}
	return x, nil
}

// Published counts an entry the publisher relayed (job results by job and outcome, health events
// by type, intents by intent): counted once, when it reaches its stream.
func (x *Metrics) Published(ctx context.Context, stream string, fields []string) {
	f := map[string]string{}
	for i := 0; i+1 < len(fields); i += 2 {
		f[fields[i]] = fields[i+1]
	}
	switch stream {
	case store.StreamJobResults:
		x.jobResults.Add(ctx, 1, metric.WithAttributes(attribute.String("job", f["job"]), attribute.String("outcome", f["outcome"])))
	case store.StreamHealthEvents:
		x.healthEvents.Add(ctx, 1, metric.WithAttributes(attribute.String("event_type", f["event_type"])))
	case store.StreamNotificationIntents:
		x.intents.Add(ctx, 1, metric.WithAttributes(attribute.String("intent", f["intent"])))
	}
}

// JobHandled counts a job the consumer answered at once.
func (x *Metrics) JobHandled(ctx context.Context, kind sources.JobKind, outcome string) {
	x.jobs.Add(ctx, 1, metric.WithAttributes(attribute.String("consumer", string(kind)), attribute.String("outcome", outcome)))
}

// StreamLag is unused: lag is measured at scrape time.
func (x *Metrics) StreamLag(string, int64) {}

// ProbeResult counts one active probe.
func (x *Metrics) ProbeResult(ctx context.Context, ok bool) {
	r := "ok"
	if !ok {
		r = "failed"
	}
	x.probes.Add(ctx, 1, metric.WithAttributes(attribute.String("result", r)))
}

// Leaser wraps l so that every attempt is counted by result.
func (x *Metrics) Leaser(l Leaser) Leaser { return countingLeaser{l: l, c: x.leases} }

type countingLeaser struct {
	l Leaser
	c metric.Int64Counter
}

func (c countingLeaser) Acquire(ctx context.Context, gameID string) (context.Context, func(), error) {
	lctx, release, err := c.l.Acquire(ctx, gameID)
	r := "acquired"
	switch {
	case errors.Is(err, rtm.ErrConflict):
		r = "contended"
	case err != nil:
		r = "error"
	}
	c.c.Add(ctx, 1, metric.WithAttributes(attribute.String("result", r)))
	return lctx, release, err
}
