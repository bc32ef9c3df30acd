package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// env is the package's test environment; the jobs and watch tests use its redis-server.
var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// result is how one rtmctl invocation ended.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// wantError fails unless rtmctl exited 1 with every one of parts in its stderr.
func (r result) wantError(tb testing.TB, parts ...string) {
	tb.Helper()
	if r.code != 1 {
		tb.Fatalf("exit %d, want 1: %v", r.code, r)
	}
	for _, p := range parts {
		if !strings.Contains(r.stderr, p) {
			tb.Fatalf("stderr lacks %q: %v", p, r)
		}
	}
}

// rtmctl runs the command with args and the environment vars (nothing of the test process's
// environment leaks in).
func rtmctl(tb testing.TB, vars map[string]string, args ...string) result {
	tb.Helper()
	return rtmctlContext(tb, context.Background(), vars, args...)
}

func rtmctlContext(tb testing.TB, ctx context.Context, vars map[string]string, args ...string) result {
	tb.Helper()
	var out, errOut testenv.SyncBuffer
	code := runContext(ctx, args, &out, &errOut, func(k string) string { return vars[k] })
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// lines splits output into its non-empty lines.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// columnStarts returns the offsets at which the header's column names begin; every row of an
// aligned table has its cells start at the same offsets.
func columnStarts(header string, names ...string) []int {
	var at []int
	from := 0
	for _, n := range names {
		i := from + strings.Index(header[from:], n)
		at = append(at, i)
		from = i + len(n)
	}
	return at
}

func TestRun_run_helpExitsZero(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "Available Commands") {
		t.Fatalf("help not printed:\n%s", out.String())
	}
}
