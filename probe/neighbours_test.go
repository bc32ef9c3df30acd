package probe

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHostNeighbourLimit(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path string
		want       int
	}{
		{"the kernel's format", write("ok", "512\n"), 512},
		{"no such file", filepath.Join(dir, "missing"), 0},
		{"not a number", write("junk", "lots\n"), 0},
		{"negative", write("neg", "-1\n"), 0},
	}
	for _, tt := range tests {
		if got := HostNeighbourLimit(tt.path); got != tt.want {
			t.Errorf("%s: HostNeighbourLimit = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestProber_checkNeighbours_warnsOncePerCrossing(t *testing.T) {
	var buf bytes.Buffer
	limit := 3
	p := &Prober{NeighbourLimit: func() int { return limit }, Log: slog.New(slog.NewTextHandler(&buf, nil))}
	for _, engines := range []int{2, 3, 4, 5, 4, 3, 1, 6} {
		p.checkNeighbours(engines)
	}
	limit = 10 // the operator raised it: the next round says so
	p.checkNeighbours(6)
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		level, _, _ := strings.Cut(strings.TrimPrefix(line[strings.Index(line, "level="):], "level="), " ")
		engines := line[strings.Index(line, "engines=")+len("engines="):]
		engines, _, _ = strings.Cut(engines, " ")
		got = append(got, level+" "+engines)
	}
	want := []string{"WARN 4", "INFO 3", "WARN 6", "INFO 6"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("logged %q, want %q (a warning each time the engines exceed the limit, a line when they no longer do, also when the limit is raised)", got, want)
	}

	buf.Reset()
	(&Prober{Log: slog.New(slog.NewTextHandler(&buf, nil))}).checkNeighbours(100000)
	if buf.Len() != 0 {
		t.Fatalf("without a limit the check logged %q", buf.String())
	}
}
