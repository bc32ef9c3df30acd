package telemetry_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/telemetry"
)

// wedgedCounts is a PostgreSQL that never answers: it returns only when the context ends.
type wedgedCounts struct{}

func (wedgedCounts) CountByStatus(ctx context.Context) (map[rtm.Status]int64, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (wedgedCounts) OutboxBacklog(ctx context.Context) (int64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// deafOffsets is a Redis client that ignores the context and gives up after its own timeout, as
// go-redis does without ContextTimeoutEnabled.
type deafOffsets struct{ wait time.Duration }

func (d deafOffsets) Offset(context.Context, string) (string, error) {
	time.Sleep(d.wait)
	return "", context.DeadlineExceeded
}

func (d deafOffsets) Lag(context.Context, string, string) (int64, error) {
	time.Sleep(d.wait)
	return 0, context.DeadlineExceeded
}

// collected is one collection of RTM's metrics: the series of each instrument (as attribute sets),
// the counters' values by instrument name and series, and how long the collection took.
type collected struct {
	series map[string][]attribute.Set
	values map[string]int64
	took   time.Duration
}

func seriesKey(name string, kv ...attribute.KeyValue) string {
	s := attribute.NewSet(kv...)
	return name + s.Encoded(attribute.DefaultEncoder())
}

// collect builds RTM's metrics on a private provider, runs record on them and collects once.
func collect(t *testing.T, counts telemetry.Counts, offsets telemetry.Offsets, record ...func(*telemetry.Metrics)) collected {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	m, err := telemetry.NewMetrics(mp.Meter("rtmanager"))
	if err == nil {
		err = m.ObserveGauges(mp.Meter("rtmanager"), counts, offsets,
			map[rtm.JobKind]string{rtm.StartJobs: "runtime:start_jobs", rtm.StopJobs: "runtime:stop_jobs"})
	}
	if err != nil {
		t.Error(err)
		return collected{}
	}
	for _, f := range record {
		f(m)
	}
	var rm metricdata.ResourceMetrics
	start := time.Now()
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Error(err)
	}
	c := collected{series: map[string][]attribute.Set{}, values: map[string]int64{}, took: time.Since(start)}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					c.series[m.Name] = append(c.series[m.Name], p.Attributes)
					c.values[seriesKey(m.Name, p.Attributes.ToSlice()...)] = p.Value
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					c.series[m.Name] = append(c.series[m.Name], p.Attributes)
				}
			}
		}
	}
	return c
}

// TestGaugesWithAWedgedDependency: a scrape never waits much longer than GaugeReadTimeout, and a
// wedged PostgreSQL costs only its own gauges, a wedged Redis only the stream lag.
func TestGaugesWithAWedgedDependency(t *testing.T) {
	limit := telemetry.GaugeReadTimeout + 2*time.Second
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c := collect(t, wedgedCounts{}, fakeOffsets{})
		series, took := c.series, c.took
		if took > limit {
			t.Errorf("wedged PostgreSQL: the collection took %s", took)
		}
		if n := len(series["rtmanager.runtime_records_by_status"]) + len(series["rtmanager.publisher_backlog"]); n != 0 {
			t.Errorf("wedged PostgreSQL: %d PostgreSQL gauge series reported", n)
		}
		if n := len(series["rtmanager.stream_lag"]); n != 2 {
			t.Errorf("wedged PostgreSQL: %d stream lag series, want 2", n)
		}
	}()
	go func() {
		defer wg.Done()
		c := collect(t, fakeCounts{}, deafOffsets{wait: 2 * telemetry.GaugeReadTimeout})
		series, took := c.series, c.took
		if took > limit {
			t.Errorf("wedged Redis: the collection took %s", took)
		}
		if n := len(series["rtmanager.runtime_records_by_status"]); n != len(rtm.Statuses) {
			t.Errorf("wedged Redis: %d records-by-status series, want %d", n, len(rtm.Statuses))
		}
		if n := len(series["rtmanager.publisher_backlog"]); n != 1 {
			t.Errorf("wedged Redis: %d backlog series, want 1", n)
		}
		if n := len(series["rtmanager.stream_lag"]); n != 0 {
			t.Errorf("wedged Redis: %d stream lag series reported", n)
		}
	}()
	wg.Wait()
}

// TestCountersStartAtZero: every known series of the counters exists before its first event, and
// no series carries a "job" label (Prometheus's own).
func TestCountersStartAtZero(t *testing.T) {
	series := collect(t, fakeCounts{}, fakeOffsets{}).series
	for name, want := range map[string]int{
		"rtmanager.job_results":          4,
		"rtmanager.jobs_handled":         4,
		"rtmanager.jobs_answered":        4,
		"rtmanager.health_events":        7,
		"rtmanager.notification_intents": 3,
		"rtmanager.lease_acquisitions":   3,
		"rtmanager.probe_results":        2,
	} {
		if got := len(series[name]); got != want {
			t.Errorf("%s: %d series at start-up, want %d", name, got, want)
		}
	}
	for name, sets := range series {
		for _, s := range sets {
			if _, ok := s.Value("job"); ok {
				t.Errorf("%s has a series with a job label: %v", name, s.ToSlice())
			}
		}
	}
}

// TestPublishedJobResultLabels: a published job result is counted under job_type and outcome.
func TestPublishedJobResultLabels(t *testing.T) {
	c := collect(t, fakeCounts{}, fakeOffsets{}, func(m *telemetry.Metrics) {
		m.Published(context.Background(), rtm.OutboxEntry{Stream: rtm.StreamJobResults, Fields: []string{"request_id", "r1", "job", "stop", "game_id", "g1", "outcome", "failed"}})
	})
	key := seriesKey("rtmanager.job_results", attribute.String("job_type", "stop"), attribute.String("outcome", "failed"))
	if got := c.values[key]; got != 1 {
		t.Errorf(`job_results{job_type="stop",outcome="failed"} = %d, want 1 (values: %v)`, got, c.values)
	}
}

// TestAnswered_countsJobResultsByConsumerAndOutcome: the job results of a commit are counted by
// consumer and outcome; its other rows are not.
func TestAnswered_countsJobResultsByConsumerAndOutcome(t *testing.T) {
	c := collect(t, fakeCounts{}, fakeOffsets{}, func(m *telemetry.Metrics) {
		m.Answered(context.Background(), []rtm.OutboxEntry{
			{Stream: rtm.StreamJobResults, Fields: []string{"request_id", "r1", "job", "stop", "outcome", "failed"}},
			{Stream: rtm.StreamJobResults, Fields: []string{"request_id", "r2", "job", "start", "outcome", "succeeded"}},
			{Stream: rtm.StreamHealthEvents, Fields: []string{"event_type", "probe_failed"}},
		})
	})
	for _, want := range []struct{ consumer, outcome string }{{"stopjobs", "failed"}, {"startjobs", "succeeded"}} {
		key := seriesKey("rtmanager.jobs_answered", attribute.String("consumer", want.consumer), attribute.String("outcome", want.outcome))
		if got := c.values[key]; got != 1 {
			t.Errorf("jobs_answered{consumer=%q,outcome=%q} = %d, want 1 (values: %v)", want.consumer, want.outcome, got, c.values)
		}
	}
}
