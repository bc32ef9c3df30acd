package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	rtm "github.com/galaxy-platform/rtmanager"
)

// seen is one request the fake RTM received.
type seen struct {
	method, path string
	query        map[string]string
	caller       []string
	auth         string
	contentType  string
	body         string
}

// fakeRTM mimics the internal REST API of CONTRACT §6 over a fixed set of records: paging with
// an opaque cursor (pages never longer than pageSize, whatever limit asks), the error envelope,
// the bearer token, and mutations answered by mutate.
type fakeRTM struct {
	t        *testing.T
	srv      *httptest.Server
	token    string
	pageSize int
	records  map[string]rtm.Record
	ops      map[string][]rtm.Operation
	health   map[string]rtm.HealthSnapshot
	// mutate answers POST …/{action} and DELETE …/container (action "container"); nil answers
	// 200 with the record.
	mutate func(action, gameID string, body map[string]any) (int, any)
	// logs is each game's engine output; follow, when set, carries what a follow stream sends
	// after it, until closed.
	logs   map[string]string
	follow chan string
	// version is the body of GET /version; nil answers 404 as an RTM without the route does.
	version map[string]string
	// healthDown answers every health read with 503.
	healthDown bool

	// data guards records, ops and health while a command runs (watch, wait, converge).
	data sync.Mutex
	mu   sync.Mutex
	reqs []seen
}

func newFakeRTM(t *testing.T) *fakeRTM {
	t.Helper()
	f := &fakeRTM{t: t, pageSize: 500, records: map[string]rtm.Record{}, ops: map[string][]rtm.Operation{},
		health: map[string]rtm.HealthSnapshot{}, logs: map[string]string{}}
	mux := http.NewServeMux()
	const base = "/api/v1/internal"
	mux.HandleFunc("GET "+base+"/runtimes", f.list)
	mux.HandleFunc("GET "+base+"/runtimes/{game_id}", func(w http.ResponseWriter, r *http.Request) {
		if rec, ok := f.record(w, r); ok {
			writeJSON(w, http.StatusOK, rec)
		}
	})
	mux.HandleFunc("GET "+base+"/runtimes/{game_id}/operations", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := f.record(w, r); ok {
			f.data.Lock()
			ops := f.ops[r.PathValue("game_id")]
			f.data.Unlock()
			if n, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && n < len(ops) {
				ops = ops[:n]
			}
			if ops == nil {
				ops = []rtm.Operation{}
			}
			writeJSON(w, http.StatusOK, map[string]any{"operations": ops})
		}
	})
	mux.HandleFunc("GET "+base+"/runtimes/{game_id}/health", func(w http.ResponseWriter, r *http.Request) {
		if f.healthDown {
			writeError(w, http.StatusServiceUnavailable, "service_unavailable", "the runtime store is unavailable; retry later")
			return
		}
		if _, ok := f.record(w, r); ok {
			f.data.Lock()
			h, ok := f.health[r.PathValue("game_id")]
			f.data.Unlock()
			if !ok {
				h = rtm.HealthSnapshot{GameID: r.PathValue("game_id"), Status: rtm.HealthUnknown}
			}
			writeJSON(w, http.StatusOK, h)
		}
	})
	mux.HandleFunc("GET "+base+"/runtimes/{game_id}/logs", f.serveLogs)
	mux.HandleFunc("GET "+base+"/version", func(w http.ResponseWriter, r *http.Request) {
		if f.version == nil {
			writeError(w, http.StatusNotFound, "invalid_request", "no such route: GET "+r.URL.Path)
			return
		}
		writeJSON(w, http.StatusOK, f.version)
	})
	for _, action := range []string{"start", "stop", "restart", "patch"} {
		mux.HandleFunc("POST "+base+"/runtimes/{game_id}/"+action, f.mutation(action))
	}
	mux.HandleFunc("DELETE "+base+"/runtimes/{game_id}/container", f.mutation("container"))

	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		q := map[string]string{}
		for k, v := range r.URL.Query() {
			q[k] = v[0]
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, seen{method: r.Method, path: r.URL.Path, query: q, caller: r.Header.Values("X-Galaxy-Caller"),
			auth: r.Header.Get("Authorization"), contentType: r.Header.Get("Content-Type"), body: string(b)})
		f.mu.Unlock()
		r.Body = io.NopCloser(strings.NewReader(string(b)))
		w.Header().Set("X-Request-Id", "rest-0123456789abcdef")
		if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
			writeError(w, http.StatusUnauthorized, "unauthenticated", "a valid bearer token is required")
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeRTM) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

func (f *fakeRTM) add(recs ...rtm.Record) {
	f.data.Lock()
	defer f.data.Unlock()
	for _, r := range recs {
		f.records[r.GameID] = r
	}
}

// get returns the game's record as the fake holds it now.
func (f *fakeRTM) get(gameID string) rtm.Record {
	f.data.Lock()
	defer f.data.Unlock()
	return f.records[gameID]
}

// setHealth sets the game's health snapshot.
func (f *fakeRTM) setHealth(h rtm.HealthSnapshot) {
	f.data.Lock()
	defer f.data.Unlock()
	f.health[h.GameID] = h
}

// addOp puts an operation at the head of the game's log (newest first).
func (f *fakeRTM) addOp(op rtm.Operation) {
	f.data.Lock()
	defer f.data.Unlock()
	f.ops[op.GameID] = append([]rtm.Operation{op}, f.ops[op.GameID]...)
}

// serveLogs answers GET …/logs: the game's output as text, then, with follow=true, what comes
// on f.follow until it is closed or the client leaves.
func (f *fakeRTM) serveLogs(w http.ResponseWriter, r *http.Request) {
	if _, ok := f.record(w, r); !ok {
		return
	}
	text, ok := f.logs[r.PathValue("game_id")]
	if !ok {
		writeError(w, http.StatusNotFound, "runtime_not_found", "game "+r.PathValue("game_id")+" has no container")
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, text)
	if r.URL.Query().Get("follow") != "true" || f.follow == nil {
		return
	}
	ctl := http.NewResponseController(w)
	_ = ctl.Flush()
	for {
		select {
		case l, ok := <-f.follow:
			if !ok {
				return
			}
			_, _ = io.WriteString(w, l)
			_ = ctl.Flush()
		case <-r.Context().Done():
			return
		}
	}
}

func (f *fakeRTM) record(w http.ResponseWriter, r *http.Request) (rtm.Record, bool) {
	f.data.Lock()
	rec, ok := f.records[r.PathValue("game_id")]
	f.data.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "runtime_not_found", "game "+r.PathValue("game_id")+" has no runtime")
	}
	return rec, ok
}

func (f *fakeRTM) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 500 {
			writeError(w, http.StatusBadRequest, "invalid_request", "limit must be an integer from 1 to 500")
			return
		}
		limit = n
	}
	limit = min(limit, f.pageSize)
	after := ""
	if c := q.Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request", "cursor is not one this API returned")
			return
		}
		after = string(b)
	}
	f.data.Lock()
	defer f.data.Unlock()
	var ids []string
	for id, rec := range f.records {
		if id > after && (q.Get("status") == "" || string(rec.Status) == q.Get("status")) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	out := map[string]any{}
	if len(ids) > limit {
		ids = ids[:limit]
		out["next_cursor"] = base64.RawURLEncoding.EncodeToString([]byte(ids[limit-1]))
	}
	recs := []rtm.Record{}
	for _, id := range ids {
		recs = append(recs, f.records[id])
	}
	out["runtimes"] = recs
	writeJSON(w, http.StatusOK, out)
}

func (f *fakeRTM) mutation(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch c := r.Header.Get("X-Galaxy-Caller"); c {
		case "admin", "gm":
		default:
			writeError(w, http.StatusForbidden, "forbidden", "this operation needs X-Galaxy-Caller admin or gm")
			return
		}
		var body map[string]any
		if b, _ := io.ReadAll(r.Body); len(b) > 0 {
			if err := json.Unmarshal(b, &body); err != nil {
				writeError(w, http.StatusBadRequest, "invalid_request", "request body is not valid JSON")
				return
			}
		}
		rec, ok := f.record(w, r)
		if !ok {
			return
		}
		if f.mutate == nil {
			writeJSON(w, http.StatusOK, rec)
			return
		}
		status, payload := f.mutate(action, rec.GameID, body)
		writeJSON(w, status, payload)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func envelope(code, msg string) map[string]any {
	return map[string]any{"error": map[string]string{"code": code, "message": msg}}
}

// running returns a record of a game running image since created ago.
func running(gameID, image string, created time.Duration) rtm.Record {
	now := time.Now().UTC()
	return rtm.Record{GameID: gameID, Status: rtm.StatusRunning, DesiredState: rtm.DesiredRunning,
		DesiredImageRef: image, CurrentImageRef: image,
		CurrentContainerID: "4f1c2a9b8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b",
		EngineEndpoint:     "http://galaxy-game-" + gameID + ":8080", StateDir: "/var/lib/galaxy/games/" + gameID,
		Generation: 1, ObservedGeneration: 1, CreatedAt: now.Add(-created), UpdatedAt: now.Add(-created / 2)}
}

func TestRun_getRuntimes_followsNextCursorAndPrintsTable(t *testing.T) {
	f := newFakeRTM(t)
	f.pageSize = 2
	f.add(running("g1", "galaxy/game:1.4.1", 150*time.Minute), running("g2", "galaxy/game:1.4.2", 5*24*time.Hour),
		running("g3", "galaxy/game:1.4.2", 30*time.Second), running("g4", "galaxy/game:1.4.2", time.Hour),
		running("g5", "galaxy/game:1.4.2", time.Hour))
	stopped := running("g3", "galaxy/game:1.4.2", 5*24*time.Hour)
	stopped.Status, stopped.DesiredState = rtm.StatusStopped, rtm.DesiredStopped
	f.add(stopped)

	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	ls := lines(r.stdout)
	if len(ls) != 6 {
		t.Fatalf("want a header and 5 rows:\n%s", r.stdout)
	}
	header := []string{"GAME ID", "STATUS", "HEALTH", "DESIRED", "IMAGE", "CONTAINER", "AGE"}
	if got := strings.Fields(strings.ReplaceAll(ls[0], "GAME ID", "GAME_ID")); strings.Join(got, " ") != "GAME_ID STATUS HEALTH DESIRED IMAGE CONTAINER AGE" {
		t.Fatalf("header %q", ls[0])
	}
	starts := columnStarts(ls[0], header...)
	for _, l := range ls[1:] {
		for i, at := range starts[1:] {
			if at > len(l) || l[at-1] != ' ' || l[at] == ' ' {
				t.Fatalf("column %s not aligned in %q (header %q)", header[i+1], l, ls[0])
			}
		}
	}
	for i, want := range []string{
		"g1   running   -   running   galaxy/game:1.4.1   4f1c2a9b8e7d   150m",
		"g2   running   -   running   galaxy/game:1.4.2   4f1c2a9b8e7d   5d",
		"g3   stopped   -   stopped   galaxy/game:1.4.2   4f1c2a9b8e7d   5d",
	} {
		if strings.Join(strings.Fields(ls[i+1]), " ") != strings.Join(strings.Fields(want), " ") {
			t.Errorf("row %d = %q, want %q", i+1, ls[i+1], want)
		}
	}
	// Three pages of at most two: the second and third carry the cursor of the one before.
	// Besides them, only the health of the games meant to run was read.
	var cursors, health []string
	for _, q := range f.requests() {
		switch {
		case q.path == "/api/v1/internal/runtimes":
			cursors = append(cursors, q.query["cursor"])
		case strings.HasSuffix(q.path, "/health"):
			health = append(health, strings.TrimPrefix(q.path, "/api/v1/internal/runtimes/"))
		default:
			t.Fatalf("unexpected request %s %s", q.method, q.path)
		}
	}
	sort.Strings(health)
	if strings.Join(health, " ") != "g1/health g2/health g4/health g5/health" {
		t.Fatalf("health read for %v", health)
	}
	if len(cursors) != 3 || cursors[0] != "" || cursors[1] == "" || cursors[2] == "" || cursors[1] == cursors[2] {
		t.Fatalf("pages fetched with cursors %q", cursors)
	}
}

func TestRun_getRuntimes_limitStopsPaging(t *testing.T) {
	f := newFakeRTM(t)
	f.pageSize = 2
	for _, id := range []string{"a1", "a2", "a3", "a4", "a5"} {
		f.add(running(id, "galaxy/game:1.4.1", time.Hour))
	}
	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes", "--limit", "3")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	if got := len(lines(r.stdout)); got != 4 {
		t.Fatalf("want header + 3 rows:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "More runtimes exist") {
		t.Fatalf("no note that more exist:\n%s", r.stderr)
	}
	var reqs []seen
	for _, q := range f.requests() {
		if q.path == "/api/v1/internal/runtimes" {
			reqs = append(reqs, q)
		}
	}
	if len(reqs) != 2 || reqs[0].query["limit"] != "3" || reqs[1].query["limit"] != "1" {
		t.Fatalf("requests %+v", reqs)
	}

	// JSON keeps the cursor of what was left, for a script to go on.
	r = rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes", "--limit", "2", "-o", "json")
	var body struct {
		Runtimes   []rtm.Record `json:"runtimes"`
		NextCursor string       `json:"next_cursor"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &body); err != nil || len(body.Runtimes) != 2 || body.NextCursor == "" {
		t.Fatalf("json %v: %v", err, r)
	}
}

func TestRun_getRuntimes_jsonHoldsAllPages(t *testing.T) {
	f := newFakeRTM(t)
	f.pageSize = 1
	f.add(running("g1", "galaxy/game:1.4.1", time.Hour), running("g2", "galaxy/game:1.4.1", time.Hour))
	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes", "-o", "json")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &body); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, r.stdout)
	}
	if _, ok := body["next_cursor"]; ok {
		t.Fatalf("a complete list carries no next_cursor:\n%s", r.stdout)
	}
	var recs []map[string]any
	if err := json.Unmarshal(body["runtimes"], &recs); err != nil || len(recs) != 2 {
		t.Fatalf("runtimes %v: %s", err, body["runtimes"])
	}
	if recs[1]["game_id"] != "g2" || recs[1]["created_at"] == "" {
		t.Fatalf("record fields: %v", recs[1])
	}
}

func TestRun_getRuntimes_emptyListSaysSoOnStderr(t *testing.T) {
	f := newFakeRTM(t)
	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes", "--status", "failed")
	if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "No runtimes with status failed") {
		t.Fatalf("%v", r)
	}
	if q := f.requests()[0].query; q["status"] != "failed" {
		t.Fatalf("status filter not sent: %v", q)
	}
}

// get runtime -o json and -o yaml print the record with the API's fields, the times as the API
// sent them (RFC 3339).
func TestRun_getRuntime_structuredIsTheRecord(t *testing.T) {
	for _, tt := range []struct {
		format    string
		unmarshal func([]byte, any) error
	}{
		{"json", json.Unmarshal},
		{"yaml", func(b []byte, v any) error { return yaml.Unmarshal(b, v) }},
	} {
		t.Run(tt.format, func(t *testing.T) {
			f := newFakeRTM(t)
			f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
			r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtime", "g1", "-o", tt.format)
			if r.code != 0 {
				t.Fatalf("%v", r)
			}
			var rec map[string]any
			if err := tt.unmarshal([]byte(r.stdout), &rec); err != nil {
				t.Fatalf("not %s: %v\n%s", tt.format, err, r.stdout)
			}
			if rec["current_image_ref"] != "galaxy/game:1.4.2" || rec["game_id"] != "g1" ||
				rec["engine_endpoint"] != "http://galaxy-game-g1:8080" {
				t.Fatalf("record: %v", rec)
			}
			if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["created_at"])); err != nil {
				t.Fatalf("created_at %v: %v", rec["created_at"], err)
			}
		})
	}
}

func TestRun_getRuntime_wideShowsEndpointAndError(t *testing.T) {
	f := newFakeRTM(t)
	rec := running("g1", "galaxy/game:1.4.2", time.Hour)
	rec.Status, rec.LastErrorCode, rec.LastErrorMessage = rtm.StatusFailed, rtm.CodeImagePullFailed, "pull access denied\nfor galaxy/game"
	rec.DesiredImageRef = "galaxy/game:1.4.3"
	f.add(rec)
	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtime", "g1", "-o", "wide")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	ls := lines(r.stdout)
	if len(ls) != 2 || !strings.Contains(ls[0], "ENDPOINT") || !strings.Contains(ls[0], "ERROR") {
		t.Fatalf("wide table:\n%s", r.stdout)
	}
	for _, want := range []string{"http://galaxy-game-g1:8080", "image_pull_failed: pull access denied for galaxy/game", "galaxy/game:1.4.2 → 1.4.3"} {
		if !strings.Contains(ls[1], want) {
			t.Errorf("row lacks %q: %q", want, ls[1])
		}
	}
}

func TestRun_getRuntime_notFoundExitsOneWithCode(t *testing.T) {
	f := newFakeRTM(t)
	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtime", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "error: runtime_not_found: game nope has no runtime") || r.stdout != "" {
		t.Fatalf("%v", r)
	}
}

func TestRun_request_sendsCallerAndToken(t *testing.T) {
	tests := []struct {
		name       string
		vars       map[string]string
		args       []string
		wantCaller []string
		wantAuth   string
	}{
		{"defaults", nil, nil, []string{"admin"}, ""},
		{"token from the environment", map[string]string{"RTMANAGER_INTERNAL_TOKEN": "s3cret"}, nil, []string{"admin"}, "Bearer s3cret"},
		{"flags", map[string]string{"RTMANAGER_INTERNAL_TOKEN": "other"}, []string{"--token", "s3cret", "--caller", "gm"}, []string{"gm"}, "Bearer s3cret"},
		{"no caller", nil, []string{"--caller", ""}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRTM(t)
			f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
			args := append([]string{"--server", f.srv.URL, "get", "runtime", "g1"}, tt.args...)
			if r := rtmctl(t, tt.vars, args...); r.code != 0 {
				t.Fatalf("%v", r)
			}
			q := f.requests()[0]
			if strings.Join(q.caller, ",") != strings.Join(tt.wantCaller, ",") || q.auth != tt.wantAuth {
				t.Fatalf("caller %q auth %q, want %q %q", q.caller, q.auth, tt.wantCaller, tt.wantAuth)
			}
		})
	}
}

func TestRun_request_serverFromEnvironment(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	// A bare host:port is taken as http://, and a trailing API base path is tolerated.
	for _, server := range []string{f.srv.URL, strings.TrimPrefix(f.srv.URL, "http://"), f.srv.URL + "/api/v1/internal/"} {
		r := rtmctl(t, map[string]string{"RTMCTL_SERVER": server}, "get", "runtime", "g1")
		if r.code != 0 || !strings.Contains(r.stdout, "g1") {
			t.Fatalf("server %q: %v", server, r)
		}
	}
}

func TestRun_request_unauthenticatedHints(t *testing.T) {
	f := newFakeRTM(t)
	f.token = "s3cret"
	r := rtmctl(t, nil, "--server", f.srv.URL, "get", "runtimes")
	r.wantError(t, "error: unauthenticated: a valid bearer token is required", "RTMANAGER_INTERNAL_TOKEN")
}

func TestRun_request_unreachableExitsOne(t *testing.T) {
	f := newFakeRTM(t)
	url := f.srv.URL
	f.srv.Close()
	r := rtmctl(t, nil, "--server", url, "get", "runtimes")
	r.wantError(t, "error: cannot reach RTM at "+url)
}

func TestRun_request_timeoutExitsOne(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // the server notices the client leaving only once the body is read
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer srv.Close()
	r := rtmctl(t, nil, "--server", srv.URL, "--timeout", "200ms", "stop", "g1")
	r.wantError(t, "error: timeout: no answer from RTM", "may still be carried out")
}

func TestRun_request_nonEnvelopeErrorKeepsStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html><body>\n<h1>502 Bad Gateway</h1>\n</body></html>")
	}))
	defer srv.Close()
	r := rtmctl(t, nil, "--server", srv.URL, "get", "runtimes")
	r.wantError(t, "error: http_502: <html><body> <h1>502 Bad Gateway</h1>")
}

func TestRun_mutations_sendContractRequests(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantMethod string
		wantPath   string
		wantBody   string
	}{
		{"start", []string{"start", "g1", "--image", "galaxy/game:1.4.2"}, "POST", "/start", `{"image_ref":"galaxy/game:1.4.2"}`},
		{"stop default reason", []string{"stop", "g1"}, "POST", "/stop", `{"reason":"admin_request"}`},
		{"stop with reason", []string{"stop", "g1", "--reason", "engine_wedged"}, "POST", "/stop", `{"reason":"engine_wedged"}`},
		{"restart", []string{"restart", "g1"}, "POST", "/restart", `{}`},
		{"patch", []string{"patch", "g1", "--image", "galaxy/game:1.4.3"}, "POST", "/patch", `{"image_ref":"galaxy/game:1.4.3"}`},
		{"cleanup", []string{"cleanup", "g1"}, "DELETE", "/container", ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRTM(t)
			f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
			r := rtmctl(t, nil, append([]string{"--server", f.srv.URL}, tt.args...)...)
			if r.code != 0 {
				t.Fatalf("%v", r)
			}
			if ls := lines(r.stdout); len(ls) != 2 || !strings.HasPrefix(ls[0], "GAME ID") || !strings.HasPrefix(ls[1], "g1 ") {
				t.Fatalf("record table:\n%s", r.stdout)
			}
			q := f.requests()[0]
			if q.method != tt.wantMethod || q.path != "/api/v1/internal/runtimes/g1"+tt.wantPath || q.body != tt.wantBody {
				t.Fatalf("sent %s %s %q, want %s %s %q", q.method, q.path, q.body, tt.wantMethod, tt.wantPath, tt.wantBody)
			}
			if tt.wantBody != "" && q.contentType != "application/json" {
				t.Fatalf("content type %q", q.contentType)
			}
		})
	}
}

func TestRun_patch_errorEnvelopeExitsOneWithCode(t *testing.T) {
	tests := []struct {
		name, code, msg string
		status          int
		wantHint        string
	}{
		{"across minor", "semver_patch_only", "patch from 1.4.2 to 1.5.0 changes the major or minor version", 422, ""},
		{"rolled back", "patch_rolled_back", "the patched engine failed its probe; galaxy/game:1.4.2 runs again", 409, "the previous image runs again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRTM(t)
			f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
			f.mutate = func(string, string, map[string]any) (int, any) { return tt.status, envelope(tt.code, tt.msg) }
			r := rtmctl(t, nil, "--server", f.srv.URL, "patch", "g1", "--image", "galaxy/game:1.5.0")
			if r.code != 1 || r.stdout != "" {
				t.Fatalf("%v", r)
			}
			if first := lines(r.stderr)[0]; first != "error: "+tt.code+": "+tt.msg {
				t.Fatalf("first stderr line %q", first)
			}
			if !strings.Contains(r.stderr, "request id: rest-0123456789abcdef") || !strings.Contains(r.stderr, tt.wantHint) {
				t.Fatalf("hints:\n%s", r.stderr)
			}
		})
	}
}

func TestRun_cleanup_runningIsRefused(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	f.mutate = func(string, string, map[string]any) (int, any) {
		return 409, envelope("runtime_running", "game g1 is running; stop it first")
	}
	r := rtmctl(t, nil, "--server", f.srv.URL, "cleanup", "g1")
	r.wantError(t, "error: runtime_running: game g1 is running; stop it first", "rtmctl stop g1")
}

func TestRun_mutation_forbiddenForLobby(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	r := rtmctl(t, nil, "--server", f.srv.URL, "--caller", "lobby", "restart", "g1")
	r.wantError(t, "error: forbidden:", "--caller admin or gm")
}

func TestRun_ops_tableAndJSON(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	now := time.Now().UTC()
	f.ops["g1"] = []rtm.Operation{
		{ID: 12, GameID: "g1", Kind: rtm.OpCleanupContainer, Source: rtm.SourceAdminREST, Outcome: rtm.OutcomeSucceeded,
			RequestID: "rest-aa", StartedAt: now.Add(-150 * time.Minute), FinishedAt: now.Add(-150*time.Minute + 1200*time.Millisecond)},
		{ID: 11, GameID: "g1", Kind: rtm.OpPatch, Source: rtm.SourceGMREST, Outcome: rtm.OutcomeFailed,
			ErrorCode: rtm.CodePatchRolledBack, ErrorMessage: "probe failed", RequestID: "rest-bb",
			OldImageRef: "galaxy/game:1.4.2", NewImageRef: "galaxy/game:1.4.3", StartedAt: now.Add(-5 * 24 * time.Hour)},
	}
	r := rtmctl(t, nil, "--server", f.srv.URL, "ops", "g1", "--limit", "20")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	ls := lines(r.stdout)
	if len(ls) != 3 || strings.Join(strings.Fields(ls[0]), " ") != "ID KIND SOURCE OUTCOME ERROR REQUEST STARTED" {
		t.Fatalf("ops table:\n%s", r.stdout)
	}
	if got := strings.Join(strings.Fields(ls[1]), " "); got != "12 cleanup_container admin_rest succeeded - rest-aa 150m" {
		t.Errorf("row %q", got)
	}
	if got := strings.Join(strings.Fields(ls[2]), " "); got != "11 patch gm_rest failed patch_rolled_back rest-bb 5d" {
		t.Errorf("row %q", got)
	}
	if q := f.requests()[0]; q.path != "/api/v1/internal/runtimes/g1/operations" || q.query["limit"] != "20" {
		t.Fatalf("request %+v", q)
	}

	r = rtmctl(t, nil, "--server", f.srv.URL, "ops", "g1", "-o", "wide")
	if !strings.Contains(r.stdout, "galaxy/game:1.4.2 → galaxy/game:1.4.3") || !strings.Contains(r.stdout, "1.2s") {
		t.Fatalf("wide ops:\n%s", r.stdout)
	}

	r = rtmctl(t, nil, "--server", f.srv.URL, "ops", "g1", "-o", "json")
	var body struct {
		Operations []rtm.Operation `json:"operations"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &body); err != nil || len(body.Operations) != 2 || body.Operations[0].Kind != rtm.OpCleanupContainer {
		t.Fatalf("json ops %v:\n%s", err, r.stdout)
	}
}

func TestRun_health_keyValueLines(t *testing.T) {
	f := newFakeRTM(t)
	f.add(running("g1", "galaxy/game:1.4.2", time.Hour))
	probe := time.Now().UTC().Add(-30 * time.Second)
	f.health["g1"] = rtm.HealthSnapshot{GameID: "g1", Status: rtm.HealthUnhealthy, LastEventType: rtm.EventContainerOOM,
		ConsecutiveProbeFailures: 3, LastProbeAt: &probe, ExitCode: rtm.IntPtr(137), OOMKilled: true, DockerState: "exited",
		UpdatedAt: time.Now().UTC().Add(-150 * time.Minute)}
	r := rtmctl(t, nil, "--server", f.srv.URL, "health", "g1")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	want := map[string]string{"Status": "unhealthy", "Last event": "container_oom", "Probe failures": "3 in a row",
		"Exit code": "137", "OOM killed": "yes", "Docker state": "exited", "Updated": "150m ago (" + f.health["g1"].UpdatedAt.Format(time.RFC3339) + ")"}
	valueAt := -1
	for _, l := range lines(r.stdout) {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			t.Fatalf("not a key/value line: %q", l)
		}
		at := len(l) - len(strings.TrimLeft(v, " "))
		if valueAt == -1 {
			valueAt = at
		} else if at != valueAt {
			t.Fatalf("values not aligned:\n%s", r.stdout)
		}
		if w, ok := want[k]; ok && strings.TrimSpace(v) != w {
			t.Errorf("%s = %q, want %q", k, strings.TrimSpace(v), w)
		}
	}

	r = rtmctl(t, nil, "--server", f.srv.URL, "health", "g1", "-o", "json")
	var h map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &h); err != nil || h["consecutive_probe_failures"] != float64(3) || h["oom_killed"] != true {
		t.Fatalf("json health %v:\n%s", err, r.stdout)
	}
}

func TestRun_usageErrors_exitTwo(t *testing.T) {
	f := newFakeRTM(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"get", "pods"}, `unknown command "pods" for "rtmctl get"`},
		{"missing subcommand", []string{"get"}, "needs a subcommand"},
		{"unknown flag", []string{"get", "runtimes", "--colour"}, "unknown flag: --colour"},
		{"bad output", []string{"get", "runtimes", "-o", "xml"}, "must be one of table, wide, json, yaml"},
		{"missing game id", []string{"ops"}, "needs exactly one GAME_ID"},
		{"two game ids", []string{"health", "g1", "g2"}, "needs exactly one GAME_ID"},
		{"invalid game id", []string{"stop", "../etc"}, `invalid game id "../etc"`},
		{"missing image", []string{"patch", "g1"}, `required flag(s) "image" not set`},
		{"bad limit", []string{"get", "runtimes", "--limit", "0"}, "--limit must be at least 1"},
		{"limit not a number", []string{"ops", "g1", "--limit", "many"}, `invalid argument "many"`},
		{"limit over the API's", []string{"ops", "g1", "--limit", "501"}, "--limit must be from 1 to 500"},
		{"bad status", []string{"get", "runtimes", "--status", "sleeping"}, "--status must be one of"},
		{"filter with one game", []string{"get", "runtime", "g1", "--status", "running"}, "do not apply to one GAME_ID"},
		{"bad timeout", []string{"get", "runtimes", "--timeout", "0s"}, "--timeout must be positive"},
		{"bad caller", []string{"get", "runtimes", "--caller", "root"}, "--caller must be admin, gm or lobby"},
		{"bad server", []string{"get", "runtimes", "--server", "ftp://x"}, "--server must be an http(s) URL"},
		{"jobs without image", []string{"jobs", "start", "g1"}, `required flag(s) "image" not set`},
		{"bad redis address", []string{"jobs", "stop", "g1", "--redis", "nowhere"}, "--redis must be host:port"},
		{"bad from", []string{"watch", "health", "--from", "yesterday"}, "--from must be"},
		{"completion shell missing", []string{"completion"}, "needs a subcommand"},
		{"bad jsonpath", []string{"get", "runtimes", "-o", "jsonpath={.runtimes[}"}, "bad jsonpath template"},
		{"empty jsonpath", []string{"get", "runtimes", "-o", "jsonpath="}, "jsonpath needs a template"},
		{"name for ops", []string{"ops", "g1", "-o", "name"}, "-o name does not apply to rtmctl ops"},
		{"json for logs", []string{"logs", "g1", "-o", "json"}, "-o json does not apply to rtmctl logs"},
		{"jsonpath for watch", []string{"watch", "health", "-o", "jsonpath={.x}"}, "-o jsonpath does not apply to rtmctl watch health"},
		{"wait without for", []string{"wait", "g1"}, `required flag(s) "for" not set`},
		{"wait for a phase", []string{"wait", "g1", "--for=phase=running"}, "--for must be status=STATUS"},
		{"wait for an unknown status", []string{"wait", "g1", "--for=status=sleeping"}, "--for status must be one of"},
		{"wait interval", []string{"wait", "g1", "--for=status=running", "--interval", "0s"}, "--interval must be positive"},
		{"watch interval", []string{"get", "runtimes", "-w", "--interval", "-1s"}, "--interval must be positive"},
		{"negative tail", []string{"logs", "g1", "--tail", "-1"}, "--tail must be from 0 to 10000"},
		{"tail over the bound", []string{"logs", "g1", "--tail", "10001"}, "--tail must be from 0 to 10000"},
		{"describe ops over the bound", []string{"describe", "g1", "--ops", "501"}, "--ops must be from 0 to 500"},
		{"describe bad redis", []string{"describe", "g1", "--redis", "nowhere"}, "--redis must be host:port"},
		{"version takes no argument", []string{"version", "g1"}, `unknown command "g1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--server", f.srv.URL}, tt.args...)
			if tt.name == "bad server" {
				args = tt.args
			}
			r := rtmctl(t, nil, args...)
			if r.code != 2 || !strings.Contains(r.stderr, tt.want) || !strings.Contains(r.stderr, "--help' for usage") {
				t.Fatalf("want exit 2 and %q: %v", tt.want, r)
			}
		})
	}
	if reqs := f.requests(); len(reqs) != 0 {
		t.Fatalf("usage errors reached the server: %+v", reqs)
	}
}

func TestRun_help_everyCommandHasAnExample(t *testing.T) {
	a := &app{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }, now: time.Now}
	root := a.newRootCmd()
	var missing []string
	for _, c := range allCommands(root) {
		if c.Hidden || c.Name() == "help" || c.Name() == "__complete" || c.Name() == "__completeNoDesc" {
			continue
		}
		if c.HasParent() && c.Parent().Name() == "completion" {
			continue // cobra's own per-shell commands carry their instructions in Long
		}
		if strings.TrimSpace(c.Example) == "" {
			missing = append(missing, c.CommandPath())
		}
		r := rtmctl(t, nil, append(strings.Fields(strings.TrimPrefix(c.CommandPath(), "rtmctl")), "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("%s --help: %v", c.CommandPath(), r)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("commands without an Example: %v", missing)
	}
}

// allCommands returns c and every command under it.
func allCommands(c *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{c}
	for _, s := range c.Commands() {
		out = append(out, allCommands(s)...)
	}
	return out
}

func TestHumanDuration(t *testing.T) {
	tests := []struct {
		given time.Duration
		want  string
	}{
		{0, "0s"},
		{5 * time.Second, "5s"},
		{119 * time.Second, "119s"},
		{3*time.Minute + 20*time.Second, "3m20s"},
		{4 * time.Minute, "4m"},
		{17 * time.Minute, "17m"},
		{2*time.Hour + 59*time.Minute, "179m"},
		{5*time.Hour + 3*time.Minute, "5h3m"},
		{30 * time.Hour, "30h"},
		{4*24*time.Hour + 2*time.Hour, "4d2h"},
		{12 * 24 * time.Hour, "12d"},
		{3 * 365 * 24 * time.Hour, "3y"},
	}
	for _, tt := range tests {
		if got := humanDuration(tt.given); got != tt.want {
			t.Errorf("humanDuration(%s) = %q, want %q", tt.given, got, tt.want)
		}
	}
}
