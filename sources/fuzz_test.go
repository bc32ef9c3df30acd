package sources

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	tracenoop "go.opentelemetry.io/otel/trace/noop"

	rtm "github.com/galaxy-platform/rtmanager"
)

// fuzzGameID is CONTRACT §3's game id.
var fuzzGameID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// recordingJobStore is a JobStore that records what the consumer hands it. Jobs are pure
// parsing and validation up to the store, so a double is enough here; the store's own tests
// cover PostgreSQL.
type recordingJobStore struct {
	submits  []rtm.Request
	admitted []rtm.Admission // what the consumer's admitter decided for a game without a record
	invalid  []rtm.Request
	answers  []rtm.Answer
}

func (s *recordingJobStore) Submit(_ context.Context, req rtm.Request, admit rtm.Admitter) (rtm.Submission, error) {
	s.submits = append(s.submits, req)
	adm := admit(nil, false)
	s.admitted = append(s.admitted, adm)
	return rtm.Submission{Request: req, Answer: adm.Answer}, nil
}

// RequestAnswer is never asked: Submit reports no duplicates.
func (s *recordingJobStore) RequestAnswer(context.Context, rtm.Channel, string) (*rtm.Answer, error) {
	return nil, nil
}

func (s *recordingJobStore) AnswerInvalid(_ context.Context, req rtm.Request, a rtm.Answer) (bool, error) {
	s.invalid = append(s.invalid, req)
	s.answers = append(s.answers, a)
	return false, nil
}

// storable reports whether PostgreSQL can keep s in a text column: valid UTF-8 without NUL.
func storableText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// FuzzJobConsumer_handle feeds one job entry, built from fuzzed fields, to the consumer's
// handler. Properties: it never panics or fails; every entry reaches the store exactly once,
// either answered invalid_job or submitted; a submitted job has a contract game id, fields of at
// most 1 KiB, an image when it is a start, and a start with an image outside the allow-list or
// without a semver tag is refused with start_config_invalid; nothing handed to the store is text
// PostgreSQL cannot keep (a job it cannot record would be retried forever and stall the stream).
func FuzzJobConsumer_handle(f *testing.F) {
	long := strings.Repeat("x", rtm.MaxFieldBytes+1)
	type seed struct {
		stop                             bool
		hasGame                          bool
		gameID, image, requestID, reason string
		extraKey, extraValue             string
	}
	for _, s := range []seed{
		{false, true, "g1", "galaxy/game:1.4.1", "r1", "", "", ""},
		{false, true, "g1", "docker.io/galaxy/game:1.4.1", "r1", "", "", ""},
		{false, true, "g1", "index.docker.io/galaxy/game:v1.4.1", "r1", "", "", ""},
		{true, true, "g1", "", "r2", "lobby asked", "", ""},
		{true, true, "g1", "", "", "", "", ""},
		{false, false, "", "galaxy/game:1.4.1", "r3", "", "", ""},
		{false, true, "g1", "", "r4", "", "", ""},
		{false, true, "../../etc", "galaxy/game:1.4.1", "r5", "", "", ""},
		{false, true, "g1", "busybox:1.36.0", "r6", "", "", ""},
		{false, true, "g1", "galaxy/game:latest", "r7", "", "", ""},
		{false, true, "g1", "galaxy/game:1.4.1", long, "", "", ""},
		{false, true, "g1", "galaxy/game:1.4.1", "r8", "", "junk", long},
		{true, true, "g\x00", "", "r9", "", "", ""},
		{true, true, "g1", "", "r\xff", "", "", ""},
		{true, true, "g1", "", "r10", "a\x00b", "", ""},
		{true, true, strings.Repeat("€", 50), "", "r11", "", "", ""},
		{false, true, strings.Repeat("a", 65), "galaxy/game:1.4.1", "r12", "", "k\xff", long},
	} {
		f.Add(s.stop, s.hasGame, s.gameID, s.image, s.requestID, s.reason, s.extraKey, s.extraValue)
	}
	allowed := []string{"galaxy/game"}
	f.Fuzz(func(t *testing.T, stop, hasGame bool, gameID, image, requestID, reason, extraKey, extraValue string) {
		kind, fields := fuzzJob(stop, hasGame, gameID,
			map[string]string{"image_ref": image, "request_id": requestID, "reason": reason}, extraKey, extraValue)
		st := &recordingJobStore{}
		var enqueued []string
		enqueue := func(id string) { enqueued = append(enqueued, id) }
		c := &JobConsumer{Kind: kind, Stream: "runtime:" + string(kind), Store: st, Enqueue: enqueue,
			Intake: &rtm.Intake{Store: st, Enqueue: enqueue, Allowed: allowed,
				Settings: rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/state/" + id }}},
			Log: slog.New(slog.DiscardHandler), Tracer: tracenoop.NewTracerProvider().Tracer("")}
		const entryID = "1700000000000-7"
		// Field values are what the consumer reads back from Redis (the map is the entry's).
		if err := c.handle(context.Background(), rtm.StreamEntry{ID: entryID, Fields: fields}); err != nil {
			t.Fatalf("handle returned %v; only a store failure may make it fail", err)
		}
		if n := len(st.submits) + len(st.invalid); n != 1 {
			t.Fatalf("the entry reached the store %d times (submits %d, invalid %d), want once", n, len(st.submits), len(st.invalid))
		}
		var all []rtm.Request
		all = append(all, st.submits...)
		all = append(all, st.invalid...)
		for _, req := range all {
			for name, v := range map[string]string{"request_id": req.RequestID, "game_id": req.GameID,
				"image_ref": req.ImageRef, "reason": req.Reason} {
				if !storableText(v) {
					t.Fatalf("%s %q handed to the store is not text PostgreSQL can keep", name, v)
				}
			}
			if req.RequestID == "" || len(req.RequestID) > rtm.MaxFieldBytes {
				t.Fatalf("request_id of %d bytes handed to the store", len(req.RequestID))
			}
		}
		for _, a := range st.answers {
			if !storableText(a.Message) {
				t.Fatalf("answer message %q is not text PostgreSQL can keep", a.Message)
			}
		}

		bad := invalidJob(kind, fields, rtm.Request{GameID: fields["game_id"]})
		if len(st.invalid) == 1 {
			req, a := st.invalid[0], st.answers[0]
			if bad == "" {
				t.Fatalf("answered invalid_job (%q), but invalidJob finds nothing wrong", a.Message)
			}
			if a.Outcome != rtm.OutcomeFailed || a.Code != rtm.CodeInvalidJob || a.Message == "" {
				t.Fatalf("invalid job answered %+v", a)
			}
			if len(req.GameID) > 128+len("…") {
				t.Fatalf("invalid job answered with a game_id of %d bytes", len(req.GameID))
			}
			if requestID != "" && len(requestID) <= rtm.MaxFieldBytes && storableText(requestID) && req.RequestID != requestID {
				t.Fatalf("request_id %q answered as %q", requestID, req.RequestID)
			}
			if len(enqueued) != 0 {
				t.Fatalf("an invalid job enqueued %v", enqueued)
			}
			return
		}

		req := st.submits[0]
		if bad != "" {
			t.Fatalf("submitted although invalidJob says %q", bad)
		}
		if !hasGame || !fuzzGameID.MatchString(req.GameID) || req.GameID != gameID {
			t.Fatalf("submitted game_id %q (given %q, present %v) is not a contract game id", req.GameID, gameID, hasGame)
		}
		for k, v := range fields {
			if len(v) > rtm.MaxFieldBytes {
				t.Fatalf("submitted with field %q of %d bytes", k, len(v))
			}
		}
		wantID := requestID
		if wantID == "" {
			wantID = entryID
		}
		if req.RequestID != wantID {
			t.Fatalf("request_id %q, want %q", req.RequestID, wantID)
		}
		adm := st.admitted[0]
		switch kind {
		case rtm.StartJobs:
			if req.ImageRef == "" || req.Kind != rtm.OpStart || req.Channel != rtm.ChannelStartJobs {
				t.Fatalf("start submitted as %+v", req)
			}
			// A good image is submitted in its canonical spelling, a bad one as given.
			if img, err := rtm.ValidateStartImage(image, allowed); err != nil {
				if req.ImageRef != image {
					t.Fatalf("start with a bad image %q submitted with %q", image, req.ImageRef)
				}
				if adm.Answer == nil || adm.Answer.Outcome != rtm.OutcomeFailed || adm.Answer.Code != rtm.CodeStartConfigInvalid || adm.Write {
					t.Fatalf("start with a bad image (%v) admitted as %+v", err, adm)
				}
			} else {
				if req.ImageRef != img.Ref || !rtm.SameImage(req.ImageRef, image) {
					t.Fatalf("start with %q submitted with %q, want %q", image, req.ImageRef, img.Ref)
				}
				if !adm.Write || adm.Record.DesiredState != rtm.DesiredRunning || adm.Record.DesiredImageRef != img.Ref {
					t.Fatalf("start with a good image admitted as %+v", adm)
				}
			}
		case rtm.StopJobs:
			if req.Kind != rtm.OpStop || req.Channel != rtm.ChannelStopJobs {
				t.Fatalf("stop submitted as %+v", req)
			}
			if want := reason; want == "" && req.Reason != "unspecified" || want != "" && req.Reason != want {
				t.Fatalf("reason %q, given %q", req.Reason, reason)
			}
			if adm.Answer == nil || adm.Answer.Code != rtm.CodeRuntimeNotFound {
				t.Fatalf("stop of a game without a record admitted as %+v", adm)
			}
		}
		if adm.Answer == nil && (len(enqueued) != 1 || enqueued[0] != req.GameID) {
			t.Fatalf("recorded job enqueued %v, want [%s]", enqueued, req.GameID)
		}
	})
}

// fuzzJob is the kind and the fields of a fuzzed job entry: game_id when hasGame, each named field
// whose value is not empty, and (extraKey, extraValue) when the key is not empty.
func fuzzJob(stop, hasGame bool, gameID string, named map[string]string, extraKey, extraValue string) (rtm.JobKind, map[string]string) {
	fields := map[string]string{}
	if hasGame {
		fields["game_id"] = gameID
	}
	for k, v := range named {
		if v != "" {
			fields[k] = v
		}
	}
	if extraKey != "" {
		fields[extraKey] = extraValue
	}
	if stop {
		return rtm.StopJobs, fields
	}
	return rtm.StartJobs, fields
}

// FuzzInvalidJob checks invalidJob alone against the contract's rules (CONTRACT §5, workers.md
// §7): it accepts exactly the entries whose values all fit in 1 KiB and are storable text, whose
// game_id is present and a contract game id, and which carry an image when they are starts.
func FuzzInvalidJob(f *testing.F) {
	f.Add(false, "g1", true, "galaxy/game:1.4.1", "k", "v")
	f.Add(true, "g1", true, "", "reason", "")
	f.Add(false, "", false, "", "", "")
	f.Add(true, "-x", true, "", "reason", strings.Repeat("y", rtm.MaxFieldBytes+1))
	f.Add(true, "g1", true, "", "reason", "\x00")
	f.Fuzz(func(t *testing.T, stop bool, gameID string, hasGame bool, image, key, value string) {
		kind, fields := fuzzJob(stop, hasGame, gameID, map[string]string{"image_ref": image}, key, value)
		bad := invalidJob(kind, fields, rtm.Request{GameID: fields["game_id"]})
		want := true
		for _, v := range fields {
			if len(v) > rtm.MaxFieldBytes || !storableText(v) {
				want = false
			}
		}
		id, present := fields["game_id"]
		if !present || !fuzzGameID.MatchString(id) {
			want = false
		}
		if kind == rtm.StartJobs && fields["image_ref"] == "" {
			want = false
		}
		if (bad == "") != want {
			t.Fatalf("invalidJob(%s, %q) = %q, want valid=%v", kind, fields, bad, want)
		}
		if bad != "" && !storableText(bad) {
			t.Fatalf("reason %q is not storable text", bad)
		}
	})
}
