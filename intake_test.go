package rtmanager

import (
	"context"
	"fmt"
	"testing"
)

// recorder is a Recorder over one record: it applies the admission as the store does (an answer
// is recorded unless discarded, a write replaces the record) and keeps what it was asked.
type recorder struct {
	rec       *Record
	busy      bool
	caseTaken bool // the first Submit fails as for a game id that differs only in case
	submitted []Request
	recorded  []Answer // answers stored with their request
}

func (r *recorder) Submit(_ context.Context, req Request, admit Admitter) (Submission, error) {
	r.submitted = append(r.submitted, req)
	if r.caseTaken {
		r.caseTaken = false
		return Submission{}, fmt.Errorf("recording: %w", ErrGameIDCaseTaken)
	}
	adm := admit(r.rec, r.busy)
	sub := Submission{Request: req, Answer: adm.Answer, Record: r.rec}
	if adm.Answer != nil && adm.Discard {
		sub.Discarded = true
		return sub, nil
	}
	if adm.Write {
		rec := adm.Record
		r.rec, sub.Record = &rec, &rec
	}
	if adm.Answer != nil {
		r.recorded = append(r.recorded, *adm.Answer)
	}
	return sub, nil
}

func TestIntake_Take(t *testing.T) {
	running := func() *Record {
		return &Record{GameID: "g1", Status: StatusRunning, DesiredState: DesiredRunning, Generation: 2,
			ObservedGeneration: 2, DesiredImageRef: "galaxy/game:1.4.1", CurrentImageRef: "galaxy/game:1.4.1"}
	}
	start := func(ch Channel, img string) Request {
		return Request{Channel: ch, RequestID: "r1", GameID: "g1", Kind: OpStart, ImageRef: img}
	}
	refuse := func(*Record) *Answer { return &Answer{Outcome: OutcomeFailed, Code: CodeConflict, Message: "guarded"} }
	for _, tt := range []struct {
		name      string
		rec       *Record
		busy      bool
		caseTaken bool
		req       Request
		guard     Guard
		code      ErrorCode // the answer at once ("" when pending; "-" for succeeded)
		discarded bool
		recorded  int // answers stored
		submits   int
		enqueued  bool
		image     string // the image as submitted, when checked
	}{
		{name: "a new start is recorded and enqueued, its image in one spelling",
			req: start(ChannelStartJobs, "docker.io/galaxy/game:1.4.1"), submits: 1, enqueued: true, image: "galaxy/game:1.4.1"},
		{name: "a REST start the same",
			req: start(ChannelREST, "galaxy/game:1.4.1"), submits: 1, enqueued: true, image: "galaxy/game:1.4.1"},
		{name: "a job's image outside the allow-list is refused and recorded",
			req: start(ChannelStartJobs, "evil/game:1.0.0"), code: CodeStartConfigInvalid, recorded: 1, submits: 1},
		{name: "a REST start's is refused before anything is recorded",
			req: start(ChannelREST, "evil/game:1.0.0"), code: CodeStartConfigInvalid, discarded: true},
		{name: "a REST stop of an unknown game is refused under the lock and discarded",
			req: Request{Channel: ChannelREST, RequestID: "r1", GameID: "g1", Kind: OpStop}, code: CodeRuntimeNotFound,
			discarded: true, submits: 1},
		{name: "a stop job of an unknown game is recorded refused",
			req: Request{Channel: ChannelStopJobs, RequestID: "r1", GameID: "g1", Kind: OpStop}, code: CodeRuntimeNotFound,
			recorded: 1, submits: 1},
		{name: "REST is refused while another kind of request is pending, nothing recorded",
			rec: running(), busy: true, req: Request{Channel: ChannelREST, RequestID: "r1", GameID: "g1", Kind: OpRestart},
			code: CodeConflict, discarded: true, submits: 1},
		{name: "a success at once is recorded, even for REST, and not enqueued",
			rec: running(), req: start(ChannelREST, "galaxy/game:1.4.1"), code: "-", recorded: 1, submits: 1},
		{name: "a guard's refusal comes before the rules",
			rec: running(), req: Request{Channel: ChannelREST, RequestID: "r1", GameID: "g1", Kind: OpPatch, ImageRef: "galaxy/game:1.4.2"},
			guard: refuse, code: CodeConflict, discarded: true, submits: 1},
		{name: "a job whose game id differs only in case is recorded refused",
			caseTaken: true, req: start(ChannelStartJobs, "galaxy/game:1.4.1"), code: CodeConflict, recorded: 1, submits: 2},
		{name: "a REST request's is refused, nothing recorded",
			caseTaken: true, req: start(ChannelREST, "galaxy/game:1.4.1"), code: CodeConflict, discarded: true, submits: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := &recorder{rec: tt.rec, busy: tt.busy, caseTaken: tt.caseTaken}
			var enqueued []string
			in := &Intake{Store: st, Enqueue: func(id string) { enqueued = append(enqueued, id) },
				Settings: testSettings(), Allowed: []string{"galaxy/game"}}
			sub, err := in.Take(context.Background(), tt.req, tt.guard)
			if err != nil {
				t.Fatal(err)
			}
			var code ErrorCode
			if sub.Answer != nil {
				code = sub.Answer.Code
				if sub.Answer.Outcome == OutcomeSucceeded {
					code = "-"
				}
			}
			if code != tt.code || sub.Discarded != tt.discarded {
				t.Fatalf("answer %+v discarded %v, want code %q discarded %v", sub.Answer, sub.Discarded, tt.code, tt.discarded)
			}
			if len(st.recorded) != tt.recorded || len(st.submitted) != tt.submits {
				t.Fatalf("%d answers recorded in %d submissions, want %d in %d", len(st.recorded), len(st.submitted), tt.recorded, tt.submits)
			}
			if got := len(enqueued) == 1 && enqueued[0] == "g1"; got != tt.enqueued || len(enqueued) > 1 {
				t.Fatalf("enqueued %v, want enqueued=%v", enqueued, tt.enqueued)
			}
			if tt.image != "" && st.submitted[0].ImageRef != tt.image {
				t.Fatalf("submitted image %q, want %q", st.submitted[0].ImageRef, tt.image)
			}
		})
	}
}

func testSettings() Settings {
	return Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/state/" + id }}
}

func TestAdmit_restart_usesTheCurrentImage(t *testing.T) {
	const old, asked = "galaxy/game:1.4.1", "galaxy/game:1.4.2"
	settled := func(r Record) *Record { r.GameID, r.Generation, r.ObservedGeneration = "g1", 3, 3; return &r }
	for _, tt := range []struct {
		name  string
		given *Record
		want  string // the image the restart asks for; "" when refused with conflict
	}{
		{"running", settled(Record{Status: StatusRunning, DesiredState: DesiredRunning,
			DesiredImageRef: old, CurrentImageRef: old}), old},
		{"a failed start of another image", settled(Record{Status: StatusFailed, DesiredState: DesiredRunning,
			DesiredImageRef: asked, CurrentImageRef: old, LastErrorCode: CodeImagePullFailed}), old},
		{"stopped after a failed patch", settled(Record{Status: StatusStopped, DesiredState: DesiredStopped,
			DesiredImageRef: asked, CurrentImageRef: old}), old},
		{"after a dispose", settled(Record{Status: StatusRemoved, DesiredState: DesiredRemoved,
			DesiredImageRef: old, CurrentImageRef: old}), old},
		{"never ran", settled(Record{Status: StatusFailed, DesiredState: DesiredRunning,
			DesiredImageRef: asked}), asked},
		{"no image at all", settled(Record{Status: StatusRemoved, DesiredState: DesiredRemoved}), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			adm := Admit(tt.given, Request{GameID: "g1", Kind: OpRestart, Channel: ChannelREST}, false, testSettings())
			if tt.want == "" {
				if adm.Answer == nil || adm.Answer.Code != CodeConflict || adm.Write {
					t.Fatalf("admitted as %+v, want conflict", adm)
				}
				return
			}
			if !adm.Write || adm.Answer != nil {
				t.Fatalf("admitted as %+v, want a write", adm)
			}
			r := adm.Record
			if r.DesiredImageRef != tt.want || r.DesiredState != DesiredRunning || r.ContainerGeneration <= tt.given.Generation {
				t.Fatalf("restart asks for %q (desired %s, container generation %d), want %q with a fresh container",
					r.DesiredImageRef, r.DesiredState, r.ContainerGeneration, tt.want)
			}
		})
	}
}

func TestAdmit_imageSpellings_areOneImage(t *testing.T) {
	running := func(image string) *Record {
		return &Record{GameID: "g1", Status: StatusRunning, DesiredState: DesiredRunning, DesiredImageRef: image,
			CurrentImageRef: image, Generation: 2, ObservedGeneration: 2}
	}
	for _, tt := range []struct {
		name         string
		given        *Record
		kind         OpKind
		image        string
		wantConflict bool
	}{
		{"start, docker.io spelling", running("galaxy/game:1.4.2"), OpStart, "docker.io/galaxy/game:1.4.2", false},
		{"start, index.docker.io spelling", running("galaxy/game:1.4.2"), OpStart, "index.docker.io/galaxy/game:1.4.2", false},
		{"start, record in the long spelling", running("docker.io/galaxy/game:1.4.2"), OpStart, "galaxy/game:1.4.2", false},
		{"start, library spelling", running("busybox:1.36.0"), OpStart, "docker.io/library/busybox:1.36.0", false},
		{"start, another image", running("galaxy/game:1.4.2"), OpStart, "docker.io/galaxy/game:1.4.3", true},
		{"start, v tag is another tag", running("galaxy/game:1.4.2"), OpStart, "galaxy/game:v1.4.2", true},
		{"patch to the image it runs", running("galaxy/game:1.4.2"), OpPatch, "docker.io/galaxy/game:1.4.2", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			adm := Admit(tt.given, Request{GameID: "g1", Kind: tt.kind, ImageRef: tt.image, Channel: ChannelStartJobs},
				false, testSettings())
			if tt.wantConflict {
				if adm.Answer == nil || adm.Answer.Code != CodeConflict {
					t.Fatalf("admitted as %+v, want conflict", adm)
				}
				return
			}
			if adm.Answer == nil || adm.Answer.Outcome != OutcomeSucceeded || adm.Write {
				t.Fatalf("admitted as %+v, want succeeded at once", adm)
			}
		})
	}
}
