package rtmanager

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/Masterminds/semver/v3"
	"github.com/distribution/reference"
)

// gameIDPattern is CONTRACT §3's game id, written independently of ValidateGameID's loop.
var gameIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

func FuzzValidateGameID(f *testing.F) {
	for _, s := range []string{"g1", "game-42_a", "", "-lead", "_lead", "a/b", "../etc", "é", "a\x00",
		strings.Repeat("a", 64), strings.Repeat("a", 65), "G", "9", "a b", "a.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateGameID(id)
		if ok := gameIDPattern.MatchString(id); ok != (err == nil) {
			t.Fatalf("ValidateGameID(%q) = %v, but the contract's pattern matches: %v", id, err, ok)
		}
		if err != nil {
			if code := CodeOf(err, ""); code != CodeInvalidRequest {
				t.Fatalf("ValidateGameID(%q): code %q, want %q", id, code, CodeInvalidRequest)
			}
			if MessageOf(err) == "" {
				t.Fatalf("ValidateGameID(%q): empty message", id)
			}
		}
	})
}

// imageSeeds are image references of every kind the validators tell apart.
var imageSeeds = []string{
	"galaxy/game:1.4.1", "galaxy/game:v1.4.2", "galaxy/game:1.4.1-rc.1", "galaxy/game:latest",
	"galaxy/game", "galaxy/game:1.4", "galaxy/game:01.4.1", "docker.io/galaxy/game:1.4.1",
	"registry.example.com:5000/galaxy/game:2.0.0", "galaxy/game@sha256:" + strings.Repeat("a", 64),
	"galaxy/game:1.4.1@sha256:" + strings.Repeat("b", 64), "Galaxy/Game:1.4.1", "busybox:1.36.0",
	"", ":1.4.1", "galaxy/game:1.4.1\x00", "galaxy//game:1.4.1", "galaxy/game:" + strings.Repeat("9", 130),
	"galaxy/game:1.5.0", "galaxy/game:99999999999999999999.0.0",
	"index.docker.io/galaxy/game:1.4.1", "docker.io/library/busybox:1.36.0", "library/busybox:1.36.0",
}

// checkAccepted checks the properties every accepted image must have: a parseable reference
// without digest, a tag that is strict semver (with an optional leading v) and matches Version.
func checkAccepted(t *testing.T, ref string, img ImageRef) {
	t.Helper()
	if img.Raw != ref {
		t.Fatalf("%q: Raw = %q", ref, img.Raw)
	}
	if len(ref) > MaxFieldBytes {
		t.Fatalf("%q: accepted although longer than %d bytes", ref, MaxFieldBytes)
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		t.Fatalf("%q: accepted but not a reference: %v", ref, err)
	}
	if _, digested := named.(reference.Digested); digested {
		t.Fatalf("%q: accepted with a digest", ref)
	}
	tagged, ok := named.(reference.NamedTagged)
	if !ok || tagged.Tag() != img.Tag {
		t.Fatalf("%q: tag %q, reference says %v", ref, img.Tag, named)
	}
	if img.Repository == "" || img.Repository != reference.FamiliarName(named) {
		t.Fatalf("%q: repository %q", ref, img.Repository)
	}
	// The canonical spelling names the same image, and is its own canonical spelling.
	canon, err := reference.ParseNormalizedNamed(img.Ref)
	if err != nil || canon.String() != named.String() {
		t.Fatalf("%q: canonical spelling %q names %v (%v), want %v", ref, img.Ref, canon, err, named)
	}
	if again, err := ParseImageRef(img.Ref); err != nil || again.Ref != img.Ref || !SameImage(ref, img.Ref) {
		t.Fatalf("%q: canonical spelling %q parses as %+v (%v)", ref, img.Ref, again, err)
	}
	v, err := semver.StrictNewVersion(strings.TrimPrefix(img.Tag, "v"))
	if err != nil {
		t.Fatalf("%q: accepted tag %q is not semver: %v", ref, img.Tag, err)
	}
	if img.Version == nil || !img.Version.Equal(v) {
		t.Fatalf("%q: Version %v, tag says %v", ref, img.Version, v)
	}
}

// wantCode fails unless err carries one of codes and a message.
func wantCode(t *testing.T, what string, err error, codes ...ErrorCode) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: error %v carries no contract code", what, err)
	}
	for _, c := range codes {
		if e.Code == c {
			if e.Message == "" {
				t.Fatalf("%s: code %s with an empty message", what, e.Code)
			}
			return
		}
	}
	t.Fatalf("%s: code %s, want one of %v", what, e.Code, codes)
}

func FuzzParseImageRef(f *testing.F) {
	for _, s := range imageSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		img, err := ParseImageRef(ref)
		if err != nil {
			wantCode(t, "ParseImageRef("+ref+")", err, CodeStartConfigInvalid, CodeImageRefNotSemver)
			return
		}
		checkAccepted(t, ref, img)
	})
}

// splitAllowed turns a fuzzed comma list into an allow-list, as config does.
func splitAllowed(list string) []string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// inList reports whether repository s is in list, whose entries name repositories in any
// spelling ("docker.io/galaxy/game" is "galaxy/game").
func inList(s string, list []string) bool {
	for _, v := range list {
		if named, err := reference.ParseNormalizedNamed(v); err == nil && reference.IsNameOnly(named) {
			v = reference.FamiliarName(named)
		}
		if v == s {
			return true
		}
	}
	return false
}

func FuzzValidateStartImage(f *testing.F) {
	for _, s := range imageSeeds {
		f.Add(s, "galaxy/game")
		f.Add(s, "galaxy/game,busybox")
	}
	f.Add("galaxy/game:1.4.1", "")
	f.Add("galaxy/game:1.4.1", "docker.io/galaxy/game")
	f.Add("index.docker.io/library/busybox:1.36.0", "busybox")
	f.Fuzz(func(t *testing.T, ref, allowList string) {
		allowed := splitAllowed(allowList)
		img, err := ValidateStartImage(ref, allowed)
		if err != nil {
			// Every refusal of a start is start_config_invalid (CONTRACT §5).
			wantCode(t, "ValidateStartImage("+ref+")", err, CodeStartConfigInvalid)
			return
		}
		checkAccepted(t, ref, img)
		if !inList(img.Repository, allowed) {
			t.Fatalf("%q accepted, but its repository %q is not in %q", ref, img.Repository, allowed)
		}
	})
}

func FuzzCheckPatch(f *testing.F) {
	for _, next := range imageSeeds {
		f.Add("galaxy/game:1.4.1", next, "galaxy/game")
	}
	f.Add("galaxy/game:v1.4.1", "galaxy/game:1.4.3", "galaxy/game")
	f.Add("galaxy/game:latest", "galaxy/game:1.4.2", "galaxy/game")
	f.Add("busybox:1.4.1", "galaxy/game:1.4.2", "galaxy/game")
	f.Add("galaxy/game:1.4.1", "busybox:1.4.2", "galaxy/game")
	f.Fuzz(func(t *testing.T, current, next, allowList string) {
		allowed := splitAllowed(allowList)
		img, err := CheckPatch(current, next, allowed)
		if err != nil {
			wantCode(t, "CheckPatch("+current+", "+next+")", err,
				CodeImageRefNotSemver, CodeSemverPatchOnly, CodeStartConfigInvalid)
			return
		}
		checkAccepted(t, next, img)
		if !inList(img.Repository, allowed) {
			t.Fatalf("patch to %q accepted, but its repository %q is not in %q", next, img.Repository, allowed)
		}
		cur, err := ParseImageRef(current)
		if err != nil {
			t.Fatalf("patch from %q accepted, but the current image does not parse: %v", current, err)
		}
		if cur.Version.Major() != img.Version.Major() || cur.Version.Minor() != img.Version.Minor() {
			t.Fatalf("patch from %s to %s accepted across a major or minor version", cur.Version, img.Version)
		}
	})
}
