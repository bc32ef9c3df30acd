// Package runtime is Runtime Manager's Docker adapter: it creates, starts, stops, removes,
// inspects and lists game containers, pulls engine images and follows the daemon's container
// events. Docker SDK types never leave the package; callers see rtm.Container,
// rtm.DockerEvent and errors that wrap rtm.ErrNotFound, ErrConflict or
// ErrUnavailable, or carry a contract code as *rtm.Error.
//
// Every Docker call runs under its own timeout derived from the caller's context (a wedged daemon
// must not wedge the manager), in a span named docker.<op>, and adds a sample to the
// rtmanager.docker_op_latency histogram.
package runtime

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/docker/docker/client"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Defaults applied by New to zero Options fields.
const (
	DefaultHost        = "unix:///var/run/docker.sock"
	DefaultCallTimeout = 10 * time.Second
	DefaultPullTimeout = 2 * time.Minute
)

// LatencyMetric is the name of the histogram of Docker call latencies, in seconds, with the
// attributes op (list, inspect, pull, create, start, stop, remove, ping, network, events) and
// outcome (ok, error).
const LatencyMetric = "rtmanager.docker_op_latency"

// latencyBuckets are the histogram's bucket boundaries in seconds: from a fast inspect (a few
// milliseconds) to a slow pull.
var latencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Options configure a Docker adapter. Zero durations take the defaults above.
type Options struct {
	// Host is the daemon address, e.g. unix:///var/run/docker.sock; "" means DefaultHost.
	Host string
	// Network is the configured user-defined network games join; CheckNetwork validates it and
	// Create uses it when the spec names none.
	Network string
	// CallTimeout bounds each Docker call (DefaultCallTimeout when zero). Stop gets its grace
	// period on top.
	CallTimeout time.Duration
	// PullTimeout bounds an image pull (DefaultPullTimeout when zero).
	PullTimeout time.Duration
	// Logger receives debug lines only; nil discards them. Errors are returned, not logged.
	Logger *slog.Logger
	// Tracer starts one span per Docker call; nil means no tracing.
	Tracer trace.Tracer
	// Meter creates the latency histogram; nil means no metrics.
	Meter metric.Meter
}

// Docker is the Docker adapter. It is safe for concurrent use.
type Docker struct {
	cli  *client.Client
	opts Options
	log  *slog.Logger
	ops  *Ops

	pulls       singleflight.Group // one pull per image reference at a time
	pullWaiters atomic.Int64       // callers waiting for a pull
}

// New returns an adapter for the daemon at opts.Host, negotiating the API version on first use
// (the daemon here speaks API 1.41). It does not contact the daemon: call Ping for that. It
// fails only on an unusable host address or when the histogram cannot be created.
func New(opts Options) (*Docker, error) {
	opts.Host = cmp.Or(opts.Host, DefaultHost)
	opts.CallTimeout = positiveOr(opts.CallTimeout, DefaultCallTimeout)
	opts.PullTimeout = positiveOr(opts.PullTimeout, DefaultPullTimeout)
	opts.Logger = cmp.Or(opts.Logger, slog.New(slog.DiscardHandler))
	ops, err := NewOps("docker", opts.Tracer, opts.Meter)
	if err != nil {
		return nil, err
	}
	cli, err := client.NewClientWithOpts(client.WithHost(opts.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", opts.Host, err)
	}
	return &Docker{
		cli:  cli,
		opts: opts,
		log:  opts.Logger.With("component", "docker"),
		ops:  ops,
	}, nil
}

// Close releases the client's idle connections. Streams opened by Events end with their
// context, not with Close.
func (d *Docker) Close() error {
	return d.cli.Close()
}

// Ping checks that the daemon answers within CallTimeout. Any failure wraps
// rtm.ErrUnavailable, unless ctx itself ended (then the context's error is wrapped).
func (d *Docker) Ping(ctx context.Context) error {
	c := d.begin(ctx, "ping", d.opts.CallTimeout)
	_, err := d.cli.Ping(c.ctx)
	if err != nil {
		if ctx.Err() == nil {
			err = &kindError{kind: rtm.ErrUnavailable, err: err}
		}
		err = fmt.Errorf("pinging docker at %s: %w", d.opts.Host, err)
	}
	return c.end(err)
}

// call is one instrumented Docker call: its operation (span and latency sample) and its timeout.
type call struct {
	*Op
	parent context.Context // the caller's context, to tell its cancellation from our timeout
	ctx    context.Context // the span's context under the per-call timeout
	cancel context.CancelFunc
	span   trace.Span
}

// begin starts a call named op: a span docker.<op> carrying attrs, under a timeout derived from
// ctx. A zero timeout means only ctx bounds the call (a stream).
func (d *Docker) begin(ctx context.Context, op string, timeout time.Duration, attrs ...attribute.KeyValue) *call {
	o := d.ops.Start(ctx, op, attrs...)
	c := &call{Op: o, parent: ctx, span: o.Span()}
	if timeout > 0 {
		c.ctx, c.cancel = context.WithTimeout(o.Context(), timeout)
	} else {
		c.ctx, c.cancel = context.WithCancel(o.Context())
	}
	return c
}

// end releases the call's timeout, records its latency and outcome, ends its span, and returns
// err unchanged so that callers can write `return c.end(err)`.
func (c *call) end(err error) error {
	c.cancel()
	return c.Finish(err)
}

// finish records the call's latency and outcome and ends its span, without cancelling its
// context (a stream outlives its subscription's span).
func (c *call) finish(err error) { _ = c.Finish(err) }

// positiveOr returns v, or def when v is not positive: an option left unset.
func positiveOr[T ~int64](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// timedOut reports whether the call failed because its own timeout fired while the caller's
// context was still live.
func (c *call) timedOut() bool {
	return c.parent.Err() == nil && errors.Is(c.ctx.Err(), context.DeadlineExceeded)
}

// Span attribute keys of RTM's own; the container's are OpenTelemetry's semantic conventions
// (semconv.ContainerID, ContainerName, ContainerImageName).
var (
	attrGameID  = attribute.Key("rtmanager.game_id")
	attrNetwork = attribute.Key("network.name")
)
