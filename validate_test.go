package rtmanager

import "testing"

func TestParseImageRef_canonicalSpelling(t *testing.T) {
	for _, tt := range []struct {
		given, want string
	}{
		{"galaxy/game:1.4.2", "galaxy/game:1.4.2"},
		{"docker.io/galaxy/game:1.4.2", "galaxy/game:1.4.2"},
		{"index.docker.io/galaxy/game:1.4.2", "galaxy/game:1.4.2"},
		{"busybox:1.36.0", "busybox:1.36.0"},
		{"library/busybox:1.36.0", "busybox:1.36.0"},
		{"docker.io/library/busybox:1.36.0", "busybox:1.36.0"},
		{"galaxy/game:v1.4.2", "galaxy/game:v1.4.2"},
		{"registry.example.com:5000/galaxy/game:2.0.0", "registry.example.com:5000/galaxy/game:2.0.0"},
		{"localhost/galaxy/game:2.0.0", "localhost/galaxy/game:2.0.0"},
	} {
		t.Run(tt.given, func(t *testing.T) {
			img, err := ParseImageRef(tt.given)
			if err != nil {
				t.Fatal(err)
			}
			if img.Ref != tt.want || img.Raw != tt.given {
				t.Fatalf("Ref %q Raw %q, want Ref %q", img.Ref, img.Raw, tt.want)
			}
			if again, err := ParseImageRef(img.Ref); err != nil || again.Ref != img.Ref {
				t.Fatalf("the canonical spelling does not parse to itself: %+v %v", again, err)
			}
		})
	}
}

func TestValidateStartImage_allowListMatchesEverySpelling(t *testing.T) {
	for _, allowed := range [][]string{{"galaxy/game"}, {"docker.io/galaxy/game"}, {"index.docker.io/galaxy/game"}} {
		for _, ref := range []string{"galaxy/game:1.4.2", "docker.io/galaxy/game:1.4.2", "index.docker.io/galaxy/game:1.4.2"} {
			img, err := ValidateStartImage(ref, allowed)
			if err != nil {
				t.Fatalf("%s with allow-list %v: %v", ref, allowed, err)
			}
			if img.Ref != "galaxy/game:1.4.2" {
				t.Fatalf("%s: Ref %q", ref, img.Ref)
			}
		}
	}
	if _, err := ValidateStartImage("docker.io/other/game:1.4.2", []string{"docker.io/galaxy/game"}); CodeOf(err, "") != CodeStartConfigInvalid {
		t.Fatalf("an image outside the allow-list: %v", err)
	}
}

func TestCheckPatch_returnsTheCanonicalSpelling(t *testing.T) {
	img, err := CheckPatch("galaxy/game:1.4.1", "docker.io/galaxy/game:1.4.2", []string{"galaxy/game"})
	if err != nil || img.Ref != "galaxy/game:1.4.2" {
		t.Fatalf("%+v %v", img, err)
	}
}

func TestSameImage(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"galaxy/game:1.4.2", "docker.io/galaxy/game:1.4.2", true},
		{"busybox:1.36.0", "docker.io/library/busybox:1.36.0", true},
		{"galaxy/game:1.4.2", "galaxy/game:1.4.3", false},
		{"galaxy/game:1.4.2", "galaxy/game:v1.4.2", false},
		{"", "", true},
		{"galaxy/game:1.4.2", "", false},
		{"not a ref", "not a ref", true},
	} {
		if got := SameImage(tt.a, tt.b); got != tt.want {
			t.Errorf("SameImage(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
