package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	rtm "github.com/galaxy-platform/rtmanager"
)

// recordingStore is a Store double for the decoding fuzz tests: it serves one fixed record (or
// none), answers every submission at once, and records every call. Decoding and validation
// happen before the store is asked anything, so a double is enough; the store's behaviour under
// the API is covered by rest_test.go against PostgreSQL.
type recordingStore struct {
	rec *rtm.Record

	mu      sync.Mutex
	calls   []string
	submits []rtm.Request
}

func (s *recordingStore) called(name string) {
	s.mu.Lock()
	s.calls = append(s.calls, name)
	s.mu.Unlock()
}

func (s *recordingStore) Get(_ context.Context, gameID string) (*rtm.Record, error) {
	s.called("Get")
	if s.rec == nil {
		return nil, rtm.ErrNotFound
	}
	r := *s.rec
	r.GameID = gameID
	return &r, nil
}

func (s *recordingStore) List(context.Context, rtm.ListFilter) ([]rtm.Record, error) {
	s.called("List")
	return nil, nil
}

func (s *recordingStore) Operations(context.Context, string, int) ([]rtm.Operation, error) {
	s.called("Operations")
	return nil, nil
}

func (s *recordingStore) Health(context.Context, string) (*rtm.HealthSnapshot, error) {
	s.called("Health")
	return nil, rtm.ErrNotFound
}

func (s *recordingStore) Submit(ctx context.Context, req rtm.Request, admit rtm.Admitter) (rtm.Submission, error) {
	s.called("Submit")
	s.mu.Lock()
	s.submits = append(s.submits, req)
	s.mu.Unlock()
	rec, _ := s.Get(ctx, req.GameID)
	adm := admit(rec, false)
	if adm.Write {
		rec = &adm.Record
	}
	ans := rtm.Succeeded
	if adm.Answer != nil {
		ans = *adm.Answer
	}
	return rtm.Submission{Answer: &ans, Request: req, Record: rec}, nil
}

func (s *recordingStore) RequestAnswer(context.Context, rtm.Channel, string) (*rtm.Answer, error) {
	s.called("RequestAnswer")
	return &rtm.Succeeded, nil
}

// fuzzRecords are the records the store double may hold for the game, picked by the fuzzer.
var fuzzRecords = []*rtm.Record{
	nil,
	{Status: rtm.StatusRunning, DesiredState: rtm.DesiredRunning, DesiredImageRef: "galaxy/game:1.4.1",
		CurrentImageRef: "galaxy/game:1.4.1", CurrentContainerID: "c1", Generation: 2, ObservedGeneration: 2},
	{Status: rtm.StatusStopped, DesiredState: rtm.DesiredStopped, DesiredImageRef: "galaxy/game:1.4.1",
		CurrentImageRef: "galaxy/game:1.4.1", CurrentContainerID: "c1", Generation: 3, ObservedGeneration: 3},
	{Status: rtm.StatusRunning, DesiredState: rtm.DesiredRunning, DesiredImageRef: "galaxy/game:latest",
		CurrentImageRef: "galaxy/game:latest", CurrentContainerID: "c2", Generation: 1, ObservedGeneration: 1},
}

// fuzzRoutes are the mutations whose bodies the fuzzer writes.
var fuzzRoutes = []string{"start", "patch", "stop", "restart"}

// strictDecode is the oracle for a body the API may act on: one JSON value, then only white
// space, that decodes into dst without unknown fields (the contract's rule, stated once more
// independently of decodeBody).
func strictDecode(body []byte, dst any) bool {
	if len(body) > MaxBodyBytes {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return false
	}
	_, err := dec.Token()
	return err == io.EOF
}

// FuzzAPI_mutation sends one mutation (start, patch, stop or restart, by route) for a fuzzed
// game id path segment with a fuzzed body through the real handler. Properties: never a 5xx;
// no store call at all for an invalid game id; no submission for a body that is not one strict
// JSON object of the route's shape, for a start or patch without an image_ref, for a start
// image the allow-list or semver refuses, or for a patch CheckPatch refuses; and nothing handed
// to the store is text PostgreSQL cannot keep (such a request would fail there, as a 5xx).
func FuzzAPI_mutation(f *testing.F) {
	for _, s := range []struct {
		route  uint8
		gameID string
		body   string
		rec    uint8
		ctype  bool
	}{
		{0, "g1", `{"image_ref":"galaxy/game:1.4.1"}`, 0, true},
		{0, "g1", `{"image_ref":"galaxy/game:1.4.2"}`, 1, true},
		{0, "g1", `{"image_ref":"busybox:1.36.0"}`, 0, true},
		{0, "g1", `{"image_ref":"galaxy/game:latest"}`, 0, true},
		{0, "g1", `{"image_ref":"galaxy/game:1.4.1","extra":1}`, 0, true},
		{0, "g1", `{"image_ref":"galaxy/game:1.4.1"} {}`, 0, true},
		{0, "g1", `{"image_ref":7}`, 0, true},
		{0, "g1", `[]`, 0, true},
		{0, "g1", `null`, 0, true},
		{0, "g1", ``, 0, true},
		{0, "g1", `{"image_ref":"galaxy/game:1.4.1"`, 0, false},
		{1, "g1", `{"image_ref":"galaxy/game:1.4.2"}`, 1, true},
		{1, "g1", `{"image_ref":"galaxy/game:1.5.0"}`, 1, true},
		{1, "g1", `{"image_ref":"galaxy/game:1.4.2"}`, 0, true},
		{1, "g1", `{"image_ref":"galaxy/game:1.4.2"}`, 3, true},
		{1, "g1", `{"IMAGE_REF":"galaxy/game:1.4.2"}`, 1, true},
		{2, "g1", `{"reason":"maintenance"}`, 1, true},
		{2, "g1", `{"reason":"a\u0000b"}`, 1, true},
		{2, "g1", `{}`, 2, true},
		{3, "g1", `{}`, 1, true},
		{0, "", `{"image_ref":"galaxy/game:1.4.1"}`, 0, true},
		{0, "-g", `{"image_ref":"galaxy/game:1.4.1"}`, 0, true},
		{0, "../etc", `{"image_ref":"galaxy/game:1.4.1"}`, 0, true},
		{0, "a/b", `{"image_ref":"galaxy/game:1.4.1"}`, 0, true},
		{0, "é", `{"image_ref":"galaxy/game:1.4.1"}`, 0, true},
		{0, strings.Repeat("a", 65), `{"image_ref":"galaxy/game:1.4.1"}`, 0, true},
		{1, "g\x00", `{"image_ref":"galaxy/game:1.4.2"}`, 1, true},
	} {
		f.Add(s.route, s.gameID, []byte(s.body), s.rec, s.ctype)
	}
	f.Fuzz(func(t *testing.T, routeN uint8, gameID string, body []byte, recN uint8, contentType bool) {
		route := fuzzRoutes[int(routeN)%len(fuzzRoutes)]
		st := &recordingStore{rec: fuzzRecords[int(recN)%len(fuzzRecords)]}
		h := NewAPI(APIOptions{Store: st, Allowed: []string{"galaxy/game"}, WaitTimeout: 50 * time.Millisecond,
			Intake: newIntake(st, nil)})

		target := BasePath + "/runtimes/" + url.PathEscape(gameID) + "/" + route
		u, err := url.Parse("http://rtm.test" + target)
		if err != nil {
			t.Skip("not a URL the client could send")
		}
		req := httptest.NewRequest(http.MethodPost, "http://rtm.test/", bytes.NewReader(body))
		req.URL, req.RequestURI = u, u.RequestURI()
		req.Header.Set(CallerHeader, "admin")
		if contentType {
			req.Header.Set("Content-Type", "application/json")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)

		if w.Code >= 500 {
			t.Fatalf("POST %s with body %q: %d %s", target, body, w.Code, w.Body.String())
		}
		if rtm.ValidateGameID(gameID) != nil {
			if len(st.calls) != 0 {
				t.Fatalf("invalid game id %q: store calls %v (status %d)", gameID, st.calls, w.Code)
			}
			return
		}
		if w.Code >= 300 && w.Code < 400 {
			t.Fatalf("valid game id %q redirected: %d", gameID, w.Code)
		}
		for _, r := range st.submits {
			for name, v := range map[string]string{"game_id": r.GameID, "image_ref": r.ImageRef,
				"old_image_ref": r.OldImageRef, "reason": r.Reason, "request_id": r.RequestID} {
				if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
					t.Fatalf("%s %q handed to the store is not text PostgreSQL can keep (body %q)", name, v, body)
				}
			}
			if r.GameID != gameID {
				t.Fatalf("submitted for game %q, asked for %q", r.GameID, gameID)
			}
		}
		if len(st.submits) == 0 {
			return
		}
		if len(st.submits) != 1 {
			t.Fatalf("%d submissions for one request", len(st.submits))
		}
		sub := st.submits[0]
		switch route {
		case "start", "patch":
			var b ImageBody
			if !strictDecode(body, &b) || b.ImageRef == "" {
				t.Fatalf("%s submitted for body %q", route, body)
			}
			if sub.ImageRef != b.ImageRef {
				t.Fatalf("%s submitted image %q, body says %q", route, sub.ImageRef, b.ImageRef)
			}
			if route == "start" {
				if _, err := rtm.ValidateStartImage(b.ImageRef, []string{"galaxy/game"}); err != nil {
					t.Fatalf("start submitted with image %q refused by validation: %v", b.ImageRef, err)
				}
			} else if _, err := rtm.CheckPatch(imageOf(st.rec), b.ImageRef, []string{"galaxy/game"}); err != nil {
				t.Fatalf("patch submitted from %q to %q refused by CheckPatch: %v", imageOf(st.rec), b.ImageRef, err)
			}
		case "stop":
			var b StopBody
			if len(bytes.TrimSpace(body)) > 0 && !strictDecode(body, &b) {
				t.Fatalf("stop submitted for body %q", body)
			}
		case "restart":
			var b struct{}
			if len(bytes.TrimSpace(body)) > 0 && !strictDecode(body, &b) {
				t.Fatalf("restart submitted for body %q", body)
			}
		}
	})
}

// FuzzAPI_gameIDPath fuzzes the game id segment of every route, reads included, with an
// otherwise well-formed request. Properties: never a 5xx, and no store call unless the segment
// is a contract game id.
func FuzzAPI_gameIDPath(f *testing.F) {
	for _, id := range []string{"g1", "", ".", "..", "-x", "a b", "a%2Fb", "é", "g\x00", strings.Repeat("z", 65), "a?b", "a#b"} {
		for r := uint8(0); r < 8; r++ {
			f.Add(id, r)
		}
	}
	f.Fuzz(func(t *testing.T, gameID string, routeN uint8) {
		routes := []struct{ method, suffix, body string }{
			{http.MethodGet, "", ""}, {http.MethodGet, "/operations", ""}, {http.MethodGet, "/health", ""},
			{http.MethodPost, "/start", `{"image_ref":"galaxy/game:1.4.1"}`}, {http.MethodPost, "/stop", `{}`},
			{http.MethodPost, "/restart", `{}`}, {http.MethodPost, "/patch", `{"image_ref":"galaxy/game:1.4.2"}`},
			{http.MethodDelete, "/container", ""},
		}
		rt := routes[int(routeN)%len(routes)]
		st := &recordingStore{rec: fuzzRecords[1]}
		h := NewAPI(APIOptions{Store: st, Allowed: []string{"galaxy/game"}, WaitTimeout: 50 * time.Millisecond,
			Intake: newIntake(st, nil)})
		target := BasePath + "/runtimes/" + url.PathEscape(gameID) + rt.suffix
		u, err := url.Parse("http://rtm.test" + target)
		if err != nil {
			t.Skip("not a URL the client could send")
		}
		var body io.Reader
		if rt.body != "" {
			body = strings.NewReader(rt.body)
		}
		req := httptest.NewRequest(rt.method, "http://rtm.test/", body)
		req.URL, req.RequestURI = u, u.RequestURI()
		req.Header.Set(CallerHeader, "admin")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %s: %d %s", rt.method, target, w.Code, w.Body.String())
		}
		if rtm.ValidateGameID(gameID) != nil && len(st.calls) != 0 {
			t.Fatalf("%s %s with invalid game id %q: store calls %v (status %d)", rt.method, target, gameID, st.calls, w.Code)
		}
		if rtm.ValidateGameID(gameID) == nil && (w.Code == http.StatusBadRequest || w.Code == http.StatusNotFound && len(st.calls) == 0) {
			t.Fatalf("%s %s with valid game id: %d %s", rt.method, target, w.Code, w.Body.String())
		}
	})
}
