package httpapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// logsCall is one call of fakeLogs.Logs.
type logsCall struct {
	gameID             string
	tail               int
	follow, timestamps bool
}

// fakeLogs stands in for the Docker adapter: it answers with err, or with text (followed, when
// stream is set, by what the test writes to it).
type fakeLogs struct {
	text   string
	err    error
	stream *io.PipeReader // when set, read after text until it ends

	mu    sync.Mutex
	calls []logsCall
	// ended is closed when the context of the first Logs call ends.
	ended chan struct{}
	once  sync.Once
}

func newFakeLogs(text string) *fakeLogs { return &fakeLogs{text: text, ended: make(chan struct{})} }

func (f *fakeLogs) Logs(ctx context.Context, gameID string, tail int, follow, timestamps bool) (io.ReadCloser, error) {
	f.mu.Lock()
	f.calls = append(f.calls, logsCall{gameID, tail, follow, timestamps})
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var r io.Reader = strings.NewReader(f.text)
	if f.stream != nil {
		r = io.MultiReader(r, f.stream)
	}
	context.AfterFunc(ctx, func() {
		if f.stream != nil {
			_ = f.stream.CloseWithError(ctx.Err())
		}
		f.once.Do(func() { close(f.ended) })
	})
	return io.NopCloser(r), nil
}

func (f *fakeLogs) called() []logsCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]logsCall(nil), f.calls...)
}

// failingStore answers every Get with an error that is not ErrNotFound (a database down).
type failingStore struct{ Store }

func (failingStore) Get(context.Context, string) (*rtm.Record, error) {
	return nil, errors.New("connection refused")
}

// newLogsServer serves the API with logs over a store double holding a running game (none
// when rec is nil), behind a listener with the given write timeout (none when zero).
func newLogsServer(t *testing.T, st Store, logs EngineLogs, draining <-chan struct{}, writeTimeout time.Duration, token string) *httptest.Server {
	t.Helper()
	if st == nil {
		st = &recordingStore{rec: fuzzRecords[1]}
	}
	api := NewAPI(APIOptions{Store: st, Logs: logs, Draining: draining, Version: "v9.8.7", Token: token,
		Log: slog.New(slog.DiscardHandler), Allowed: []string{"galaxy/game"}})
	srv := httptest.NewUnstartedServer(NewHandler(Options{API: api}))
	srv.Config.WriteTimeout = writeTimeout
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url, caller string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if caller != "" {
		req.Header.Set(CallerHeader, caller)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

func TestAPI_getLogs_streamsTextWithTheQuery(t *testing.T) {
	logs := newFakeLogs("engine: serving on :8080\nengine: second line\n")
	srv := newLogsServer(t, nil, logs, nil, 0, "")
	tests := []struct {
		name, query string
		want        logsCall
	}{
		{"defaults", "", logsCall{"g1", DefaultLogTail, false, false}},
		{"tail and timestamps", "?tail=5&timestamps=true", logsCall{"g1", 5, false, true}},
		{"no past lines", "?tail=0&follow=false&timestamps=0", logsCall{"g1", 0, false, false}},
		{"the most", fmt.Sprintf("?tail=%d", MaxLogTail), logsCall{"g1", MaxLogTail, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(logs.called())
			r := get(t, srv.URL+BasePath+"/runtimes/g1/logs"+tt.query, "")
			r.want(t, http.StatusOK, "")
			if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if r.header.Get(RequestIDHeader) == "" || r.header.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("headers %v", r.header)
			}
			if string(r.body) != logs.text {
				t.Errorf("body %q, want %q", r.body, logs.text)
			}
			calls := logs.called()
			if len(calls) != before+1 || calls[before] != tt.want {
				t.Errorf("Logs called with %+v, want %+v", calls[before:], tt.want)
			}
		})
	}
}

func TestAPI_getLogs_refusals(t *testing.T) {
	tests := []struct {
		name, query string
		store       Store
		err         error
		status      int
		code        rtm.ErrorCode
		wantCall    bool
	}{
		{"negative tail", "?tail=-1", nil, nil, 400, rtm.CodeInvalidRequest, false},
		{"tail over the bound", fmt.Sprintf("?tail=%d", MaxLogTail+1), nil, nil, 400, rtm.CodeInvalidRequest, false},
		{"tail not a number", "?tail=all", nil, nil, 400, rtm.CodeInvalidRequest, false},
		{"follow not a boolean", "?follow=maybe", nil, nil, 400, rtm.CodeInvalidRequest, false},
		{"timestamps not a boolean", "?timestamps=yes", nil, nil, 400, rtm.CodeInvalidRequest, false},
		{"unknown game", "", &recordingStore{}, nil, 404, rtm.CodeRuntimeNotFound, false},
		{"database down", "", failingStore{&recordingStore{}}, nil, 503, rtm.CodeServiceUnavailable, false},
		{"no container", "", nil, fmt.Errorf("inspecting: %w", rtm.ErrNotFound), 404, rtm.CodeRuntimeNotFound, true},
		{"nothing to read", "", nil, fmt.Errorf("driver none: %w", rtm.ErrConflict), 409, rtm.CodeConflict, true},
		{"docker down", "", nil, fmt.Errorf("dial: %w", rtm.ErrUnavailable), 503, rtm.CodeServiceUnavailable, true},
		{"anything else", "", nil, errors.New("boom"), 500, rtm.CodeInternalError, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := newFakeLogs("")
			logs.err = tt.err
			srv := newLogsServer(t, tt.store, logs, nil, 0, "")
			r := get(t, srv.URL+BasePath+"/runtimes/g1/logs"+tt.query, "admin")
			r.want(t, tt.status, tt.code)
			if got := len(logs.called()) > 0; got != tt.wantCall {
				t.Errorf("Docker asked: %v, want %v", got, tt.wantCall)
			}
			if strings.Contains(string(r.body), "boom") || strings.Contains(string(r.body), "dial") {
				t.Errorf("the cause leaked to the caller: %s", r.body)
			}
		})
	}
}

func TestAPI_getLogs_readRules(t *testing.T) {
	logs := newFakeLogs("line\n")
	srv := newLogsServer(t, nil, logs, nil, 0, "s3cret")
	path := srv.URL + BasePath + "/runtimes/g1/logs"
	auth := []string{"Authorization", "Bearer s3cret"}
	get(t, path, "").want(t, 401, rtm.CodeUnauthenticated)
	get(t, path, "admin", "Authorization", "Bearer nope").want(t, 401, rtm.CodeUnauthenticated)
	get(t, path, "mallory", auth...).want(t, 403, rtm.CodeForbidden)
	for _, caller := range []string{"", "lobby", "gm", "admin"} {
		get(t, path, caller, auth...).want(t, 200, "")
	}
	get(t, srv.URL+BasePath+"/runtimes/..%2Fx/logs", "", auth...).want(t, 400, rtm.CodeInvalidRequest)
	if n := len(logs.called()); n != 4 {
		t.Fatalf("Docker asked %d times, want 4 (only the allowed reads)", n)
	}
	r := sendMethod(t, http.MethodPost, path, auth...)
	if r.status != http.StatusMethodNotAllowed || !strings.Contains(r.header.Get("Allow"), "GET") {
		t.Fatalf("POST: %d %v %s", r.status, r.header, r.body)
	}
}

func sendMethod(t *testing.T, method, url string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// openFollow starts GET …/logs?follow=true and returns the answer with its body unread.
func openFollow(t *testing.T, srv *httptest.Server) *http.Response {
	t.Helper()
	res, err := http.Get(srv.URL + BasePath + "/runtimes/g1/logs?follow=true&tail=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	return res
}

// readLine reads one line of the body within 10 s.
func readLine(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		l, _ := br.ReadString('\n')
		got <- l
	}()
	select {
	case l := <-got:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no line within 10 s: the stream was not flushed")
		return ""
	}
}

// waitClosed waits until c is closed, failing the test after 10 s.
func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s within 10 s", what)
	}
}

// A follow stream is flushed chunk by chunk and lives past the listener's write timeout; it
// ends when the client goes away, and Docker's stream with it.
func TestAPI_getLogs_followFlushesOutlivesWriteTimeoutEndsWithClient(t *testing.T) {
	pr, pw := io.Pipe()
	logs := newFakeLogs("first\n")
	logs.stream = pr
	const writeTimeout = 200 * time.Millisecond
	srv := newLogsServer(t, nil, logs, nil, writeTimeout, "")
	res := openFollow(t, srv)
	br := bufio.NewReader(res.Body)
	if l := readLine(t, br); l != "first\n" {
		t.Fatalf("first line %q", l)
	}
	// Written well after the listener's write timeout has passed since the request began: the
	// test is about a timeout, so time has to pass.
	go func() {
		time.Sleep(3 * writeTimeout)
		_, _ = io.WriteString(pw, "later\n")
	}()
	if l := readLine(t, br); l != "later\n" {
		t.Fatalf("second line %q: the write timeout cut the stream", l)
	}
	if c := logs.called(); len(c) != 1 || !c[0].follow || c[0].tail != 1 {
		t.Fatalf("Logs called with %+v", c)
	}
	res.Body.Close()
	waitClosed(t, logs.ended, "the client left but Docker's stream was not ended")
}

func TestAPI_getLogs_drainingEndsFollowStreams(t *testing.T) {
	pr, _ := io.Pipe()
	logs := newFakeLogs("first\n")
	logs.stream = pr
	draining := make(chan struct{})
	srv := newLogsServer(t, nil, logs, draining, 0, "")
	res := openFollow(t, srv)
	br := bufio.NewReader(res.Body)
	if l := readLine(t, br); l != "first\n" {
		t.Fatalf("first line %q", l)
	}
	close(draining)
	waitClosed(t, logs.ended, "draining did not end Docker's stream")
	done := make(chan struct{})
	go func() { _, _ = io.ReadAll(br); close(done) }()
	waitClosed(t, done, "draining did not end the answer")
}

func TestAPI_getLogs_withoutAReaderIsUnavailable(t *testing.T) {
	srv := newLogsServer(t, nil, nil, nil, 0, "")
	get(t, srv.URL+BasePath+"/runtimes/g1/logs", "").want(t, 503, rtm.CodeServiceUnavailable)
}

func TestAPI_getVersion_binaryAndAPI(t *testing.T) {
	srv := newLogsServer(t, nil, nil, nil, 0, "s3cret")
	auth := []string{"Authorization", "Bearer s3cret"}
	v := okBody[map[string]string](t, get(t, srv.URL+BasePath+"/version", "", auth...))
	want := map[string]string{"version": "v9.8.7", "go_version": goruntime.Version(),
		"platform": goruntime.GOOS + "/" + goruntime.GOARCH, "api": "v1"}
	if len(v) != len(want) {
		t.Errorf("fields %v, want %v", v, want)
	}
	for k, w := range want {
		if v[k] != w {
			t.Errorf("%s = %q, want %q", k, v[k], w)
		}
	}
	get(t, srv.URL+BasePath+"/version", "lobby", auth...).want(t, 200, "")
	get(t, srv.URL+BasePath+"/version", "").want(t, 401, rtm.CodeUnauthenticated)
	get(t, srv.URL+BasePath+"/version", "mallory", auth...).want(t, 403, rtm.CodeForbidden)

	// Without a version the binary is a dev build.
	api := NewAPI(APIOptions{Store: &recordingStore{}})
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, BasePath+"/version", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"version":"dev"`) {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}
