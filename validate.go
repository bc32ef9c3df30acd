package rtmanager

import (
	"strings"

	"github.com/Masterminds/semver/v3"
	"github.com/distribution/reference"
)

// MaxFieldBytes is the largest value a job field may carry; a longer one makes the job invalid.
const MaxFieldBytes = 1024

// ValidateGameID checks a game id against CONTRACT §3: 1–64 characters of [A-Za-z0-9_-],
// starting with a letter or digit. It is called before any Docker or file-system work.
func ValidateGameID(id string) error {
	if id == "" {
		return Errorf(CodeInvalidRequest, "game_id is empty")
	}
	if len(id) > 64 {
		return Errorf(CodeInvalidRequest, "game_id is longer than 64 characters")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return Errorf(CodeInvalidRequest, "game_id must start with a letter or digit")
		}
		if !alnum && c != '_' && c != '-' {
			return Errorf(CodeInvalidRequest, "game_id may hold only letters, digits, '_' and '-'")
		}
	}
	return nil
}

// ImageRef is a parsed, validated engine image reference.
type ImageRef struct {
	Raw string // as given
	// Ref is the reference in its canonical spelling: Docker's familiar form, the one `docker
	// images` prints ("galaxy/game:1.4.2" for "docker.io/galaxy/game:1.4.2" and
	// "index.docker.io/galaxy/game:1.4.2", "busybox:1.36.0" for "docker.io/library/busybox:1.36.0").
	// Every spelling of one image has the same Ref; requests carry it, so records, container
	// labels and answers name an image one way.
	Ref        string
	Repository string // familiar name, e.g. "galaxy/game"
	Tag        string
	Version    *semver.Version
}

// ParseImageRef parses ref as a Docker reference with a semver tag and returns it with its
// canonical spelling (ImageRef.Ref). It fails with start_config_invalid when ref is not a
// reference or carries a digest, and image_ref_not_semver when it names no tag or the tag is not
// semver. The allow-list is checked separately by CheckAllowed.
func ParseImageRef(ref string) (ImageRef, error) {
	if ref == "" {
		return ImageRef{}, Errorf(CodeStartConfigInvalid, "image_ref is empty")
	}
	if len(ref) > MaxFieldBytes {
		return ImageRef{}, Errorf(CodeStartConfigInvalid, "image_ref is longer than %d bytes", MaxFieldBytes)
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ImageRef{}, Errorf(CodeStartConfigInvalid, "image_ref %q is not a valid image reference", ref)
	}
	tagged, ok := named.(reference.NamedTagged)
	if !ok {
		return ImageRef{}, Errorf(CodeImageRefNotSemver, "image_ref %q has no tag", ref)
	}
	if _, digested := named.(reference.Digested); digested {
		return ImageRef{}, Errorf(CodeStartConfigInvalid, "image_ref %q must not carry a digest", ref)
	}
	v, err := semver.StrictNewVersion(strings.TrimPrefix(tagged.Tag(), "v"))
	if err != nil {
		return ImageRef{}, Errorf(CodeImageRefNotSemver, "tag %q of image_ref is not semver", tagged.Tag())
	}
	return ImageRef{Raw: ref, Ref: reference.FamiliarString(tagged), Repository: reference.FamiliarName(named),
		Tag: tagged.Tag(), Version: v}, nil
}

// CanonicalImageRef returns ref in the canonical spelling ParseImageRef gives (see ImageRef.Ref),
// or ref unchanged when it is not a tagged reference ParseImageRef accepts.
func CanonicalImageRef(ref string) string {
	if img, err := ParseImageRef(ref); err == nil {
		return img.Ref
	}
	return ref
}

// SameImage reports whether a and b name the same image: equal once both are in their canonical
// spelling. Records written before references were normalised may hold another spelling.
func SameImage(a, b string) bool {
	return a == b || CanonicalImageRef(a) == CanonicalImageRef(b)
}

// CheckAllowed fails with start_config_invalid unless the image's repository is in allowed. An
// entry is compared in its familiar form, so "docker.io/galaxy/game" allows "galaxy/game" and the
// reverse; an entry that is not a repository name is compared as written.
func (r ImageRef) CheckAllowed(allowed []string) error {
	for _, a := range allowed {
		if named, err := reference.ParseNormalizedNamed(a); err == nil && reference.IsNameOnly(named) {
			a = reference.FamiliarName(named)
		}
		if a == r.Repository {
			return nil
		}
	}
	return Errorf(CodeStartConfigInvalid, "image repository %q is not in the allow-list", r.Repository)
}
