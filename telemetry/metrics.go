package telemetry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	rtm "github.com/galaxy-platform/rtmanager"
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

// Metrics holds RTM's own instruments (the Docker adapter and the reconciler create theirs).
type Metrics struct {
	jobResults   metric.Int64Counter
	healthEvents metric.Int64Counter
	intents      metric.Int64Counter
	leases       metric.Int64Counter
	probes       metric.Int64Counter
	jobs         metric.Int64Counter
	answered     metric.Int64Counter
	// probeOK and probeFailed are the probe counter's two attribute sets, made once: the prober
	// counts 200 probes a second at 1,000 engines.
	probeOK, probeFailed metric.AddOption
}

// NewMetrics creates RTM's counters. It needs nothing else, so the store and the coordination
// can report to it from their construction; the gauges, which read them, come with
// ObserveGauges once they exist.
func NewMetrics(m metric.Meter) (*Metrics, error) {
	var errs []error
	c := func(name, desc string) metric.Int64Counter {
		ctr, err := m.Int64Counter(name, metric.WithDescription(desc))
		errs = append(errs, err)
		return ctr
	}
	x := &Metrics{
		jobResults:   c("rtmanager.job_results", "Job results published, by job type (start, stop) and outcome."),
		healthEvents: c("rtmanager.health_events", "Health events published, by event type."),
		intents:      c("rtmanager.notification_intents", "Notification intents published, by intent."),
		leases:       c("rtmanager.lease_acquisitions", "Per-game lease attempts, by result (acquired, contended, error)."),
		probes:       c("rtmanager.probe_results", "Active engine probes, by result (ok, failed)."),
		jobs:         c("rtmanager.jobs_handled", "Jobs answered at once by the consumers, by consumer and outcome."),
		answered:     c("rtmanager.jobs_answered", "Jobs answered, at once or by the reconciler, by consumer and outcome."),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("creating instruments: %w", err)
	}
	x.probeOK = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "ok")))
	x.probeFailed = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "failed")))
	x.zero()
	return x, nil
}

// ObserveGauges registers the gauges read at each scrape: records by status and the outbox
// backlog from counts, each job stream's lag from offsets (jobStreams names the Redis stream of
// each job kind).
func (x *Metrics) ObserveGauges(m metric.Meter, counts Counts, offsets Offsets, jobStreams map[rtm.JobKind]string) error {
	var errs []error
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
		return fmt.Errorf("creating gauges: %w", err)
	}
	consumers := map[string]string{}
	for k, stream := range jobStreams {
		consumers[string(k)] = stream
	}
	_, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		r := readGauges(ctx, counts, offsets, consumers)
		if r.byStatus != nil {
			for _, s := range rtm.Statuses {
				o.ObserveInt64(byStatus, r.byStatus[s], metric.WithAttributes(attribute.String("status", string(s))))
			}
		}
		if r.backlog != nil {
			o.ObserveInt64(backlog, *r.backlog)
		}
		for _, l := range r.lags {
			o.ObserveInt64(lag, l.n, metric.WithAttributes(attribute.String("consumer", l.consumer), attribute.String("stream", l.stream)))
		}
		return nil
	}, byStatus, backlog, lag)
	if err != nil {
		return fmt.Errorf("registering gauges: %w", err)
	}
	return nil
}

// GaugeReadTimeout bounds the PostgreSQL and Redis reads behind the gauges at each scrape, well
// inside Prometheus's default 10 s scrape timeout. A gauge whose read fails or times out is left
// out of that scrape (its series goes stale) rather than reported wrong.
const GaugeReadTimeout = 4 * time.Second

// gaugeReadings are what one scrape read for the gauges; nil or absent where a read failed.
type gaugeReadings struct {
	byStatus map[rtm.Status]int64
	backlog  *int64
	lags     []lagReading
}

type lagReading struct {
	consumer, stream string
	n                int64
}

// readGauges reads PostgreSQL and Redis side by side, within GaugeReadTimeout in all. The
// Prometheus exporter collects with a context that never ends, so without this bound a wedged
// PostgreSQL (or an exhausted pool) or Redis would hang /metrics; reading the two apart keeps one
// slow dependency from costing the other's gauges. A read still running at the deadline is
// abandoned (its goroutine ends with its own timeout) and its gauges are left out.
func readGauges(ctx context.Context, counts Counts, offsets Offsets, consumers map[string]string) gaugeReadings {
	ctx, cancel := context.WithTimeout(ctx, GaugeReadTimeout)
	defer cancel()
	pg := make(chan gaugeReadings, 1)
	go func() {
		var r gaugeReadings
		if n, err := counts.CountByStatus(ctx); err == nil {
			r.byStatus = n
			if r.byStatus == nil {
				r.byStatus = map[rtm.Status]int64{}
			}
		}
		if n, err := counts.OutboxBacklog(ctx); err == nil {
			r.backlog = &n
		}
		pg <- r
	}()
	rd := make(chan []lagReading, 1)
	go func() {
		var lags []lagReading
		for consumer, stream := range consumers {
			off, err := offsets.Offset(ctx, consumer)
			if err != nil {
				continue
			}
			if n, err := offsets.Lag(ctx, stream, off); err == nil {
				lags = append(lags, lagReading{consumer: consumer, stream: stream, n: n})
			}
		}
		rd <- lags
	}()
	var out gaugeReadings
	for pg != nil || rd != nil {
		select {
		case r := <-pg:
			out.byStatus, out.backlog, pg = r.byStatus, r.backlog, nil
		case l := <-rd:
			out.lags, rd = l, nil
		case <-ctx.Done():
			return out
		}
	}
	return out
}

// zero exports every known series of the counters at 0 from start-up, as controller-runtime does
// for its own: a series that first appears at 1 hides that first increment from rate() and
// increase(), and a panel over it shows "no data" instead of 0.
func (x *Metrics) zero() {
	ctx := context.Background()
	add := func(c metric.Int64Counter, kv ...attribute.KeyValue) {
		c.Add(ctx, 0, metric.WithAttributes(kv...))
	}
	outcomes := []rtm.Outcome{rtm.OutcomeSucceeded, rtm.OutcomeFailed}
	for _, o := range outcomes {
		for _, job := range []string{"start", "stop"} {
			add(x.jobResults, attribute.String(jobTypeLabel, job), attribute.String("outcome", string(o)))
		}
		for _, k := range []rtm.JobKind{rtm.StartJobs, rtm.StopJobs} {
			add(x.jobs, attribute.String("consumer", string(k)), attribute.String("outcome", string(o)))
			add(x.answered, attribute.String("consumer", string(k)), attribute.String("outcome", string(o)))
		}
	}
	for _, t := range []rtm.HealthEventType{rtm.EventContainerStarted, rtm.EventContainerExited, rtm.EventContainerOOM,
		rtm.EventContainerDisappeared, rtm.EventProbeFailed, rtm.EventProbeRecovered, rtm.EventInspectUnhealthy} {
		add(x.healthEvents, attribute.String("event_type", string(t)))
	}
	for _, c := range []rtm.ErrorCode{rtm.CodeImagePullFailed, rtm.CodeContainerStartFailed, rtm.CodeStartConfigInvalid} {
		add(x.intents, attribute.String("intent", string(rtm.IntentFor(c))))
	}
	for _, r := range []string{"acquired", "contended", "error"} {
		add(x.leases, attribute.String("result", r))
	}
	for _, r := range []string{"ok", "failed"} {
		add(x.probes, attribute.String("result", r))
	}
}

// jobTypeLabel is the job results' label for the result's job field (start, stop). It is not
// "job": Prometheus reserves that label for the scrape job, so a "job" label from the target is
// renamed exported_job (or, with honor_labels, replaces the scrape job of the series).
const jobTypeLabel = "job_type"

// Published counts an entry the publisher relayed (job results by job type and outcome, health events
// by type, intents by intent): counted once, when it reaches its stream.
func (x *Metrics) Published(ctx context.Context, e rtm.OutboxEntry) {
	switch e.Stream {
	case rtm.StreamJobResults:
		x.jobResults.Add(ctx, 1, metric.WithAttributes(attribute.String(jobTypeLabel, e.Field("job")), attribute.String("outcome", e.Field("outcome"))))
	case rtm.StreamHealthEvents:
		x.healthEvents.Add(ctx, 1, metric.WithAttributes(attribute.String("event_type", e.Field("event_type"))))
	case rtm.StreamNotificationIntents:
		x.intents.Add(ctx, 1, metric.WithAttributes(attribute.String("intent", e.Field("intent"))))
	}
}

// Answered counts the jobs answered by the rows of one commit (its job results; other rows are
// ignored), by consumer (startjobs, stopjobs) and outcome: once per answer, when it is recorded,
// whether or when it is published.
func (x *Metrics) Answered(ctx context.Context, rows []rtm.OutboxEntry) {
	for _, r := range rows {
		if r.Stream != rtm.StreamJobResults {
			continue
		}
		x.answered.Add(ctx, 1, metric.WithAttributes(attribute.String("consumer", string(rtm.KindOfJob(r.Field("job")))),
			attribute.String("outcome", r.Field("outcome"))))
	}
}

// JobHandled counts a job the consumer answered at once.
func (x *Metrics) JobHandled(ctx context.Context, kind rtm.JobKind, outcome string) {
	x.jobs.Add(ctx, 1, metric.WithAttributes(attribute.String("consumer", string(kind)), attribute.String("outcome", outcome)))
}

// StreamLag is unused: lag is measured at scrape time.
func (x *Metrics) StreamLag(string, int64) {}

// ProbeResult counts one active probe.
func (x *Metrics) ProbeResult(ctx context.Context, ok bool) {
	if ok {
		x.probes.Add(ctx, 1, x.probeOK)
	} else {
		x.probes.Add(ctx, 1, x.probeFailed)
	}
}

// LeaseAttempt counts a per-game lease attempt by result (acquired, contended, error).
func (x *Metrics) LeaseAttempt(ctx context.Context, result string) {
	x.leases.Add(ctx, 1, metric.WithAttributes(attribute.String("result", result)))
}
