package httpapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	rtm "github.com/galaxy-platform/rtmanager"
)

// BasePath is where the internal REST API lives; every route of CONTRACT §6 is under it.
const BasePath = "/api/v1/internal"

// CallerHeader names the calling service (CONTRACT §6).
const CallerHeader = "X-Galaxy-Caller"

// RequestIDHeader carries the id RTM gave a request. Its log line and span carry it always; the
// operation_log row of a mutation that was admitted has it as request_id, while a refusal made
// before anything was recorded (and every read) has no row (docs/services.md §1).
const RequestIDHeader = "X-Request-Id"

// The metrics the API records.
const (
	RequestsMetric = "rtmanager.rest_requests"
	LatencyMetric  = "rtmanager.rest_request_latency"
)

// DefaultWaitTimeout is how long a mutation waits for its game to converge when
// APIOptions.WaitTimeout is not set (RTMANAGER_REST_WAIT_TIMEOUT's default).
const DefaultWaitTimeout = 30 * time.Second

// Store is what the REST API needs of the PostgreSQL store; *store.Store satisfies it.
type Store interface {
	Get(ctx context.Context, gameID string) (*rtm.Record, error)
	List(ctx context.Context, f rtm.ListFilter) ([]rtm.Record, error)
	Operations(ctx context.Context, gameID string, limit int) ([]rtm.Operation, error)
	Health(ctx context.Context, gameID string) (*rtm.HealthSnapshot, error)
	RequestAnswer(ctx context.Context, ch rtm.Channel, requestID string) (*rtm.Answer, error)
}

// Intake validates, admits, records and enqueues a request (rtm.Intake), as for jobs.
type Intake interface {
	Take(ctx context.Context, req rtm.Request, guard rtm.Guard) (rtm.Submission, error)
}

// APIOptions configure the REST API.
type APIOptions struct {
	// Store holds desired state, records, operations and health; required.
	Store Store
	// Intake takes every mutation, as it takes jobs; required. Its Enqueue hands the game to the
	// reconciler (without one, mutations answer 202 after WaitTimeout unless answered at once).
	Intake Intake
	// Allowed lists the image repositories a patch may name (the intake checks a start's).
	Allowed []string
	// Token, when set, must come as "Authorization: Bearer <token>" on every request.
	Token string
	// Answers, when set, wakes a mutation waiting for its answer as soon as the store commits it
	// (wire its Notify to the store's OnAnswered); without it the wait polls the store.
	Answers *Answers
	// WaitTimeout bounds how long a mutation waits for convergence; DefaultWaitTimeout when ≤ 0.
	WaitTimeout time.Duration
	// Log receives one debug line per request (warn at 5xx); nil discards.
	Log *slog.Logger
	// Tracer starts one span per request; nil means no tracing.
	Tracer trace.Tracer
	// Meter creates the request counter and latency histogram; nil means no metrics.
	Meter metric.Meter
	// Logs reads engines' output for GET /runtimes/{game_id}/logs; nil answers that route with
	// 503 service_unavailable. cmd/manager passes the Docker adapter.
	Logs EngineLogs
	// Draining, once closed, ends the follow streams of GET /runtimes/{game_id}/logs and answers
	// mutations still waiting for the reconciler with 202, so that a graceful shutdown neither
	// waits for them nor cuts them off (cmd/manager closes it when the listener starts to shut
	// down); nil never ends them.
	Draining <-chan struct{}
	// Version is the binary's version, reported by GET /version; "dev" when empty.
	Version string
}

// api serves the routes of CONTRACT §6.
type api struct {
	store     Store
	intake    Intake
	allowed   []string
	tokenHash [sha256.Size]byte
	needToken bool
	wait      time.Duration
	answers   *Answers // may be nil
	logs      EngineLogs
	draining  <-chan struct{}
	version   string
	log       *slog.Logger
	tracer    trace.Tracer
	requests  metric.Int64Counter
	latency   metric.Float64Histogram
}

// route is one operation of the API. The table below is the single list of what the API serves:
// NewAPI registers it and the OpenAPI test checks docs/openapi.yaml against it.
type route struct {
	method string
	// path is relative to BasePath, in ServeMux and OpenAPI syntax alike.
	path string
	// mutates marks the routes only admin and gm may call.
	mutates bool
	handle  func(a *api, w http.ResponseWriter, r *http.Request, c *call)
}

func routes() []route {
	return []route{
		{http.MethodGet, "/runtimes", false, (*api).listRuntimes},
		{http.MethodGet, "/runtimes/{game_id}", false, (*api).getRuntime},
		{http.MethodGet, "/runtimes/{game_id}/operations", false, (*api).listOperations},
		{http.MethodGet, "/runtimes/{game_id}/health", false, (*api).getHealth},
		{http.MethodGet, "/runtimes/{game_id}/logs", false, (*api).getLogs},
		{http.MethodGet, "/version", false, (*api).getVersion},
		{http.MethodPost, "/runtimes/{game_id}/start", true, (*api).start},
		{http.MethodPost, "/runtimes/{game_id}/stop", true, (*api).stop},
		{http.MethodPost, "/runtimes/{game_id}/restart", true, (*api).restart},
		{http.MethodPost, "/runtimes/{game_id}/patch", true, (*api).patch},
		{http.MethodDelete, "/runtimes/{game_id}/container", true, (*api).cleanup},
	}
}

// NewAPI returns the internal REST API of CONTRACT §6, to be mounted at BasePath+"/" (it matches
// full paths). Every request, whatever its route, is authenticated (token, then caller) before
// it is routed; an unknown path is 404 and a known path with another method 405, both with the
// error envelope and code invalid_request. A request never makes the mux redirect except for
// paths that are not clean (".." or "//" segments), which the listener's own mux redirects
// before the API sees them.
func NewAPI(o APIOptions) http.Handler {
	a := &api{store: o.Store, intake: o.Intake, allowed: o.Allowed,
		wait: o.WaitTimeout, answers: o.Answers, log: o.Log, tracer: o.Tracer,
		logs: o.Logs, draining: o.Draining, version: o.Version}
	if a.version == "" {
		a.version = "dev"
	}
	if a.wait <= 0 {
		a.wait = DefaultWaitTimeout
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.tracer == nil {
		a.tracer = tracenoop.NewTracerProvider().Tracer("")
	}
	if o.Token != "" {
		a.needToken, a.tokenHash = true, sha256.Sum256([]byte(o.Token))
	}
	a.instruments(o.Meter)

	mux := http.NewServeMux()
	methods := map[string][]string{}
	var order []string
	for _, rt := range routes() {
		pattern := rt.method + " " + BasePath + rt.path
		mux.Handle(pattern, a.wrap(pattern, rt.mutates, true, rt.handle))
		if _, seen := methods[rt.path]; !seen {
			order = append(order, rt.path)
		}
		methods[rt.path] = append(methods[rt.path], rt.method)
	}
	// Method-less patterns are less specific than the routes above, so they catch exactly the
	// requests whose path is known but whose method is not, and answer them with the envelope.
	for _, p := range order {
		allow := append([]string(nil), methods[p]...)
		for _, m := range methods[p] {
			if m == http.MethodGet {
				allow = append(allow, http.MethodHead)
			}
		}
		allowed := strings.Join(allow, ", ")
		mux.Handle(BasePath+p, a.wrap(BasePath+p, false, false, func(_ *api, w http.ResponseWriter, r *http.Request, _ *call) {
			w.Header().Set("Allow", allowed)
			WriteError(w, http.StatusMethodNotAllowed, rtm.CodeInvalidRequest,
				fmt.Sprintf("method %s is not allowed here; allowed: %s", r.Method, allowed))
		}))
	}
	mux.Handle(BasePath+"/", a.wrap(BasePath+"/", false, false, func(_ *api, w http.ResponseWriter, r *http.Request, _ *call) {
		WriteError(w, http.StatusNotFound, rtm.CodeInvalidRequest, "no such route: "+r.Method+" "+r.URL.EscapedPath())
	}))
	return mux
}

func (a *api) instruments(meter metric.Meter) {
	if meter == nil {
		meter = metricnoop.NewMeterProvider().Meter("")
	}
	var err error
	a.requests, err = meter.Int64Counter(RequestsMetric, metric.WithUnit("{request}"),
		metric.WithDescription("Internal REST requests, by route, HTTP status code and caller."))
	if err != nil {
		a.log.Warn("rest metrics disabled", "metric", RequestsMetric, "error", err)
		a.requests, _ = metricnoop.NewMeterProvider().Meter("").Int64Counter(RequestsMetric)
	}
	a.latency, err = meter.Float64Histogram(LatencyMetric, metric.WithUnit("s"),
		metric.WithDescription("Latency of internal REST requests, by route; a mutation includes its wait for convergence."))
	if err != nil {
		a.log.Warn("rest metrics disabled", "metric", LatencyMetric, "error", err)
		a.latency, _ = metricnoop.NewMeterProvider().Meter("").Float64Histogram(LatencyMetric)
	}
}

// caller is the X-Galaxy-Caller of a request, reduced to the values RTM knows.
type caller string

const (
	callerAdmin   caller = "admin"
	callerGM      caller = "gm"
	callerLobby   caller = "lobby"
	callerNone    caller = "none"    // header absent
	callerUnknown caller = "unknown" // any other value, or several
)

func callerOf(r *http.Request) caller {
	vs := r.Header.Values(CallerHeader)
	switch {
	case len(vs) == 0:
		return callerNone
	case len(vs) > 1:
		return callerUnknown
	}
	switch c := caller(strings.TrimSpace(vs[0])); c {
	case callerAdmin, callerGM, callerLobby:
		return c
	case "":
		return callerNone
	}
	return callerUnknown
}

// source is the op_source a caller's mutations are logged with.
func (c caller) source() rtm.OpSource {
	if c == callerGM {
		return rtm.SourceGMREST
	}
	return rtm.SourceAdminREST
}

// call is the per-request state the wrapper shares with a handler.
type call struct {
	id     string // the request id: X-Request-Id, and a mutation's request_id
	caller caller
	gameID string // validated; "" on routes without one
	// err is the internal failure behind a 5xx answer: logged with the request, never sent.
	err error
}

// statusWriter remembers the status written, for the request's log, span and metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// wrap runs every request of one pattern: span, metrics and log around it, a recover that turns
// a panic into 500 internal_error, then the token (401), the caller (403) and, when withGameID,
// the game id (400) checks, in that order, before h.
func (a *api) wrap(pattern string, mutates, withGameID bool, h func(*api, http.ResponseWriter, *http.Request, *call)) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		c := &call{id: newRequestID(), caller: callerOf(r)}
		ctx := propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := a.tracer.Start(ctx, pattern, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method),
				attribute.String("http.route", pattern), attribute.String("request_id", c.id),
				attribute.String("caller", string(c.caller))))
		r = r.WithContext(ctx)
		w := &statusWriter{ResponseWriter: rw}
		w.Header().Set(RequestIDHeader, c.id)
		var stack []byte
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					span.End()
					panic(v)
				}
				c.err, stack = fmt.Errorf("panic: %v", v), debug.Stack()
				if w.status == 0 {
					WriteError(w, http.StatusInternalServerError, rtm.CodeInternalError, "internal error")
				}
			}
			a.finish(r, span, pattern, c, w.status, time.Since(start), stack)
		}()

		if a.needToken && !a.tokenOK(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="rtmanager"`)
			WriteError(w, http.StatusUnauthorized, rtm.CodeUnauthenticated, "a valid bearer token is required")
			return
		}
		switch {
		case c.caller == callerUnknown:
			WriteError(w, http.StatusForbidden, rtm.CodeForbidden, "unknown "+CallerHeader+"; expected admin, gm or lobby")
			return
		case mutates && c.caller != callerAdmin && c.caller != callerGM:
			WriteError(w, http.StatusForbidden, rtm.CodeForbidden, "this operation needs "+CallerHeader+" admin or gm")
			return
		}
		if withGameID && strings.Contains(pattern, "{game_id}") {
			id := r.PathValue("game_id")
			if err := rtm.ValidateGameID(id); err != nil {
				WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, rtm.MessageOf(err))
				return
			}
			c.gameID = id
		}
		h(a, w, r, c)
	})
}

// tokenOK compares the bearer token in constant time; hashing first hides the token's length.
func (a *api) tokenOK(r *http.Request) bool {
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(cred)))
	return subtle.ConstantTimeCompare(sum[:], a.tokenHash[:]) == 1
}

func (a *api) finish(r *http.Request, span trace.Span, pattern string, c *call, status int, took time.Duration, stack []byte) {
	defer span.End()
	if status == 0 {
		status = http.StatusOK // the handler wrote nothing: net/http sends 200
	}
	gameID := c.gameID
	if gameID == "" {
		gameID = trunc(r.PathValue("game_id"))
	}
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if gameID != "" {
		span.SetAttributes(attribute.String("game_id", gameID))
	}
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
		if c.err != nil {
			span.RecordError(c.err)
		}
	}
	ctx := context.WithoutCancel(r.Context())
	a.requests.Add(ctx, 1, metric.WithAttributes(attribute.String("route", pattern),
		attribute.String("code", strconv.Itoa(status)), attribute.String("caller", string(c.caller))))
	a.latency.Record(ctx, took.Seconds(), metric.WithAttributes(attribute.String("route", pattern)))

	level := slog.LevelDebug
	if status >= 500 {
		level = slog.LevelWarn
	}
	if !a.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{slog.String("request_id", c.id), slog.String("method", r.Method),
		slog.String("route", pattern), slog.Int("status", status), slog.String("caller", string(c.caller)),
		slog.Duration("duration", took)}
	if gameID != "" {
		attrs = append(attrs, slog.String("game_id", gameID))
	}
	if c.err != nil {
		attrs = append(attrs, slog.String("error", c.err.Error()))
	}
	if stack != nil {
		attrs = append(attrs, slog.String("stack", string(stack)))
	}
	a.log.LogAttrs(ctx, level, "rest request", attrs...)
}

// newRequestID returns "rest-" and 16 random hex digits. crypto/rand does not fail on the
// platforms Go supports (it aborts the program instead), so no error is returned.
func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "rest-" + hex.EncodeToString(b[:])
}

// trunc bounds an unvalidated value before it goes into a log line or span.
func trunc(s string) string {
	const max = 128
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
