package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriteDoc_keepsAnotherProgramsSection checks that rewriting a document whole keeps the
// section another program wrote between its markers, and that WriteSection replaces only its own.
func TestWriteDoc_keepsAnotherProgramsSection(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "b.md")
	read := func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if !WriteDoc(dir, "b.md", "# Docker\nfigures 1\n") || !WriteSection(dir, "b.md", "bench-k8s", "k8s 1\n") {
		t.Fatal("write failed")
	}
	if !WriteDoc(dir, "b.md", "# Docker\nfigures 2\n") {
		t.Fatal("rewrite failed")
	}
	got := read()
	if !strings.Contains(got, "figures 2") || strings.Contains(got, "figures 1") || !strings.Contains(got, "k8s 1\n"+sectionEnd("bench-k8s")) {
		t.Fatalf("after the whole rewrite:\n%s", got)
	}
	if !WriteSection(dir, "b.md", "bench-k8s", "k8s 2\n") {
		t.Fatal("section rewrite failed")
	}
	got = read()
	if strings.Count(got, sectionBegin("bench-k8s")) != 1 || strings.Contains(got, "k8s 1") || !strings.Contains(got, "figures 2") {
		t.Fatalf("after the section rewrite:\n%s", got)
	}
}
