package runtime

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	rtm "github.com/galaxy-platform/rtmanager"
)

func TestStateDirs_Ensure(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "linked")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "afile"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dirs := StateDirs{Root: root, Mode: 0o750, UID: os.Getuid(), GID: os.Getgid()}
	tests := []struct {
		name  string
		given string
		want  rtm.ErrorCode // "" for success
	}{
		{"new dir is created", "g1", ""},
		{"existing dir is reused", "g1", ""},
		{"a symlinked game dir is refused", "linked", rtm.CodeStartConfigInvalid},
		{"a file in the way is refused", "afile", rtm.CodeStartConfigInvalid},
		{"dot-dot is refused", "..", rtm.CodeStartConfigInvalid},
		{"a path is refused", "a/../../etc", rtm.CodeStartConfigInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := dirs.Ensure(tt.given)
			if tt.want != "" {
				if rtm.CodeOf(err, "") != tt.want {
					t.Fatalf("Ensure(%q) = %q, %v; want %s", tt.given, got, err, tt.want)
				}
				return
			}
			if err != nil || got != filepath.Join(root, tt.given) {
				t.Fatalf("Ensure(%q) = %q, %v", tt.given, got, err)
			}
			// Admission records Path in the desired state; the reconciler mounts what Ensure made.
			if p := dirs.Path(tt.given); p != got {
				t.Fatalf("Path(%q) = %q, Ensure made %q", tt.given, p, got)
			}
			fi, err := os.Lstat(got)
			if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o750 {
				t.Fatalf("dir %v mode %v", err, fi.Mode())
			}
			st := fi.Sys().(*syscall.Stat_t)
			if int(st.Uid) != os.Getuid() || int(st.Gid) != os.Getgid() {
				t.Fatalf("owner %d:%d", st.Uid, st.Gid)
			}
		})
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatal("something was created outside the root")
	}
}
