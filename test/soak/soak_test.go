package main

import (
	"math"
	"testing"
	"time"
)

func TestSlope(t *testing.T) {
	tests := []struct {
		name   string
		xs, ys []float64
		want   float64
	}{
		{"flat", []float64{0, 1, 2}, []float64{5, 5, 5}, 0},
		{"rising", []float64{0, 1, 2, 3}, []float64{1, 3, 5, 7}, 2},
		{"noisy falling", []float64{0, 1, 2, 3}, []float64{4, 2, 3, 1}, -0.8},
	}
	for _, tt := range tests {
		if got := slope(tt.xs, tt.ys); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: slope = %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := slope([]float64{1}, []float64{1}); !math.IsNaN(got) {
		t.Errorf("one point: slope = %v, want NaN", got)
	}
}

const profileBefore = `goroutine profile: total 3
2 @ 0x1 0x2 0x3
#	0x1	runtime.gopark+0x10	runtime/proc.go:1
#	0x2	net/http.(*persistConn).readLoop+0x20	net/http/transport.go:1
#	0x3	net/http.(*Transport).dialConn.gowrap2+0x5	net/http/transport.go:2

1 @ 0x1 0x4
#	0x1	runtime.gopark+0x10	runtime/proc.go:1
#	0x4	main.worker+0x1	main.go:1
`

const profileAfter = `goroutine profile: total 6
3 @ 0x1 0x2 0x3
#	0x1	runtime.gopark+0x10	runtime/proc.go:1
#	0x2	net/http.(*persistConn).readLoop+0x20	net/http/transport.go:1
#	0x3	net/http.(*Transport).dialConn.gowrap2+0x5	net/http/transport.go:2

1 @ 0x1 0x2 0x5
#	0x1	runtime.gopark+0x10	runtime/proc.go:1
#	0x2	net/http.(*persistConn).readLoop+0x28	net/http/transport.go:1
#	0x5	net/http.(*Transport).dialConn.gowrap2+0x5	net/http/transport.go:2

2 @ 0x6
`

func TestGoroutineDiff(t *testing.T) {
	got := goroutineDiff(profileBefore, profileAfter)
	want := []stackGrowth{
		{where: "(no frames: a goroutine being created or exiting)", before: 0, after: 2},
		{where: "net/http.(*persistConn).readLoop ← net/http.(*Transport).dialConn.gowrap2", before: 2, after: 4},
	}
	if len(got) != len(want) {
		t.Fatalf("goroutineDiff = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("goroutineDiff[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestReport_evaluate(t *testing.T) {
	// Nine readings a minute apart: goroutines 100 for the first third, 125 for the last
	// (+25: over both +10% and +20), fds within +20, RSS rising 2 MB/min after the warm-up.
	r := &report{p: params{warmup: 2 * time.Minute}, once: onceCheck{sent: 3}}
	for i := 0; i < 9; i++ {
		g, fds := 100, 50
		if i >= 6 {
			g, fds = 125, 69
		}
		r.points = append(r.points, point{t: time.Duration(i) * time.Minute, goroutines: g, fds: fds,
			rssMB: 60 + 2*float64(i), cpuPct: math.NaN()})
	}
	r.evaluate()
	want := []bool{false, true, false, true}
	if len(r.checks) != len(want) {
		t.Fatalf("%d checks, want %d", len(r.checks), len(want))
	}
	for i, w := range want {
		if r.checks[i].pass != w {
			t.Errorf("%s: pass = %v, want %v (%s)", r.checks[i].what, r.checks[i].pass, w, r.checks[i].measured)
		}
	}
}
