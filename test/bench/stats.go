package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// sample is a set of measurements of one figure.
type sample []float64

func (s sample) sorted() []float64 {
	c := slices.Clone([]float64(s))
	slices.Sort(c)
	return c
}

// quantile returns the q-quantile (0..1) by linear interpolation between closest ranks; NaN
// for an empty sample.
func (s sample) quantile(q float64) float64 {
	c := s.sorted()
	if len(c) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(c)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return c[lo] + (c[hi]-c[lo])*(pos-float64(lo))
}

func (s sample) median() float64 { return s.quantile(0.5) }
func (s sample) min() float64    { return s.quantile(0) }
func (s sample) max() float64    { return s.quantile(1) }

// ms converts a duration to float milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ratios returns a[i]/b[i].
func ratios(a, b sample) sample {
	out := make(sample, 0, len(a))
	for i := range a {
		if i < len(b) && b[i] > 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// diffs returns a[i]-b[i].
func diffs(a, b sample) sample {
	out := make(sample, 0, len(a))
	for i := range a {
		if i < len(b) {
			out = append(out, a[i]-b[i])
		}
	}
	return out
}

// row is one line of the result table.
type row struct {
	Figure string
	Median string
	Spread string
	Target string
	// Verdict is "pass", "MISS" or "" (no target).
	Verdict string
}

// check returns "pass" or "MISS".
func check(ok bool) string {
	if ok {
		return "pass"
	}
	return "MISS"
}

// spread formats a sample's min–max and its size.
func spread(s sample, format string) string {
	if len(s) == 0 {
		return "n/a"
	}
	return fmt.Sprintf(format+" – "+format+" (n=%d)", s.min(), s.max(), len(s))
}
