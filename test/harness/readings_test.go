package harness

import (
	"maps"
	"testing"
)

func TestPromText_Series(t *testing.T) {
	text := PromText(`# HELP a_total A.
# TYPE a_total counter
a_total{verb="POST"} 3
a_total{verb="GET"} 1.5e+01
b_seconds_sum 2.5
c_total 7
`)
	got := text.Series(`a_total{`, "b_seconds_sum")
	want := map[string]float64{`a_total{verb="POST"}`: 3, `a_total{verb="GET"}`: 15, "b_seconds_sum": 2.5}
	if !maps.Equal(got, want) {
		t.Fatalf("Series = %v, want %v", got, want)
	}
}
