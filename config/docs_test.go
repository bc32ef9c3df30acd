package config_test

import (
	"bufio"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/galaxy-platform/rtmanager/config"
)

const examplesPath = "../docs/examples.md"

// envLine is an assignment of the example .env: a variable name at the start of a line.
var envLine = regexp.MustCompile(`^(RTMANAGER_[A-Z_]+)=(.*)$`)

// exampleEnv reads the assignments of docs/examples.md in order, and reports for each whether the
// line above it is a comment.
func exampleEnv(t testing.TB) (names []string, values map[string]string, commented map[string]bool) {
	t.Helper()
	f, err := os.Open(examplesPath)
	if err != nil {
		t.Fatalf("opening %s: %v", examplesPath, err)
	}
	defer f.Close()
	values, commented = map[string]string{}, map[string]bool{}
	prev := ""
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if m := envLine.FindStringSubmatch(line); m != nil {
			names = append(names, m[1])
			// The file is meant to be sourced by a shell, which strips the single quotes.
			values[m[1]] = strings.TrimSuffix(strings.TrimPrefix(m[2], "'"), "'")
			commented[m[1]] = strings.HasPrefix(prev, "#")
		}
		prev = line
	}
	if err := s.Err(); err != nil {
		t.Fatalf("reading %s: %v", examplesPath, err)
	}
	return names, values, commented
}

// TestVars_documentedInExamples checks that docs/examples.md assigns every variable Load reads,
// once, with a comment above, and no variable Load does not read.
func TestVars_documentedInExamples(t *testing.T) {
	names, _, commented := exampleEnv(t)
	vars := config.Vars()
	for _, v := range vars {
		switch n := count(names, v); {
		case n == 0:
			t.Errorf("%s: no line %s=…", examplesPath, v)
		case n > 1:
			t.Errorf("%s: %s is assigned %d times", examplesPath, v, n)
		case !commented[v]:
			t.Errorf("%s: %s has no comment line above it", examplesPath, v)
		}
	}
	for _, n := range names {
		if !slices.Contains(vars, n) {
			t.Errorf("%s: %s is not a variable config.Load reads", examplesPath, n)
		}
	}
}

// TestExamples_load checks that the example .env is a configuration Load accepts.
func TestExamples_load(t *testing.T) {
	_, values, _ := exampleEnv(t)
	if _, err := config.Load(func(k string) string { return values[k] }); err != nil {
		t.Errorf("Load(%s): %v", examplesPath, err)
	}
}

func count(names []string, name string) int {
	n := 0
	for _, s := range names {
		if s == name {
			n++
		}
	}
	return n
}
