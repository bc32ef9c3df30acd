//go:build race

package model

// defaultSchedules is how many schedules go test runs by default: fewer under the race detector,
// which slows every schedule several times, so that make test stays within about two minutes here.
const defaultSchedules = 200
