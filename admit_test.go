package rtmanager

import "testing"

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
