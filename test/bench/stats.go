package main

import (
	"time"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// ms converts a duration to float milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ratios returns a[i]/b[i].
func ratios(a, b harness.Sample) harness.Sample {
	out := make(harness.Sample, 0, len(a))
	for i := range a {
		if i < len(b) && b[i] > 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// diffs returns a[i]-b[i].
func diffs(a, b harness.Sample) harness.Sample {
	out := make(harness.Sample, 0, len(a))
	for i := range a {
		if i < len(b) {
			out = append(out, a[i]-b[i])
		}
	}
	return out
}
