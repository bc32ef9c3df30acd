// Package telemetry sets up RTM's OpenTelemetry: a MeterProvider exported in Prometheus format
// (in the same registry as controller-runtime's workqueue and reconcile metrics, with the Go and
// process collectors) and a TracerProvider exporting as RTMANAGER_TELEMETRY_EXPORTER says.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Telemetry holds the providers and the /metrics handler.
type Telemetry struct {
	Exporter string
	tp       *sdktrace.TracerProvider
	tracerP  trace.TracerProvider
	mp       *sdkmetric.MeterProvider
	handler  http.Handler
}

// Setup builds the providers. exporter is one of otlp-grpc, otlp-http, stdout, none; the
// standard OTEL_* variables configure the OTLP exporters and the batch processor.
func Setup(ctx context.Context, exporter, version string) (*Telemetry, error) {
	reg := ctrlmetrics.Registry
	// controller-runtime's registry already carries the Go and process collectors.
	promExp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("creating prometheus exporter: %w", err)
	}
	// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (standard OTEL_* variables) are applied on
	// top of RTM's own service name and version. A malformed OTEL_RESOURCE_ATTRIBUTES keeps the
	// pairs that parse rather than stopping the process.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("rtmanager"), semconv.ServiceVersion(version)),
		resource.WithFromEnv())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("building telemetry resource from OTEL_SERVICE_NAME/OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(promExp), sdkmetric.WithResource(res),
		sdkmetric.WithView(sdkmetric.NewView(
			sdkmetric.Instrument{Name: "*latency*"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{
				Boundaries: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}}},
		)))
	t := &Telemetry{Exporter: exporter, mp: mp,
		handler: promhttp.HandlerFor(ownFamilies{reg}, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})}
	var sx sdktrace.SpanExporter
	switch exporter {
	case "otlp-http":
		sx, err = otlptracehttp.New(ctx)
	case "otlp-grpc":
		sx, err = otlptracegrpc.New(ctx)
	case "stdout":
		sx, err = stdouttrace.New(stdouttrace.WithWriter(os.Stdout))
	default:
		t.tracerP = tracenoop.NewTracerProvider()
		return t, nil
	}
	if err != nil {
		return nil, fmt.Errorf("creating %s trace exporter: %w", exporter, err)
	}
	t.tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(sx), sdktrace.WithResource(res))
	t.tracerP = t.tp
	return t, nil
}

// ownFamilies gathers g without the families controller-runtime registers for features RTM does
// not use (certificate watching: certwatcher_*; admission webhooks: controller_runtime_webhook_*),
// always 0, which would only mislead: /metrics carries RTM's families, controller-runtime's
// controller and workqueue families, and the Go and process collectors.
type ownFamilies struct{ g prometheus.Gatherer }

func (o ownFamilies) Gather() ([]*dto.MetricFamily, error) {
	fams, err := o.g.Gather()
	return slices.DeleteFunc(fams, func(f *dto.MetricFamily) bool {
		return strings.HasPrefix(f.GetName(), "certwatcher_") || strings.HasPrefix(f.GetName(), "controller_runtime_webhook_")
	}), err
}

// Tracer returns a named tracer.
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.tracerP.Tracer(name) }

// Meter returns a named meter.
func (t *Telemetry) Meter(name string) metric.Meter { return t.mp.Meter(name) }

// Handler serves /metrics.
func (t *Telemetry) Handler() http.Handler { return t.handler }

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	if t.tp != nil {
		errs = append(errs, t.tp.Shutdown(ctx))
	}
	errs = append(errs, t.mp.Shutdown(ctx))
	return errors.Join(errs...)
}
