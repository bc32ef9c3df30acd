package httpapi

import (
	"context"
	"testing"

	rtm "github.com/galaxy-platform/rtmanager"
)

func TestAPI_start_gameIDEqualButForCaseIsConflict(t *testing.T) {
	f := newFixture(t, options{})
	f.start(t, "foo", img141)
	f.do(t, "POST", "/runtimes/Foo/start", "admin", `{"image_ref":"`+img141+`"}`).want(t, 409, rtm.CodeConflict)
	if rec, err := f.st.Get(context.Background(), "Foo"); err == nil {
		t.Fatalf("a record for Foo was written: %+v", rec)
	}
}

func TestAPI_imageSpellings_areOneImage(t *testing.T) {
	f := newFixture(t, options{})
	if rec := f.start(t, "g1", "docker.io/"+img141); rec.DesiredImageRef != img141 || rec.CurrentImageRef != img141 {
		t.Fatalf("started in the long spelling: %+v, want %s", rec, img141)
	}
	f.do(t, "POST", "/runtimes/g1/start", "admin", `{"image_ref":"index.docker.io/`+img141+`"}`).want(t, 200, "")
	r := f.do(t, "POST", "/runtimes/g1/patch", "admin", `{"image_ref":"docker.io/`+img142+`"}`)
	r.want(t, 200, "")
	if rec := r.record(t); rec.DesiredImageRef != img142 || rec.CurrentImageRef != img142 {
		t.Fatalf("patched in the long spelling: %+v, want %s", rec, img142)
	}
}
