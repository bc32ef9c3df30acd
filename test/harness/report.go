package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Machine describes the host: CPU model, cores, memory, OS and architecture.
func Machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "MemTotal:") {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "MemTotal:")), "%d", &kb)
				mem = fmt.Sprintf(", %.1f GiB RAM", float64(kb)/1024/1024)
			}
		}
	}
	return fmt.Sprintf("%s, %d cores (nproc)%s, %s/%s", model, runtime.NumCPU(), mem, runtime.GOOS, runtime.GOARCH)
}

// Commit returns the short HEAD of the repository at root, marked when the tree has uncommitted
// changes.
func Commit(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += " (with uncommitted changes)"
	}
	return c
}

// GoVersion is the Go release the program was built with.
func GoVersion() string { return runtime.Version() }

// WriteDoc writes a report to path, taken from the module root root when relative, and logs
// where. A section another program keeps in the file there (between its WriteSection markers)
// and text lacks is kept, appended at the end: make bench rewrites docs/benchmarks.md whole, and
// make bench-k8s's section of it must survive that.
func WriteDoc(root, path, text string) bool {
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	if old, err := os.ReadFile(path); err == nil {
		for _, sec := range sections(string(old)) {
			if !strings.Contains(text, sec.begin) {
				text = strings.TrimRight(text, "\n") + "\n\n" + sec.text
			}
		}
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		Logf("writing %s: %v", path, err)
		return false
	}
	Logf("wrote %s", path)
	return true
}

// sectionBegin and sectionEnd are the markers of the section name (WriteSection).
func sectionBegin(name string) string {
	return "<!-- " + name + ": begin (written by make " + name + ") -->"
}
func sectionEnd(name string) string { return "<!-- " + name + ": end -->" }

// markedSection is one program's section of a document, markers and final newline included.
type markedSection struct{ begin, text string }

// sections returns the marked sections of doc, in order.
func sections(doc string) []markedSection {
	var out []markedSection
	for rest := doc; ; {
		i := strings.Index(rest, "<!-- ")
		if i < 0 {
			return out
		}
		rest = rest[i:]
		name, _, _ := strings.Cut(strings.TrimPrefix(rest, "<!-- "), ": begin (")
		if strings.ContainsAny(name, " \n") || !strings.HasPrefix(rest, sectionBegin(name)) {
			rest = rest[len("<!-- "):]
			continue
		}
		j := strings.Index(rest, sectionEnd(name))
		if j < 0 {
			return out
		}
		end := j + len(sectionEnd(name))
		if end < len(rest) && rest[end] == '\n' {
			end++
		}
		out = append(out, markedSection{begin: sectionBegin(name), text: rest[:end]})
		rest = rest[end:]
	}
}

// WriteSection puts section between the markers of the section name in the document at path
// (relative to root), or appends it when the document has none, leaving the rest as it is.
func WriteSection(root, path, name, section string) bool {
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	doc, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		Logf("reading %s: %v", path, err)
		return false
	}
	text := string(doc)
	begin, endMark := sectionBegin(name), sectionEnd(name)
	section = begin + "\n" + section + endMark + "\n"
	if i := strings.Index(text, begin); i >= 0 {
		j := strings.Index(text[i:], endMark)
		if j < 0 {
			Logf("%s has the begin marker of the %s section but not its end", path, name)
			return false
		}
		end := i + j + len(endMark)
		if end < len(text) && text[end] == '\n' {
			end++
		}
		text = text[:i] + section + text[end:]
	} else {
		text = strings.TrimRight(text, "\n") + "\n\n" + section
	}
	return WriteDoc(root, path, text)
}
