package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/galaxy-platform/rtmanager/test/testenv"

	rtm "github.com/galaxy-platform/rtmanager"
)

// fakeEngines says the addresses in its set are engines and records every address asked about.
type fakeEngines struct {
	engines map[netip.Addr]bool

	mu    sync.Mutex
	asked []netip.Addr
}

func (f *fakeEngines) IsEngine(_ context.Context, addr netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, addr)
	return f.engines[addr]
}

// listenerRoutes are one request for every route the listener serves: the probes, /metrics,
// pprof, every API route of the routes table (with a valid body where one is needed), a known
// API path with another method, and unknown paths inside and outside the API.
func listenerRoutes() [][2]string {
	out := [][2]string{
		{"GET", "/healthz"}, {"GET", "/readyz"}, {"GET", "/metrics"}, {"GET", "/debug/pprof/"},
		{"GET", "/debug/pprof/cmdline"}, {"PUT", BasePath + "/runtimes"}, {"GET", BasePath + "/nothing"},
		{"GET", "/nothing"},
	}
	for _, rt := range routes() {
		out = append(out, [2]string{rt.method, BasePath + strings.ReplaceAll(rt.path, "{game_id}", "g1")})
	}
	return out
}

// bodyFor returns a body every mutation accepts.
func bodyFor(path string) io.Reader {
	switch {
	case strings.HasSuffix(path, "/start"):
		return strings.NewReader(`{"image_ref":"galaxy/game:1.4.1"}`)
	case strings.HasSuffix(path, "/patch"):
		return strings.NewReader(`{"image_ref":"galaxy/game:1.4.2"}`)
	case strings.HasSuffix(path, "/stop"):
		return strings.NewReader(`{"reason":"admin_request"}`)
	case strings.HasSuffix(path, "/restart"):
		return strings.NewReader(`{}`)
	}
	return nil
}

func newEngineHandler(engines EngineAddrs, token string) (http.Handler, *recordingStore, *testenv.SyncBuffer) {
	st := &recordingStore{rec: fuzzRecords[1]}
	logs := &testenv.SyncBuffer{}
	api := NewAPI(APIOptions{Store: st, Allowed: []string{"galaxy/game"}, Token: token, Logs: newFakeLogs("line\n"),
		Intake: newIntake(st, nil)})
	h := NewHandler(Options{API: api, Engines: engines, PProf: true,
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "# metrics\n") }),
		Checks:  []Check{{Name: "nothing", Ping: func(context.Context) error { return nil }}},
		Log:     slog.New(slog.NewJSONHandler(logs, nil))})
	return h, st, logs
}

func TestHandler_engines_refusedOnEveryRoute(t *testing.T) {
	engine := netip.MustParseAddr("172.30.0.7")
	fake := &fakeEngines{engines: map[netip.Addr]bool{engine: true}}
	const token = "s3cret"
	h, st, logs := newEngineHandler(fake, token)

	for _, rt := range listenerRoutes() {
		for _, from := range []string{"172.30.0.7:40123", "[::ffff:172.30.0.7]:40123"} {
			req := httptest.NewRequest(rt[0], rt[1], bodyFor(rt[1]))
			req.RemoteAddr = from
			req.Header.Set(CallerHeader, "admin")
			req.Header.Set("Authorization", "Bearer "+token) // a valid token does not help
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var e ErrorBody
			if rec.Code != http.StatusForbidden || json.Unmarshal(rec.Body.Bytes(), &e) != nil ||
				e.Error.Code != rtm.CodeForbidden || !strings.Contains(e.Error.Message, "engine") {
				t.Errorf("%s %s from %s: %d %s; want 403 forbidden", rt[0], rt[1], from, rec.Code, rec.Body)
			}
		}
	}
	if st.calls != nil {
		t.Errorf("refused requests reached the store: %v", st.calls)
	}
	if !strings.Contains(logs.String(), `"msg":"request from a game engine refused"`) {
		t.Errorf("no refusal logged: %s", logs)
	}
	if n := strings.Count(logs.String(), "request from a game engine refused"); n != 1 {
		t.Errorf("%d refusal lines within a second, want 1 (rate-limited)", n)
	}
}

func TestHandler_engines_otherSourcesServed(t *testing.T) {
	fake := &fakeEngines{engines: map[netip.Addr]bool{netip.MustParseAddr("172.30.0.7"): true}}
	h, st, _ := newEngineHandler(fake, "")

	for _, rt := range listenerRoutes() {
		for _, from := range []string{"172.30.0.8:40123", "10.0.0.5:5000", "[2001:db8::1]:443"} {
			req := httptest.NewRequest(rt[0], rt[1], bodyFor(rt[1]))
			req.RemoteAddr = from
			req.Header.Set(CallerHeader, "admin")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code == http.StatusForbidden || rec.Code >= 500 {
				t.Errorf("%s %s from %s: %d %s; want it served", rt[0], rt[1], from, rec.Code, rec.Body)
			}
		}
	}
	if len(st.calls) == 0 {
		t.Error("no request reached the store")
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.asked) != 3*len(listenerRoutes()) {
		t.Errorf("engines asked %d times, want once per request (%d)", len(fake.asked), 3*len(listenerRoutes()))
	}
}

// TestHandler_engines_realConnection checks that the source address comes from the connection:
// over real TCP from loopback, a fake that calls loopback an engine refuses the request, and
// X-Forwarded-For changes nothing.
func TestHandler_engines_realConnection(t *testing.T) {
	fake := &fakeEngines{engines: map[netip.Addr]bool{netip.MustParseAddr("127.0.0.1"): true}}
	h, _, _ := newEngineHandler(fake, "")
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	req, err := http.NewRequest("DELETE", srv.URL+BasePath+"/runtimes/g1/container", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(CallerHeader, "admin")
	req.Header.Set("X-Forwarded-For", "10.0.0.5")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Errorf("DELETE from loopback called an engine: %d, want 403", res.StatusCode)
	}
}

func TestHandler_engines_unparsableSourceRefused(t *testing.T) {
	h, _, _ := newEngineHandler(&fakeEngines{}, "")
	req := httptest.NewRequest("GET", "/healthz", nil)
	req.RemoteAddr = "@"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("unparsable source: %d, want 403", rec.Code)
	}
}
