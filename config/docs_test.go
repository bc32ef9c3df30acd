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

// exampleEnv reads the assignments of docs/examples.md in order, each with the comment lines
// right above it ("" when there are none), joined by spaces without their "#".
func exampleEnv(t testing.TB) (names []string, values, comments map[string]string) {
	t.Helper()
	f, err := os.Open(examplesPath)
	if err != nil {
		t.Fatalf("opening %s: %v", examplesPath, err)
	}
	defer f.Close()
	values, comments = map[string]string{}, map[string]string{}
	var above []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if m := envLine.FindStringSubmatch(line); m != nil {
			names = append(names, m[1])
			// The file is meant to be sourced by a shell, which strips the single quotes.
			values[m[1]] = strings.TrimSuffix(strings.TrimPrefix(m[2], "'"), "'")
			comments[m[1]] = strings.Join(above, " ")
		}
		if c, ok := strings.CutPrefix(line, "#"); ok {
			above = append(above, strings.TrimSpace(c))
		} else {
			above = above[:0]
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("reading %s: %v", examplesPath, err)
	}
	return names, values, comments
}

// TestVars_documentedInExamples checks that docs/examples.md assigns every variable Load reads,
// once, with a comment above, and no variable Load does not read.
func TestVars_documentedInExamples(t *testing.T) {
	names, _, comments := exampleEnv(t)
	vars := config.Vars()
	for _, v := range vars {
		switch n := count(names, v); {
		case n == 0:
			t.Errorf("%s: no line %s=…", examplesPath, v)
		case n > 1:
			t.Errorf("%s: %s is assigned %d times", examplesPath, v, n)
		case comments[v] == "":
			t.Errorf("%s: %s has no comment line above it", examplesPath, v)
		}
	}
	for _, n := range names {
		if !slices.Contains(vars, n) {
			t.Errorf("%s: %s is not a variable config.Load reads", examplesPath, n)
		}
	}
}

// documentedDefault finds the default a variable's comment states: "Default: 30s." or "(default
// 5)"; "empty" stands for "".
var documentedDefault = regexp.MustCompile(`(?i)\bdefault:?\s+([^\s,;()]+)`)

// TestDefault checks Default against the defaults docs/examples.md states: every variable that is
// not required states one, which Load reads into what Default holds ("empty": Default holds
// nothing); a required one has none.
func TestDefault(t *testing.T) {
	_, _, comments := exampleEnv(t)
	defaults := config.Default().Redacted()
	for _, v := range config.Vars() {
		m := documentedDefault.FindStringSubmatch(comments[v])
		switch {
		case m == nil && strings.Contains(comments[v], "Required"):
			if defaults[v] != "" {
				t.Errorf("Default(): %s=%q, but %s says it is required", v, defaults[v], examplesPath)
			}
		case m == nil:
			t.Errorf("%s: the comment on %s states no default", examplesPath, v)
		case strings.EqualFold(m[1], "empty"):
			if defaults[v] != "" {
				t.Errorf("Default(): %s=%q, %s documents it empty", v, defaults[v], examplesPath)
			}
		default:
			documented := strings.TrimSuffix(m[1], ".")
			loadIt, want := load, base()
			if strings.HasPrefix(v, "RTMANAGER_KUBE_") {
				loadIt = loadKube
				want, _ = loadKube(t, nil)
			}
			got, err := loadIt(t, map[string]string{v: documented})
			if d := diff(got, want); err != nil || d != "" {
				t.Errorf("%s documents %s=%s, which is not Default(): %v%s", examplesPath, v, documented, err, d)
			}
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
