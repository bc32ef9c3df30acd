package runtime

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Ops records a runtime's operations the way CONTRACT §7 asks of every runtime call: a span
// <prefix>.<op> each, and a sample of LatencyMetric with the attributes op and outcome. The
// Docker adapter and the Kubernetes one (runtime/kube) record through it, so that dashboards
// and the runbook's start-up check read one histogram whichever runtime runs the games.
type Ops struct {
	prefix  string
	tracer  trace.Tracer
	latency metric.Float64Histogram
}

// NewOps returns a recorder of spans named prefix.<op>; a nil tracer or meter records nothing
// of that kind. It fails only when the histogram cannot be created.
func NewOps(prefix string, tracer trace.Tracer, meter metric.Meter) (*Ops, error) {
	if tracer == nil {
		tracer = tracenoop.NewTracerProvider().Tracer("github.com/galaxy-platform/rtmanager/runtime")
	}
	if meter == nil {
		meter = metricnoop.NewMeterProvider().Meter("github.com/galaxy-platform/rtmanager/runtime")
	}
	latency, err := meter.Float64Histogram(LatencyMetric,
		metric.WithUnit("s"),
		metric.WithDescription("Latency of the runtime's calls (Docker API calls, Kubernetes operations), by operation and outcome."),
		metric.WithExplicitBucketBoundaries(latencyBuckets...),
	)
	if err != nil {
		return nil, fmt.Errorf("creating %s histogram: %w", LatencyMetric, err)
	}
	return &Ops{prefix: prefix, tracer: tracer, latency: latency}, nil
}

// Op is one operation under way.
type Op struct {
	ops    *Ops
	name   string
	parent context.Context // the caller's context
	ctx    context.Context // the span's
	span   trace.Span
	start  time.Time
}

// Start begins the operation name: its span carries attrs.
func (o *Ops) Start(ctx context.Context, name string, attrs ...attribute.KeyValue) *Op {
	sctx, span := o.tracer.Start(ctx, o.prefix+"."+name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return &Op{ops: o, name: name, parent: ctx, ctx: sctx, span: span, start: time.Now()}
}

// Context is the operation's context: the caller's, carrying the span.
func (op *Op) Context() context.Context { return op.ctx }

// Span is the operation's span, for attributes learnt on the way.
func (op *Op) Span() trace.Span { return op.span }

// Finish records the operation's latency and outcome (error when err is not nil) and ends its
// span. It returns err unchanged.
func (op *Op) Finish(err error) error {
	outcome := "ok"
	if err != nil {
		outcome = "error"
		op.span.RecordError(err)
		op.span.SetStatus(codes.Error, err.Error())
	}
	op.ops.latency.Record(context.WithoutCancel(op.parent), time.Since(op.start).Seconds(),
		metric.WithAttributes(attribute.String("op", op.name), attribute.String("outcome", outcome)))
	op.span.End()
	return err
}
