package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

const (
	img141 = "galaxy/game:1.4.1"
	img142 = "galaxy/game:1.4.2"
	img150 = "galaxy/game:1.5.0"
)

// reconcileFunc stands in for the reconciler's decision: given the record a reconcile would read,
// it returns how the record ends and the answer the pending requests get.
type reconcileFunc func(rec *rtm.Record) (apply func(r *rtm.Record), answer rtm.Answer)

// converge is the reconciler that always reaches the desired state.
func converge(rec *rtm.Record) (func(*rtm.Record), rtm.Answer) {
	return func(r *rtm.Record) {
		switch r.DesiredState {
		case rtm.DesiredRunning:
			r.Status, r.CurrentImageRef = rtm.StatusRunning, r.DesiredImageRef
			r.CurrentContainerID = fmt.Sprintf("c%d", rec.Generation)
		case rtm.DesiredStopped:
			r.Status = rtm.StatusStopped
		case rtm.DesiredRemoved:
			r.Status, r.CurrentContainerID = rtm.StatusRemoved, ""
		}
	}, rtm.Succeeded
}

// rollBack is the reconciler whose patched engine fails its probe: the old image runs again.
func rollBack(rec *rtm.Record) (func(*rtm.Record), rtm.Answer) {
	return func(r *rtm.Record) {
			r.DesiredImageRef, r.Status = r.CurrentImageRef, rtm.StatusRunning
			r.LastErrorCode, r.LastErrorMessage = rtm.CodePatchRolledBack, "probe failed"
		}, rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodePatchRolledBack,
			Message: "the patched engine failed its probe; " + rec.CurrentImageRef + " runs again"}
}

type fixture struct {
	st  *store.Store
	srv *httptest.Server
	log *testenv.SyncBuffer
}

type options struct {
	reconcile   reconcileFunc // nil: Enqueue does nothing
	token       string
	wait        time.Duration
	meter       *sdkmetric.MeterProvider
	tracer      *sdktrace.TracerProvider
	wrapStore   func(Store) Store
	noReconcile bool
}

// newIntake is the intake the API gets in production, over st, enqueueing with enqueue (nil: none).
func newIntake(st rtm.Recorder, enqueue func(string)) *rtm.Intake {
	return &rtm.Intake{Store: st, Enqueue: enqueue, Allowed: []string{"galaxy/game"},
		Settings: rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/var/lib/galaxy/games/" + id }}}
}

// newFixture serves the API, mounted by NewHandler as in production, over a fresh database. Its
// Enqueue runs o.reconcile (converge by default) synchronously, as one reconcile would.
func newFixture(t *testing.T, o options) *fixture {
	t.Helper()
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := store.Migrate(ctx, dsn); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	st, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(st.Close)
	if o.reconcile == nil && !o.noReconcile {
		o.reconcile = converge
	}
	enqueue := func(string) {}
	if o.reconcile != nil {
		reconcile := o.reconcile
		enqueue = func(gameID string) {
			rec, err := st.Get(ctx, gameID)
			if err != nil {
				t.Errorf("fake reconciler: %v", err)
				return
			}
			apply, answer := reconcile(rec)
			_, err = st.Commit(ctx, rtm.Change{GameID: gameID, Gen: rec.Generation, Answer: &answer,
				Apply: func(r *rtm.Record, current bool) {
					apply(r)
					r.ObservedGeneration = rec.Generation
				}})
			if err != nil {
				t.Errorf("fake reconciler: %v", err)
			}
		}
	}
	f := &fixture{st: st, log: &testenv.SyncBuffer{}}
	var s Store = st
	if o.wrapStore != nil {
		s = o.wrapStore(st)
	}
	apiOpts := APIOptions{Store: s, Intake: newIntake(st, enqueue), Allowed: []string{"galaxy/game"}, Token: o.token,
		WaitTimeout: o.wait, Log: slog.New(slog.NewJSONHandler(f.log, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if o.meter != nil {
		apiOpts.Meter = o.meter.Meter("test")
	}
	if o.tracer != nil {
		apiOpts.Tracer = o.tracer.Tracer("test")
	}
	f.srv = httptest.NewServer(NewHandler(Options{API: NewAPI(apiOpts)}))
	t.Cleanup(f.srv.Close)
	return f
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends method to BasePath+path (a raw, already escaped path) as caller ("" sends no header)
// with body ("" sends none) and extra header pairs.
func (f *fixture) do(t *testing.T, method, path, caller, body string, header ...string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return f.send(t, method, path, caller, rd, header...)
}

func (f *fixture) send(t *testing.T, method, path, caller string, body io.Reader, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+BasePath+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if caller != "" {
		req.Header.Set(CallerHeader, caller)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// want fails unless r has status and, when code is set, the envelope with that code.
func (r response) want(t *testing.T, status int, code rtm.ErrorCode) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if code == "" {
		return
	}
	var e ErrorBody
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Code != code || e.Error.Message == "" {
		t.Fatalf("body %s, want the envelope with code %s", r.body, code)
	}
}

func (r response) record(t *testing.T) rtm.Record {
	t.Helper()
	var rec rtm.Record
	if err := json.Unmarshal(r.body, &rec); err != nil {
		t.Fatalf("record %s: %v", r.body, err)
	}
	return rec
}

// okBody fails unless r is a 200, and returns its body decoded as a T.
func okBody[T any](t *testing.T, r response) T {
	t.Helper()
	r.want(t, 200, "")
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("body %s: %v", r.body, err)
	}
	return v
}

// start runs gameID on image through the API.
func (f *fixture) start(t *testing.T, gameID, image string) rtm.Record {
	t.Helper()
	r := f.do(t, "POST", "/runtimes/"+gameID+"/start", "admin", `{"image_ref":"`+image+`"}`)
	r.want(t, http.StatusOK, "")
	return r.record(t)
}

func (f *fixture) operations(t *testing.T, gameID string) []rtm.Operation {
	t.Helper()
	ops, err := f.st.Operations(context.Background(), gameID, 100)
	if err != nil {
		t.Fatal(err)
	}
	return ops
}

func TestAPI_auth_callers(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	tests := []struct {
		name, method, path, caller, body string
		status                           int
		code                             rtm.ErrorCode
	}{
		{"get without caller", "GET", "/runtimes/g1", "", "", 200, ""},
		{"get as lobby", "GET", "/runtimes/g1", "lobby", "", 200, ""},
		{"get as gm", "GET", "/runtimes/g1", "gm", "", 200, ""},
		{"list as admin", "GET", "/runtimes", "admin", "", 200, ""},
		{"get as unknown", "GET", "/runtimes/g1", "mallory", "", 403, rtm.CodeForbidden},
		{"list as unknown", "GET", "/runtimes", "Admin", "", 403, rtm.CodeForbidden},
		{"health as unknown", "GET", "/runtimes/g1/health", "root", "", 403, rtm.CodeForbidden},
		{"stop without caller", "POST", "/runtimes/g1/stop", "", `{"reason":"x"}`, 403, rtm.CodeForbidden},
		{"stop as lobby", "POST", "/runtimes/g1/stop", "lobby", `{"reason":"x"}`, 403, rtm.CodeForbidden},
		{"stop as unknown", "POST", "/runtimes/g1/stop", "ops", `{"reason":"x"}`, 403, rtm.CodeForbidden},
		{"start as lobby", "POST", "/runtimes/g2/start", "lobby", `{"image_ref":"` + img141 + `"}`, 403, rtm.CodeForbidden},
		{"cleanup without caller", "DELETE", "/runtimes/g1/container", "", "", 403, rtm.CodeForbidden},
		{"unknown route as unknown", "GET", "/nothing", "ops", "", 403, rtm.CodeForbidden},
		{"restart as gm", "POST", "/runtimes/g1/restart", "gm", `{}`, 200, ""},
		{"stop as admin", "POST", "/runtimes/g1/stop", "admin", `{"reason":"admin_request"}`, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.do(t, tt.method, tt.path, tt.caller, tt.body).want(t, tt.status, tt.code)
		})
	}
	// Refused callers left no trace; the allowed ones are logged with their source.
	var got []string
	for _, op := range f.operations(t, "g1") {
		got = append(got, string(op.Kind)+"/"+string(op.Source))
	}
	want := "stop/admin_rest restart/gm_rest start/admin_rest"
	if strings.Join(got, " ") != want {
		t.Fatalf("operations %v, want %s", got, want)
	}
	if ops := f.operations(t, "g2"); len(ops) != 0 {
		t.Fatalf("lobby's refused start was recorded: %+v", ops)
	}
}

func TestAPI_auth_token(t *testing.T) {
	f := newFixture(t, options{token: "s3cret"})
	f.do(t, "GET", "/runtimes", "", "", "Authorization", "Bearer s3cret").want(t, 200, "")
	f.do(t, "GET", "/runtimes", "", "", "Authorization", "bearer s3cret").want(t, 200, "")
	r := f.do(t, "GET", "/runtimes", "", "")
	r.want(t, 401, rtm.CodeUnauthenticated)
	if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
	}
	tests := []struct{ name, method, path, caller, auth string }{
		{"wrong token", "GET", "/runtimes", "admin", "Bearer s3cre"},
		{"longer token", "GET", "/runtimes", "admin", "Bearer s3cret2"},
		{"basic scheme", "GET", "/runtimes", "admin", "Basic s3cret"},
		{"no scheme", "GET", "/runtimes", "admin", "s3cret"},
		{"mutation", "POST", "/runtimes/g1/restart", "admin", ""},
		{"unknown caller too: token first", "GET", "/runtimes", "mallory", ""},
		{"unknown route", "GET", "/nothing", "admin", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.do(t, tt.method, tt.path, tt.caller, "", "Authorization", tt.auth).want(t, 401, rtm.CodeUnauthenticated)
		})
	}
	f.do(t, "GET", "/runtimes", "mallory", "", "Authorization", "Bearer s3cret").want(t, 403, rtm.CodeForbidden)
	f.do(t, "POST", "/runtimes/g1/start", "gm", `{"image_ref":"`+img141+`"}`, "Authorization", "Bearer s3cret").want(t, 200, "")
}

func TestAPI_getRuntime_record(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	r := f.do(t, "GET", "/runtimes/g1", "", "")
	fields := okBody[map[string]any](t, r)
	// CONTRACT §6: the record carries the runtime_records columns under the same names.
	for _, col := range []string{"game_id", "status", "desired_state", "desired_image_ref", "current_image_ref",
		"current_container_id", "engine_endpoint", "state_dir", "last_error_code", "last_error_message",
		"created_at", "updated_at"} {
		if _, ok := fields[col]; !ok {
			t.Errorf("record lacks %s: %s", col, r.body)
		}
	}
	rec := r.record(t)
	if rec.GameID != "g1" || rec.Status != rtm.StatusRunning || rec.CurrentImageRef != img141 ||
		rec.EngineEndpoint != "http://galaxy-game-g1:8080" {
		t.Fatalf("record %+v", rec)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	f.do(t, "GET", "/runtimes/nobody", "", "").want(t, 404, rtm.CodeRuntimeNotFound)
}

func TestAPI_routing_invalidGameID(t *testing.T) {
	f := newFixture(t, options{})
	tests := []struct {
		name, method, path, body string
	}{
		{"starts with dash", "GET", "/runtimes/-g1", ""},
		{"dot", "GET", "/runtimes/g.1", ""},
		{"too long", "GET", "/runtimes/" + strings.Repeat("a", 65), ""},
		{"encoded slash", "GET", "/runtimes/a%2Fb/health", ""},
		{"encoded traversal start", "POST", "/runtimes/..%2F..%2Fetc/start", `{"image_ref":"` + img141 + `"}`},
		{"encoded traversal cleanup", "DELETE", "/runtimes/..%2F..%2Fetc/container", ""},
		{"encoded dot dot", "POST", "/runtimes/%2E%2E/stop", `{}`},
		{"space", "GET", "/runtimes/a%20b/operations", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.do(t, tt.method, tt.path, "admin", tt.body).want(t, 400, rtm.CodeInvalidRequest)
		})
	}
	// A literal traversal is cleaned by the listener's mux: a redirect to a path outside the
	// API, never a handler of it.
	r := f.do(t, "POST", "/runtimes/../../../etc/start", "admin", `{"image_ref":"`+img141+`"}`)
	if r.status != http.StatusTemporaryRedirect && r.status != 400 && r.status != 404 {
		t.Fatalf("literal traversal: %d %s", r.status, r.body)
	}
	recs, err := f.st.List(context.Background(), rtm.ListFilter{Limit: 10})
	if err != nil || len(recs) != 0 {
		t.Fatalf("records after invalid ids: %v %v", recs, err)
	}
}

func TestAPI_routing_unknown(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	for _, tt := range []struct{ name, method, path string }{
		{"no such path", "GET", "/games"},
		{"trailing slash", "GET", "/runtimes/"},
		{"deeper", "GET", "/runtimes/g1/health/more"},
		{"base", "GET", "/"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.do(t, tt.method, tt.path, "", "").want(t, 404, rtm.CodeInvalidRequest)
		})
	}
	for _, tt := range []struct{ name, method, path, allow string }{
		{"post to record", "POST", "/runtimes/g1", "GET, HEAD"},
		{"get start", "GET", "/runtimes/g1/start", "POST"},
		{"put list", "PUT", "/runtimes", "GET, HEAD"},
		{"post container", "POST", "/runtimes/g1/container", "DELETE"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(t, tt.method, tt.path, "admin", "")
			r.want(t, 405, rtm.CodeInvalidRequest)
			if r.header.Get("Allow") != tt.allow {
				t.Fatalf("Allow %q, want %q", r.header.Get("Allow"), tt.allow)
			}
		})
	}
}

func TestAPI_listRuntimes_paging(t *testing.T) {
	f := newFixture(t, options{})
	r := f.do(t, "GET", "/runtimes", "", "")
	r.want(t, 200, "")
	if strings.TrimSpace(string(r.body)) != `{"runtimes":[]}` {
		t.Fatalf("empty list %s", r.body)
	}
	ids := []string{"a1", "a2", "b1", "b2", "c1"}
	for _, id := range ids {
		f.start(t, id, img141)
	}
	f.do(t, "POST", "/runtimes/b1/stop", "admin", `{"reason":"admin_request"}`).want(t, 200, "")

	page := func(query string) RuntimeList {
		t.Helper()
		return okBody[RuntimeList](t, f.do(t, "GET", "/runtimes"+query, "", ""))
	}
	var seen []string
	query := "?limit=2"
	for n := 0; ; n++ {
		l := page(query)
		if len(l.Runtimes) > 2 || n > 3 {
			t.Fatalf("page %d: %+v", n, l)
		}
		for _, rec := range l.Runtimes {
			seen = append(seen, rec.GameID)
		}
		if l.NextCursor == "" {
			break
		}
		query = "?limit=2&cursor=" + l.NextCursor
	}
	if strings.Join(seen, ",") != strings.Join(ids, ",") {
		t.Fatalf("paged through %v, want %v", seen, ids)
	}
	if l := page("?limit=5"); len(l.Runtimes) != 5 || l.NextCursor != "" {
		t.Fatalf("an exact last page has a cursor: %+v", l)
	}
	if l := page(""); len(l.Runtimes) != 5 {
		t.Fatalf("default limit: %d records", len(l.Runtimes))
	}
	if l := page("?status=stopped"); len(l.Runtimes) != 1 || l.Runtimes[0].GameID != "b1" {
		t.Fatalf("status=stopped: %+v", l)
	}
	if l := page("?status=running&limit=3"); len(l.Runtimes) != 3 || l.NextCursor == "" {
		t.Fatalf("status=running: %+v", l)
	}
	if l := page("?status=removed"); len(l.Runtimes) != 0 {
		t.Fatalf("status=removed: %+v", l)
	}
	for _, q := range []string{"?status=up", "?status=RUNNING", "?limit=0", "?limit=501", "?limit=ten",
		"?limit=-1", "?cursor=***", "?cursor=" + encodeCursor("../x")} {
		t.Run(q, func(t *testing.T) {
			f.do(t, "GET", "/runtimes"+q, "", "").want(t, 400, rtm.CodeInvalidRequest)
		})
	}
	if l := page("?limit=500"); len(l.Runtimes) != 5 {
		t.Fatalf("limit=500: %d", len(l.Runtimes))
	}
}

func TestAPI_listOperations_newestFirst(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	f.do(t, "POST", "/runtimes/g1/restart", "gm", "").want(t, 200, "")
	f.do(t, "POST", "/runtimes/g1/stop", "admin", "").want(t, 200, "")
	l := okBody[OperationList](t, f.do(t, "GET", "/runtimes/g1/operations", "", ""))
	var kinds []string
	for _, op := range l.Operations {
		kinds = append(kinds, string(op.Kind))
	}
	if strings.Join(kinds, ",") != "stop,restart,start" {
		t.Fatalf("operations newest first: %v", kinds)
	}
	if start := l.Operations[2]; start.Outcome != rtm.OutcomeSucceeded || start.NewImageRef != img141 ||
		start.Source != rtm.SourceAdminREST || !strings.HasPrefix(start.RequestID, "rest-") {
		t.Fatalf("start row %+v", start)
	}
	if l := okBody[OperationList](t, f.do(t, "GET", "/runtimes/g1/operations?limit=1", "", "")); len(l.Operations) != 1 || l.Operations[0].Kind != rtm.OpStop {
		t.Fatalf("limit=1: %+v", l)
	}
	f.do(t, "GET", "/runtimes/g1/operations?limit=501", "", "").want(t, 400, rtm.CodeInvalidRequest)
	f.do(t, "GET", "/runtimes/nobody/operations", "", "").want(t, 404, rtm.CodeRuntimeNotFound)

	// A REST request refused up front leaves no row; a stop job for an unknown game does, and
	// the operations route shows it although the game has no record.
	f.do(t, "POST", "/runtimes/ghost/stop", "admin", "").want(t, 404, rtm.CodeRuntimeNotFound)
	f.do(t, "GET", "/runtimes/ghost/operations", "", "").want(t, 404, rtm.CodeRuntimeNotFound)
	job := rtm.Request{Channel: rtm.ChannelStopJobs, RequestID: "1-0", GameID: "ghost", Kind: rtm.OpStop,
		Source: rtm.SourceStopJobs, Reason: "unspecified", ReceivedAt: time.Now().UTC()}
	if _, err := f.st.Submit(context.Background(), job, func(rec *rtm.Record, busy bool) rtm.Admission {
		return rtm.Admit(rec, job, busy, rtm.Settings{})
	}); err != nil {
		t.Fatal(err)
	}
	r := f.do(t, "GET", "/runtimes/ghost/operations", "", "")
	r.want(t, 200, "")
	if !strings.Contains(string(r.body), `"error_code":"runtime_not_found"`) {
		t.Fatalf("ghost operations %s", r.body)
	}
}

func TestAPI_getHealth_snapshot(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	if h := okBody[map[string]any](t, f.do(t, "GET", "/runtimes/g1/health", "", "")); h["game_id"] != "g1" ||
		h["status"] != "unknown" || h["updated_at"] != nil {
		t.Fatalf("no snapshot yet: %v", h)
	}
	err := f.st.CommitHealth(context.Background(), []rtm.HealthEvent{{GameID: "g1", Type: rtm.EventContainerExited,
		ContainerID: "c1", ExitCode: rtm.IntPtr(3), DockerState: "exited", ObservedAt: time.Now()}})
	if err != nil {
		t.Fatal(err)
	}
	got := okBody[Health](t, f.do(t, "GET", "/runtimes/g1/health", "lobby", ""))
	if got.Status != rtm.HealthUnhealthy || got.LastEventType != rtm.EventContainerExited || got.ExitCode == nil ||
		*got.ExitCode != 3 || got.DockerState != "exited" || got.UpdatedAt == nil {
		t.Fatalf("snapshot %+v", got)
	}
	f.do(t, "GET", "/runtimes/nobody/health", "", "").want(t, 404, rtm.CodeRuntimeNotFound)
}

func TestAPI_start_admission(t *testing.T) {
	f := newFixture(t, options{})
	rec := f.start(t, "g1", img141)
	if rec.Status != rtm.StatusRunning || rec.DesiredState != rtm.DesiredRunning || rec.CurrentImageRef != img141 ||
		rec.StateDir != "/var/lib/galaxy/games/g1" {
		t.Fatalf("started %+v", rec)
	}
	// The same image again is answered at once; another is a conflict.
	f.do(t, "POST", "/runtimes/g1/start", "gm", `{"image_ref":"`+img141+`"}`).want(t, 200, "")
	f.do(t, "POST", "/runtimes/g1/start", "admin", `{"image_ref":"`+img142+`"}`).want(t, 409, rtm.CodeConflict)
	for _, tt := range []struct {
		name, body string
		status     int
		code       rtm.ErrorCode
	}{
		{"outside the allow-list", `{"image_ref":"other/game:1.4.1"}`, 422, rtm.CodeStartConfigInvalid},
		{"not a reference", `{"image_ref":"Galaxy Game!"}`, 422, rtm.CodeStartConfigInvalid},
		{"tag not semver", `{"image_ref":"galaxy/game:latest"}`, 422, rtm.CodeStartConfigInvalid},
		{"no tag", `{"image_ref":"galaxy/game"}`, 422, rtm.CodeStartConfigInvalid},
		{"missing image_ref", `{}`, 400, rtm.CodeInvalidRequest},
		{"empty image_ref", `{"image_ref":""}`, 400, rtm.CodeInvalidRequest},
		{"null body", `null`, 400, rtm.CodeInvalidRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.do(t, "POST", "/runtimes/g2/start", "admin", tt.body).want(t, tt.status, tt.code)
		})
	}
	f.do(t, "POST", "/runtimes/g2/start", "admin", "").want(t, 400, rtm.CodeInvalidRequest)
	if _, err := f.st.Get(context.Background(), "g2"); err == nil {
		t.Fatal("a refused start created a record")
	}
}

func TestAPI_stop_thenCleanup(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	f.do(t, "DELETE", "/runtimes/g1/container", "admin", "").want(t, 409, rtm.CodeRuntimeRunning)
	r := f.do(t, "POST", "/runtimes/g1/stop", "admin", `{"reason":"admin_request"}`)
	r.want(t, 200, "")
	if rec := r.record(t); rec.Status != rtm.StatusStopped || rec.DesiredState != rtm.DesiredStopped {
		t.Fatalf("stopped %+v", rec)
	}
	// Stopping a stopped game succeeds at once; an empty body is {}.
	f.send(t, "POST", "/runtimes/g1/stop", "gm", nil).want(t, 200, "")
	r = f.send(t, "DELETE", "/runtimes/g1/container", "admin", nil)
	r.want(t, 200, "")
	if rec := r.record(t); rec.Status != rtm.StatusRemoved || rec.DesiredState != rtm.DesiredRemoved {
		t.Fatalf("cleaned up %+v", rec)
	}
	// One cleanup row: the refusal while running was answered without being recorded.
	var cleanups []rtm.Operation
	for _, op := range f.operations(t, "g1") {
		if op.Kind == rtm.OpCleanupContainer {
			cleanups = append(cleanups, op)
		}
	}
	if len(cleanups) != 1 || cleanups[0].Source != rtm.SourceAdminREST || cleanups[0].Outcome != rtm.OutcomeSucceeded {
		t.Fatalf("cleanup rows %+v", cleanups)
	}
	// Restart brings a removed game back with its image.
	r = f.do(t, "POST", "/runtimes/g1/restart", "gm", `{}`)
	r.want(t, 200, "")
	if rec := r.record(t); rec.Status != rtm.StatusRunning || rec.CurrentImageRef != img141 {
		t.Fatalf("restarted %+v", rec)
	}
	for _, path := range []string{"/runtimes/nobody/stop", "/runtimes/nobody/restart"} {
		f.do(t, "POST", path, "admin", `{}`).want(t, 404, rtm.CodeRuntimeNotFound)
	}
	f.do(t, "DELETE", "/runtimes/nobody/container", "admin", "").want(t, 404, rtm.CodeRuntimeNotFound)
	f.do(t, "POST", "/runtimes/g1/stop", "admin", `{"reason":"`+strings.Repeat("r", 1025)+`"}`).want(t, 400, rtm.CodeInvalidRequest)
}

func TestAPI_patch_semver(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	for _, tt := range []struct {
		name, image string
		code        rtm.ErrorCode
	}{
		{"cross minor", img150, rtm.CodeSemverPatchOnly},
		{"cross major", "galaxy/game:2.0.0", rtm.CodeSemverPatchOnly},
		{"not semver", "galaxy/game:latest", rtm.CodeImageRefNotSemver},
		{"no tag", "galaxy/game", rtm.CodeImageRefNotSemver},
		{"outside the allow-list", "other/game:1.4.2", rtm.CodeStartConfigInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.do(t, "POST", "/runtimes/g1/patch", "admin", `{"image_ref":"`+tt.image+`"}`).want(t, 422, tt.code)
		})
	}
	r := f.do(t, "POST", "/runtimes/g1/patch", "admin", `{"image_ref":"`+img142+`"}`)
	r.want(t, 200, "")
	if rec := r.record(t); rec.CurrentImageRef != img142 || rec.EngineEndpoint != "http://galaxy-game-g1:8080" {
		t.Fatalf("patched %+v", rec)
	}
	op := f.operations(t, "g1")[0]
	if op.Kind != rtm.OpPatch || op.OldImageRef != img141 || op.NewImageRef != img142 || op.Source != rtm.SourceAdminREST ||
		op.RequestID != r.header.Get(RequestIDHeader) {
		t.Fatalf("patch row %+v (request id %s)", op, r.header.Get(RequestIDHeader))
	}
	// Patching to the image it runs is a no-op success.
	f.do(t, "POST", "/runtimes/g1/patch", "admin", `{"image_ref":"`+img142+`"}`).want(t, 200, "")
	f.do(t, "POST", "/runtimes/nobody/patch", "admin", `{"image_ref":"`+img142+`"}`).want(t, 404, rtm.CodeRuntimeNotFound)
	f.do(t, "POST", "/runtimes/g1/patch", "admin", `{}`).want(t, 400, rtm.CodeInvalidRequest)
	f.do(t, "POST", "/runtimes/g1/stop", "admin", `{}`).want(t, 200, "")
	f.do(t, "POST", "/runtimes/g1/patch", "admin", `{"image_ref":"galaxy/game:1.4.3"}`).want(t, 409, rtm.CodeConflict)
}

func TestAPI_patch_rolledBack(t *testing.T) {
	var mu sync.Mutex
	patching := false
	f := newFixture(t, options{reconcile: func(rec *rtm.Record) (func(*rtm.Record), rtm.Answer) {
		mu.Lock()
		defer mu.Unlock()
		if patching {
			return rollBack(rec)
		}
		return converge(rec)
	}})
	f.start(t, "g1", img141)
	mu.Lock()
	patching = true
	mu.Unlock()
	f.do(t, "POST", "/runtimes/g1/patch", "admin", `{"image_ref":"`+img142+`"}`).want(t, 409, rtm.CodePatchRolledBack)
	r := f.do(t, "GET", "/runtimes/g1", "", "")
	if rec := r.record(t); rec.Status != rtm.StatusRunning || rec.CurrentImageRef != img141 {
		t.Fatalf("after the rollback %+v", rec)
	}
	if op := f.operations(t, "g1")[0]; op.Kind != rtm.OpPatch || op.ErrorCode != rtm.CodePatchRolledBack {
		t.Fatalf("patch row %+v", op)
	}
}

func TestAPI_mutation_timeout(t *testing.T) {
	f := newFixture(t, options{noReconcile: true, wait: 200 * time.Millisecond})
	began := time.Now()
	r := f.do(t, "POST", "/runtimes/g1/start", "admin", `{"image_ref":"`+img141+`"}`)
	r.want(t, 202, "")
	if took := time.Since(began); took < 200*time.Millisecond {
		t.Fatalf("answered after %v, before the wait timeout", took)
	}
	if rec := r.record(t); rec.Status != rtm.StatusStarting || rec.DesiredState != rtm.DesiredRunning || rec.Settled() {
		t.Fatalf("pending record %+v", rec)
	}
	if loc := r.header.Get("Location"); loc != BasePath+"/runtimes/g1" {
		t.Fatalf("Location %q", loc)
	}
	// While the start is pending, another kind of request is refused; the same kind joins it.
	// The refusal is decided once, under the record's lock, and leaves no trace: no operation
	// row, and the pending start is still the only request of the game.
	stop := f.do(t, "POST", "/runtimes/g1/stop", "admin", `{}`)
	stop.want(t, 409, rtm.CodeConflict)
	if ops := f.operations(t, "g1"); len(ops) != 0 {
		t.Fatalf("the refused stop left operation rows %+v", ops)
	}
	if _, err := f.st.RequestAnswer(context.Background(), rtm.ChannelREST, stop.header.Get("X-Request-Id")); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("the refused stop was recorded: %v", err)
	}
	f.do(t, "POST", "/runtimes/g1/start", "gm", `{"image_ref":"`+img141+`"}`).want(t, 202, "")
}

func TestAPI_decodeBody_refusals(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	big := `{"image_ref":"` + strings.Repeat("a", 2<<20) + `"}`
	for _, tt := range []struct {
		name, path, body, contentType string
	}{
		{"unknown field", "/runtimes/g1/patch", `{"image_ref":"` + img142 + `","force":true}`, ""},
		{"unknown field on restart", "/runtimes/g1/restart", `{"now":true}`, ""},
		{"broken JSON", "/runtimes/g1/patch", `{"image_ref":`, ""},
		{"trailing garbage", "/runtimes/g1/stop", `{"reason":"x"} x`, ""},
		{"two objects", "/runtimes/g1/stop", `{"reason":"x"}{}`, ""},
		{"wrong type", "/runtimes/g1/stop", `{"reason":5}`, ""},
		{"array", "/runtimes/g1/restart", `[]`, ""},
		{"string", "/runtimes/g1/restart", `"{}"`, ""},
		{"form content type", "/runtimes/g1/restart", `{}`, "application/x-www-form-urlencoded"},
		{"text content type", "/runtimes/g1/restart", `{}`, "text/plain"},
		{"over 1 MiB", "/runtimes/g1/start", big, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.contentType != "" {
				hdr = []string{"Content-Type", tt.contentType}
			}
			f.do(t, "POST", tt.path, "admin", tt.body, hdr...).want(t, 400, rtm.CodeInvalidRequest)
		})
	}
	t.Run("over 1 MiB without length", func(t *testing.T) {
		// A reader of unknown length is sent chunked: the limit holds while reading too.
		body := io.MultiReader(strings.NewReader(big))
		f.send(t, "POST", "/runtimes/g1/start", "admin", body).want(t, 400, rtm.CodeInvalidRequest)
	})
	f.do(t, "POST", "/runtimes/g1/restart", "admin", " {}\n", "Content-Type", "application/json; charset=utf-8").want(t, 200, "")
	f.do(t, "POST", "/runtimes/g1/restart", "admin", "{}", "Content-Type", "").want(t, 200, "")
	if op := f.operations(t, "g1")[0]; op.Kind != rtm.OpRestart {
		t.Fatalf("last row %+v", op)
	}
}

// TestAPI_store_unavailable closes the store's pool: every call then fails as when the database is
// gone, and every route answers 503 without the cause.
func TestAPI_store_unavailable(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "g1", img141)
	f.st.Close()
	for _, tt := range []struct{ name, method, path, body string }{
		{"get", "GET", "/runtimes/g1", ""},
		{"list", "GET", "/runtimes", ""},
		{"operations", "GET", "/runtimes/g1/operations", ""},
		{"health", "GET", "/runtimes/g1/health", ""},
		{"stop", "POST", "/runtimes/g1/stop", `{}`},
		{"patch", "POST", "/runtimes/g1/patch", `{"image_ref":"` + img142 + `"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(t, tt.method, tt.path, "admin", tt.body)
			r.want(t, 503, rtm.CodeServiceUnavailable)
			if strings.Contains(string(r.body), "closed") {
				t.Fatalf("the cause leaked to the caller: %s", r.body)
			}
		})
	}
	if !strings.Contains(f.log.String(), `"level":"WARN"`) {
		t.Fatalf("no warning logged for the 503s:\n%s", f.log.String())
	}
}

type panickyStore struct{ Store }

func (panickyStore) Get(context.Context, string) (*rtm.Record, error) { panic("boom") }

func TestAPI_recover_panic(t *testing.T) {
	f := newFixture(t, options{wrapStore: func(s Store) Store { return panickyStore{s} }})
	f.do(t, "GET", "/runtimes/g1", "", "").want(t, 500, rtm.CodeInternalError)
	log := f.log.String()
	if !strings.Contains(log, "panic: boom") || !strings.Contains(log, `"status":500`) {
		t.Fatalf("the panic was not logged:\n%s", log)
	}
	f.do(t, "GET", "/runtimes", "", "").want(t, 200, "") // the server lives on
}

func TestAPI_telemetry_spansMetricsLogs(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	spans := tracetest.NewSpanRecorder()
	f := newFixture(t, options{
		meter:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
		tracer: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)),
	})
	r := f.do(t, "POST", "/runtimes/g1/start", "gm", `{"image_ref":"`+img141+`"}`)
	r.want(t, 200, "")
	f.do(t, "GET", "/runtimes/nobody", "", "").want(t, 404, rtm.CodeRuntimeNotFound)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	var latencies uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name != RequestsMetric {
					continue
				}
				for _, dp := range data.DataPoints {
					counts[attr(dp.Attributes, "route")+" "+attr(dp.Attributes, "code")+" "+attr(dp.Attributes, "caller")] += dp.Value
				}
			case metricdata.Histogram[float64]:
				if m.Name != LatencyMetric || m.Unit != "s" {
					continue
				}
				for _, dp := range data.DataPoints {
					latencies += dp.Count
				}
			}
		}
	}
	for _, k := range []string{"POST /api/v1/internal/runtimes/{game_id}/start 200 gm",
		"GET /api/v1/internal/runtimes/{game_id} 404 none"} {
		if counts[k] != 1 {
			t.Errorf("%s counted %d times; counts %v", RequestsMetric, counts[k], counts)
		}
	}
	if latencies != 2 {
		t.Errorf("%s has %d samples, want 2", LatencyMetric, latencies)
	}

	ended := spans.Ended()
	if len(ended) != 2 {
		t.Fatalf("%d spans, want 2", len(ended))
	}
	s := ended[0]
	if s.Name() != "POST /api/v1/internal/runtimes/{game_id}/start" || attr(attribute.NewSet(s.Attributes()...), "game_id") != "g1" ||
		attr(attribute.NewSet(s.Attributes()...), "caller") != "gm" ||
		attr(attribute.NewSet(s.Attributes()...), "http.response.status_code") != "200" {
		t.Fatalf("span %s %v", s.Name(), s.Attributes())
	}
	id := r.header.Get(RequestIDHeader)
	if !strings.Contains(f.log.String(), `"request_id":"`+id+`"`) {
		t.Fatalf("request %s not logged:\n%s", id, f.log.String())
	}
}

func attr(set attribute.Set, key string) string {
	v, ok := set.Value(attribute.Key(key))
	if !ok {
		return ""
	}
	return v.String()
}
