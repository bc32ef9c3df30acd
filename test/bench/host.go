package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// hostSample is a reading of the whole host's CPU counters (/proc/stat) and load average, to
// show how busy the machine was while a phase ran: the benchmark shares it with whatever else
// runs there.
type hostSample struct {
	at          time.Time
	busy, total uint64
	load1       string
}

func readHost() hostSample {
	h := hostSample{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		for i, v := range f[1:] {
			n, _ := strconv.ParseUint(v, 10, 64)
			h.total += n
			if i != 3 && i != 4 { // idle, iowait
				h.busy += n
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		h.load1 = strings.Fields(string(b))[0]
	}
	return h
}

// hostLoad describes the host between two samples: CPU busy (all processes, all cores) and the
// load average at the end.
func hostLoad(a, b hostSample) string {
	if b.total <= a.total {
		return "n/a"
	}
	return fmt.Sprintf("host CPU %.0f%% busy, load %s", 100*float64(b.busy-a.busy)/float64(b.total-a.total), b.load1)
}

// phaseLoad notes how busy the host was during one phase.
type phaseLoad struct {
	phase string
	took  time.Duration
	load  string
}

// phase runs f and records its duration and the host's load.
func (r *report) phase(name string, f func() error) error {
	a := readHost()
	err := f()
	b := readHost()
	r.phases = append(r.phases, phaseLoad{phase: name, took: b.at.Sub(a.at), load: hostLoad(a, b)})
	return err
}
