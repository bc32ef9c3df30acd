package telemetry_test

// This file checks the observability documents against what RTM really exports: every metric
// that docs/grafana-dashboard.json, docs/prometheus-alerts.yaml and docs/observability.md name
// must be a family on RTM's /metrics, and every rtmanager_* family must be documented.
//
// What RTM exports is learnt in-process, without Docker, PostgreSQL or Redis: the instruments are
// built the way cmd/manager builds them (telemetry.Setup, telemetry.NewMetrics, runtime.New,
// controllers.New, controllers.NewController, httpapi.NewAPI) on fakes, one sample is recorded
// where a family only appears after its first sample (a failing Docker ping on a socket that does
// not exist, one REST request, one reconcile through the real controller-runtime workqueue), and
// telemetry.Handler() is scraped. controller-runtime's metrics live in its package-level
// registry, so this happens once per test process.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"go.yaml.in/yaml/v3"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/httpapi"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/telemetry"
)

const (
	dashboardPath     = "../docs/grafana-dashboard.json"
	alertsPath        = "../docs/prometheus-alerts.yaml"
	observabilityPath = "../docs/observability.md"
)

// prometheusSeries are series Prometheus itself writes for every scrape target; the documents may
// use them although RTM does not expose them.
var prometheusSeries = map[string]bool{
	"up":                      true,
	"scrape_duration_seconds": true,
	"scrape_samples_scraped":  true,
}

// ---- what RTM exports -------------------------------------------------------------------------

var (
	exportOnce sync.Once
	exported   families
	exportErr  error
)

// exportedFamilies returns RTM's metric families by name, built once per process.
func exportedFamilies(t *testing.T) families {
	t.Helper()
	exportOnce.Do(func() { exported, exportErr = buildAndScrape() })
	if exportErr != nil {
		t.Fatalf("building RTM's instruments: %v", exportErr)
	}
	return exported
}

type fakeCounts struct{}

func (fakeCounts) CountByStatus(context.Context) (map[rtm.Status]int64, error) {
	return map[rtm.Status]int64{rtm.StatusRunning: 2}, nil
}
func (fakeCounts) OutboxBacklog(context.Context) (int64, error) { return 1, nil }

type fakeOffsets struct{}

func (fakeOffsets) Offset(context.Context, string) (string, error)     { return "0-0", nil }
func (fakeOffsets) Lag(context.Context, string, string) (int64, error) { return 3, nil }

// nilStore satisfies httpapi.Store; the request sent below is refused before it is used.
type nilStore struct{ httpapi.Store }

func buildAndScrape() (families, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctrllog.SetLogger(logr.Discard())

	tel, err := telemetry.Setup(ctx, "none", "test")
	if err != nil {
		return nil, fmt.Errorf("telemetry.Setup: %w", err)
	}
	meter := tel.Meter("rtmanager")

	// RTM's own instruments and gauges (cmd/manager: telemetry.NewMetrics).
	m, err := telemetry.NewMetrics(meter)
	if err == nil {
		err = m.ObserveGauges(meter, fakeCounts{}, fakeOffsets{},
			map[rtm.JobKind]string{rtm.StartJobs: "runtime:start_jobs", rtm.StopJobs: "runtime:stop_jobs"})
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry.NewMetrics: %w", err)
	}
	m.LeaseAttempt(ctx, "contended")
	m.Published(ctx, rtm.OutboxEntry{Stream: rtm.StreamJobResults, Fields: []string{"job", "start", "outcome", "succeeded"}})
	m.Published(ctx, rtm.OutboxEntry{Stream: rtm.StreamHealthEvents, Fields: []string{"event_type", "probe_failed"}})
	m.Published(ctx, rtm.OutboxEntry{Stream: rtm.StreamNotificationIntents, Fields: []string{"intent", "runtime.image_pull_failed"}})
	m.JobHandled(ctx, rtm.StartJobs, "failed")
	m.Answered(ctx, []rtm.OutboxEntry{{Stream: rtm.StreamJobResults, Fields: []string{"job", "stop", "outcome", "succeeded"}}})
	m.ProbeResult(ctx, false)

	// The Docker adapter's latency histogram: a ping of a daemon that is not there.
	dk, err := runtime.New(runtime.Options{Host: "unix:///nonexistent/rtm-docs-test.sock", Network: "n", Meter: meter})
	if err != nil {
		return nil, fmt.Errorf("runtime.New: %w", err)
	}
	defer dk.Close()
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	err = dk.Ping(pctx)
	pcancel()
	if err == nil {
		return nil, errors.New("a ping of a socket that does not exist succeeded")
	}

	// The reconciler's drift counter is created with the reconciler.
	if _, err := controllers.New(nil, nil, nil, nil, nil, controllers.Options{}, slog.New(slog.DiscardHandler), nil, meter); err != nil {
		return nil, fmt.Errorf("controllers.New: %w", err)
	}

	// The REST API's counter and histogram: one request, refused for its caller.
	api := httpapi.NewAPI(httpapi.APIOptions{Store: nilStore{}, Meter: meter})
	req := httptest.NewRequest(http.MethodGet, httpapi.BasePath+"/runtimes", nil)
	req.Header.Set(httpapi.CallerHeader, "nobody")
	rr := httptest.NewRecorder()
	api.ServeHTTP(rr, req)
	if rr.Code != http.StatusForbidden {
		return nil, fmt.Errorf("REST request with an unknown caller: status %d, want 403", rr.Code)
	}

	// controller-runtime's workqueue and reconcile metrics: the real controller, started, with
	// one game reconciled by a stub.
	reconciled := make(chan struct{}, 1)
	stub := reconcile.TypedFunc[string](func(context.Context, string) (reconcile.Result, error) {
		select {
		case reconciled <- struct{}{}:
		default:
		}
		return reconcile.Result{}, nil
	})
	ctrl, err := controllers.NewController(stub, controllers.QueueOptions{Workers: 1}, logr.Discard())
	if err != nil {
		return nil, fmt.Errorf("controllers.NewController: %w", err)
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ctrl.Start(cctx) }()
	defer func() { stop(); <-done }()
	ctrl.Enqueue("g1")
	select {
	case <-reconciled:
	case err := <-done:
		return nil, fmt.Errorf("controller stopped before reconciling: %v", err)
	case <-ctx.Done():
		return nil, errors.New("the controller did not reconcile the enqueued game")
	}

	// Scrape until the reconcile's own metrics (recorded just after it returns) are there.
	for {
		fams, err := scrape(tel.Handler())
		if err != nil {
			return nil, err
		}
		if _, ok := fams["controller_runtime_reconcile_time_seconds"]; ok {
			return fams, nil
		}
		select {
		case <-ctx.Done():
			return nil, errors.New("controller_runtime_reconcile_time_seconds never appeared on /metrics")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// family is one metric family on /metrics: its type and the label names its series carry.
type family struct {
	typ    string // counter, gauge, histogram, summary, untyped
	labels map[string]bool
}

// families are the metric families on /metrics by name (as in "# TYPE <name> <type>").
type families map[string]*family

// of returns the family a series name belongs to: the family itself, or the histogram whose
// _bucket, _sum or _count series it is (_sum and _count of a summary); nil when none.
func (fams families) of(name string) *family {
	if f := fams[name]; f != nil {
		return f
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if f := fams[base]; f != nil && (f.typ == "histogram" || (f.typ == "summary" && suffix != "_bucket")) {
			return f
		}
	}
	return nil
}

// scrape GETs h as Prometheus would (text exposition) and returns the families it declares with
// the label names of their series.
func scrape(h http.Handler) (families, error) {
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rr.Code != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: status %d: %s", rr.Code, rr.Body.String())
	}
	fams := families{}
	sc := bufio.NewScanner(rr.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			fams[f[2]] = &family{typ: f[3], labels: map[string]bool{}}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, labels, _ := strings.Cut(line, "{")
		if !strings.Contains(line, "{") {
			name, _, _ = strings.Cut(line, " ")
			labels = ""
		}
		f := fams.of(name)
		if f == nil {
			return nil, fmt.Errorf("/metrics: series %s has no # TYPE line", name)
		}
		labels, _, _ = strings.Cut(labels, "} ")
		for _, m := range promMatcher.FindAllStringSubmatch(promStrings.ReplaceAllString(labels, `""`), -1) {
			if m[1] != "le" && m[1] != "quantile" { // bucket and quantile bounds, not the family's labels
				f.labels[m[1]] = true
			}
		}
	}
	return fams, sc.Err()
}

// targetLabels are the labels Prometheus adds to every series it scrapes (with the default
// honor_labels: false an exposed label of the same name is renamed exported_<name>).
var targetLabels = []string{"job", "instance"}

func TestExportedFamilies(t *testing.T) {
	fams := exportedFamilies(t)
	// The contract's metrics and the families the documents are built on must be there, so that
	// a rename shows up here and not only as an unknown name in a document.
	for name, typ := range map[string]string{
		"rtmanager_runtime_records_by_status":       "gauge",
		"rtmanager_docker_op_latency_seconds":       "histogram",
		"rtmanager_reconcile_drift_total":           "counter",
		"rtmanager_stream_lag":                      "gauge",
		"rtmanager_publisher_backlog":               "gauge",
		"rtmanager_lease_acquisitions_total":        "counter",
		"rtmanager_probe_results_total":             "counter",
		"rtmanager_job_results_total":               "counter",
		"rtmanager_health_events_total":             "counter",
		"rtmanager_notification_intents_total":      "counter",
		"rtmanager_jobs_handled_total":              "counter",
		"rtmanager_jobs_answered_total":             "counter",
		"rtmanager_rest_requests_total":             "counter",
		"rtmanager_rest_request_latency_seconds":    "histogram",
		"controller_runtime_reconcile_total":        "counter",
		"controller_runtime_reconcile_errors_total": "counter",
		"controller_runtime_reconcile_time_seconds": "histogram",
		"workqueue_depth":                           "gauge",
		"workqueue_adds_total":                      "counter",
		"workqueue_retries_total":                   "counter",
		"workqueue_queue_duration_seconds":          "histogram",
		"process_resident_memory_bytes":             "gauge",
		"go_goroutines":                             "gauge",
	} {
		if f := fams[name]; f == nil {
			t.Errorf("/metrics has no family %s", name)
		} else if f.typ != typ {
			t.Errorf("/metrics: %s is a %s, want %s", name, f.typ, typ)
		}
	}
	// Only RTM's and the controller's families: none of controller-runtime's for the certificate
	// watcher or webhooks, which RTM does not use.
	for name := range fams {
		if strings.HasPrefix(name, "certwatcher_") || strings.HasPrefix(name, "controller_runtime_webhook_") {
			t.Errorf("/metrics carries %s, a family of a controller-runtime feature RTM does not use", name)
		}
	}
	// An exposed job or instance label would collide with the labels Prometheus adds itself.
	for name, f := range fams {
		for _, l := range targetLabels {
			if f.labels[l] {
				t.Errorf("/metrics: %s has a label %q, which Prometheus reserves for the scrape target", name, l)
			}
		}
	}
}

// ---- names in PromQL ---------------------------------------------------------------------------

var (
	promStrings = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promRanges  = regexp.MustCompile(`\[[^\[\]]*\]`)
	// by (…), without (…), on (…), ignoring (…), group_left (…), group_right (…): label lists.
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promMatcher  = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)`)
	promKeywords = map[string]bool{
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true,
		"atan2": true,
	}
	// label_values(<selector>, <label>) in a Grafana variable query.
	grafanaLabelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)
)

// selector is one series selector of a PromQL expression: the metric name and the label names
// its matchers use.
type selector struct {
	name   string
	labels []string
}

// selectors returns the series selectors of a PromQL expression: identifiers that are not
// functions (followed by "("), keywords, label names (inside {…} or a grouping clause), numbers,
// durations or strings, each with the label names of its {…} matchers.
func selectors(expr string) []selector {
	s := promStrings.ReplaceAllString(expr, `""`)
	s = promRanges.ReplaceAllString(s, "[]")
	s = promGrouping.ReplaceAllString(s, " ")
	var out []selector
	for i := 0; i < len(s); {
		if s[i] == '{' { // matchers without a metric name, or ones already read
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				break
			}
			i += end + 1
			continue
		}
		loc := promIdent.FindStringIndex(s[i:])
		if loc == nil {
			break
		}
		start, end := i+loc[0], i+loc[1]
		if brace := strings.IndexByte(s[i:start], '{'); brace >= 0 {
			i += brace // a matcher block comes first: skip it
			continue
		}
		i = end
		if start > 0 && strings.ContainsAny(s[start-1:start], "0123456789.$") {
			continue // part of a number (1e3), a duration or a Grafana variable
		}
		id := s[start:end]
		if promKeywords[strings.ToLower(id)] {
			continue
		}
		next := strings.TrimLeft(s[end:], " \t\n")
		if strings.HasPrefix(next, "(") {
			continue // a function or an aggregation
		}
		sel := selector{name: id}
		if strings.HasPrefix(next, "{") {
			open := len(s) - len(next)
			if closing := strings.IndexByte(s[open:], '}'); closing >= 0 {
				for _, m := range promMatcher.FindAllStringSubmatch(s[open+1:open+closing], -1) {
					sel.labels = append(sel.labels, m[1])
				}
				i = open + closing + 1
			}
		}
		out = append(out, sel)
	}
	return out
}

// metricNames returns the distinct metric names of a PromQL expression, in order.
func metricNames(expr string) []string {
	var names []string
	for _, sel := range selectors(expr) {
		if !slices.Contains(names, sel.name) {
			names = append(names, sel.name)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`up{job="rtmanager"} == 0`,
			[]string{"up"}},
		{`histogram_quantile(0.95, sum by (le, op) (rate(rtmanager_docker_op_latency_seconds_bucket{op=~"create|start", instance=~"$instance"}[$__rate_interval])))`,
			[]string{"rtmanager_docker_op_latency_seconds_bucket"}},
		{`sum(rate(a_total[5m])) by (kind) / ignoring(kind) group_left sum(b) > 1e3 and on(instance) c offset 5m`,
			[]string{"a_total", "b", "c"}},
		{`max by (consumer, stream) (deriv(rtmanager_stream_lag{job="rtmanager"}[10m])) > 0`,
			[]string{"rtmanager_stream_lag"}},
		{`up == 1 unless on (job, instance) count by (job, instance) (rtmanager_runtime_records_by_status)`,
			[]string{"up", "rtmanager_runtime_records_by_status"}},
		{`sum without (otel_scope_name) (x) * on (instance) group_left (status) y{status!="a b"}`,
			[]string{"x", "y"}},
		{`min_over_time(rtmanager_publisher_backlog[10m:1m]) > bool 0`,
			[]string{"rtmanager_publisher_backlog"}},
		{`sum(increase(rtmanager_health_events_total{event_type="probe_failed"}[15m])) >= 1`,
			[]string{"rtmanager_health_events_total"}},
		{`label_replace(vector(1), "a", "$1", "b", "(.*)")`,
			nil},
	} {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%s) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// unknownNames returns the metric names of exprs (by where they appear) that RTM does not
// export, and the label names their matchers use that the metric's series do not carry.
func unknownNames(exprs map[string]string, fams families) []string {
	var bad []string
	for where, expr := range exprs {
		for _, sel := range selectors(expr) {
			f := fams.of(sel.name)
			if f == nil && !prometheusSeries[sel.name] {
				bad = append(bad, fmt.Sprintf("%s: %s", where, sel.name))
				continue
			}
			for _, l := range sel.labels {
				known := slices.Contains(targetLabels, l) || (f != nil && f.labels[l]) ||
					(l == "le" && strings.HasSuffix(sel.name, "_bucket")) ||
					(l == "quantile" && f != nil && f.typ == "summary" && fams[sel.name] == f)
				if !known {
					bad = append(bad, fmt.Sprintf("%s: %s{%s}", where, sel.name, l))
				}
			}
		}
	}
	slices.Sort(bad)
	return slices.Compact(bad)
}

func TestUnknownNamesAreReported(t *testing.T) {
	fams := exportedFamilies(t)
	bad := unknownNames(map[string]string{
		"a": `rate(rtmanager_docker_op_latency_seconds_bucket[5m])`,
		"b": `rtmanager_runtime_records_by_status_bucket + rtmanager_reconcile_drift + rtmanager_no_such_thing`,
		"c": `sum(rate(controller_runtime_reconcile_errors_total{controller="game"}[5m])) / sum(rate(workqueue_adds_total{name="game",job="rtmanager"}[5m]))`,
		"d": `rtmanager_job_results_total{job_type="start",outcome="failed"} + on(instance) rtmanager_stream_lag{consumer="startjobs",kind="x"}`,
		"e": `histogram_quantile(0.9, rate(rtmanager_docker_op_latency_seconds_bucket{le="1",op="pull"}[5m])) + rtmanager_docker_op_latency_seconds_count{le="1"}`,
	}, fams)
	want := []string{"b: rtmanager_no_such_thing", "b: rtmanager_reconcile_drift", "b: rtmanager_runtime_records_by_status_bucket",
		"d: rtmanager_stream_lag{kind}", "e: rtmanager_docker_op_latency_seconds_count{le}"}
	if !slices.Equal(bad, want) {
		t.Errorf("unknown names = %q, want %q", bad, want)
	}
}

// ---- the dashboard ---------------------------------------------------------------------------

type grafanaPanel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string          `json:"refId"`
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaDashboard struct {
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	SchemaVersion int            `json:"schemaVersion"`
	Panels        []grafanaPanel `json:"panels"`
	Inputs        []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		PluginID string `json:"pluginId"`
	} `json:"__inputs"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource json.RawMessage `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

func readDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// dsRef is a panel's or target's datasource: {"type":"prometheus","uid":"${DS_PROMETHEUS}"}.
func dsRef(raw json.RawMessage) (typ, uid string) {
	var ref struct{ Type, UID string }
	if err := json.Unmarshal(raw, &ref); err != nil {
		var s string
		_ = json.Unmarshal(raw, &s)
		return "", s
	}
	return ref.Type, ref.UID
}

// dashboardExprs returns every PromQL expression of the dashboard by where it is.
func dashboardExprs(t *testing.T, d grafanaDashboard) map[string]string {
	t.Helper()
	exprs := map[string]string{}
	ids := map[int]string{}
	var walk func(ps []grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("panel %q: id %d is zero or also used by %q", p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
				t.Errorf("panel %q has no gridPos", p.Title)
			}
			if p.Type != "row" {
				if typ, uid := dsRef(p.Datasource); typ != "prometheus" || uid != "${DS_PROMETHEUS}" {
					t.Errorf("panel %q: datasource %s, want prometheus ${DS_PROMETHEUS}", p.Title, p.Datasource)
				}
				if len(p.Targets) == 0 {
					t.Errorf("panel %q has no query", p.Title)
				}
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q, query %s: empty expr", p.Title, tg.RefID)
				}
				if len(tg.Datasource) > 0 {
					if _, uid := dsRef(tg.Datasource); uid != "${DS_PROMETHEUS}" {
						t.Errorf("panel %q, query %s: datasource %s", p.Title, tg.RefID, tg.Datasource)
					}
				}
				exprs[fmt.Sprintf("panel %d %q query %s", p.ID, p.Title, tg.RefID)] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct{ Query string }
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Errorf("variable %s: query %s", v.Name, v.Query)
				continue
			}
			q = obj.Query
		}
		if m := grafanaLabelValues.FindStringSubmatch(q); m != nil {
			q = m[1]
		}
		exprs["variable "+v.Name] = q
	}
	return exprs
}

func TestGrafanaDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want ≥ 36", d.SchemaVersion)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	hasInput, hasVar := false, false
	for _, in := range d.Inputs {
		hasInput = hasInput || (in.Name == "DS_PROMETHEUS" && in.Type == "datasource" && in.PluginID == "prometheus")
	}
	for _, v := range d.Templating.List {
		if v.Name == "DS_PROMETHEUS" && v.Type == "datasource" && strings.Contains(string(v.Query), "prometheus") {
			hasVar = true
		}
	}
	if !hasInput || !hasVar {
		t.Errorf("want a Prometheus datasource input and variable DS_PROMETHEUS (input %v, variable %v)", hasInput, hasVar)
	}

	exprs := dashboardExprs(t, d)
	for _, bad := range unknownNames(exprs, exportedFamilies(t)) {
		t.Errorf("%s: the dashboard uses a metric RTM does not export", bad)
	}
	// The panels the operators asked for, by the metric each is built on.
	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricNames(e) {
			used[n] = true
		}
	}
	for _, n := range []string{
		"rtmanager_runtime_records_by_status", "rtmanager_docker_op_latency_seconds_bucket",
		"rtmanager_rest_request_latency_seconds_bucket", "rtmanager_reconcile_drift_total",
		"rtmanager_health_events_total", "workqueue_depth", "workqueue_retries_total",
		"controller_runtime_reconcile_errors_total", "rtmanager_stream_lag", "rtmanager_publisher_backlog",
		"rtmanager_lease_acquisitions_total", "rtmanager_probe_results_total", "rtmanager_job_results_total",
	} {
		if !used[n] {
			t.Errorf("no dashboard panel uses %s", n)
		}
	}
}

// ---- the alerts ------------------------------------------------------------------------------

type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var promDuration = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)

func TestPrometheusAlerts(t *testing.T) {
	b, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatal("no rule groups")
	}
	exprs := map[string]string{}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: needs a name and rules", g.Name)
		}
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			if (r.Alert == "") == (r.Record == "") {
				t.Errorf("group %s: a rule must be either an alert or a record (%q)", g.Name, name)
				continue
			}
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: empty expr", name)
			}
			exprs[name] = r.Expr
			if r.For != "" && !promDuration.MatchString(r.For) {
				t.Errorf("%s: for %q is not a Prometheus duration", name, r.For)
			}
			if r.Record != "" {
				continue
			}
			if alerts[r.Alert] {
				t.Errorf("alert %s is defined twice", r.Alert)
			}
			alerts[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs summary and description annotations", r.Alert)
			}
			if !strings.Contains(r.Annotations["description"], "runbook") {
				t.Errorf("%s: the description must name the runbook section to read", r.Alert)
			}
			checkDocLink(t, r.Alert, r.Annotations["runbook"])
		}
	}
	for _, a := range []string{"RTMNotReady", "RTMStreamLagGrowing", "RTMPublisherBacklog", "RTMReconcileErrors", "RTMProbeFailures"} {
		if !alerts[a] {
			t.Errorf("no alert %s", a)
		}
	}
	for _, bad := range unknownNames(exprs, exportedFamilies(t)) {
		t.Errorf("%s: the alert uses a metric RTM does not export", bad)
	}
}

// checkDocLink checks a "docs/<file>.md#<anchor>" reference: the file exists beside this
// package's docs and has a heading with that anchor.
func checkDocLink(t *testing.T, alert, link string) {
	t.Helper()
	file, anchor, ok := strings.Cut(link, "#")
	if !ok || !strings.HasPrefix(file, "docs/") || !strings.HasSuffix(file, ".md") || anchor == "" {
		t.Errorf("%s: annotation runbook %q, want docs/<file>.md#<section>", alert, link)
		return
	}
	b, err := os.ReadFile(filepath.Join("..", file))
	if err != nil {
		t.Errorf("%s: %v", alert, err)
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok && githubAnchor(strings.TrimLeft(h, "#")) == anchor {
			return
		}
	}
	t.Errorf("%s: %s has no section #%s", alert, file, anchor)
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// ---- observability.md -----------------------------------------------------------------------

// docMetric is a metric name as observability.md writes it: in backticks, maybe with matchers.
var docMetric = regexp.MustCompile("`((?:rtmanager|workqueue|controller_runtime|process|go)_[a-z0-9_]+(?:\\{[^`]*\\})?)`")

// promqlBlock is a fenced PromQL example.
var promqlBlock = regexp.MustCompile("(?s)```promql\n(.*?)```")

func TestObservabilityDoc(t *testing.T) {
	b, err := os.ReadFile(observabilityPath)
	if err != nil {
		t.Fatal(err)
	}
	fams := exportedFamilies(t)
	exprs := map[string]string{}
	named := map[string]bool{}
	for _, m := range docMetric.FindAllStringSubmatch(string(b), -1) {
		exprs["`"+m[1]+"`"] = m[1]
		for _, n := range metricNames(m[1]) {
			named[n] = true
		}
	}
	for i, m := range promqlBlock.FindAllStringSubmatch(string(b), -1) {
		for j, line := range strings.Split(m[1], "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				exprs[fmt.Sprintf("promql block %d line %d", i+1, j+1)] = line
			}
		}
	}
	for _, bad := range unknownNames(exprs, fams) {
		t.Errorf("%s: %s names a metric or label RTM does not export", observabilityPath, bad)
	}
	for name := range fams {
		if strings.HasPrefix(name, "rtmanager_") && !named[name] {
			t.Errorf("RTM exports %s but %s does not document it", name, observabilityPath)
		}
	}
}
