//go:build !race

package model

// defaultSchedules is how many schedules go test runs by default (about a minute on two cores).
const defaultSchedules = 300
