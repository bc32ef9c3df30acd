package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// HostSample is a reading of the whole host's CPU counters (/proc/stat) and load average, to
// show how busy the machine was while a benchmark phase ran: benchmarks share it with whatever
// else runs there.
type HostSample struct {
	At          time.Time
	busy, total uint64
	load1       string
}

// ReadHost reads the host's counters now.
func ReadHost() HostSample {
	h := HostSample{At: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		for i, v := range strings.Fields(line)[1:] {
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

// HostLoad describes the host between two samples: CPU busy (all processes, all cores) and the
// load average at the end.
func HostLoad(a, b HostSample) string {
	if b.total <= a.total {
		return "n/a"
	}
	return fmt.Sprintf("host CPU %.0f%% busy, load %s", 100*float64(b.busy-a.busy)/float64(b.total-a.total), b.load1)
}

// Table renders rows of five cells as aligned text, a rule of dashes under the first (the
// header).
func Table(rows [][5]string) string {
	var width [5]int
	for _, x := range rows {
		for i, c := range x {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	for k, x := range rows {
		for i, c := range x {
			b.WriteString(c)
			if i < 4 {
				b.WriteString(strings.Repeat(" ", width[i]-len([]rune(c))+2))
			}
		}
		b.WriteString("\n")
		if k == 0 {
			total := 0
			for _, w := range width {
				total += w + 2
			}
			b.WriteString(strings.Repeat("-", total) + "\n")
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

// Phase is one phase of a benchmark: how long it took and how busy the host was meanwhile.
type Phase struct {
	Name string
	Took time.Duration
	Load string
}

// Phases records a benchmark's phases in order.
type Phases []Phase

// Run runs f as the phase name and records it.
func (ps *Phases) Run(name string, f func() error) error {
	a := ReadHost()
	err := f()
	b := ReadHost()
	*ps = append(*ps, Phase{Name: name, Took: b.At.Sub(a.At), Load: HostLoad(a, b)})
	return err
}

// Markdown writes, through p (a Printf), the sentence and table that say how busy the shared
// host was while each phase ran.
func (ps Phases) Markdown(p func(format string, args ...any)) {
	p("The host is shared: how busy it was (all processes) while each phase ran.")
	p("")
	p("| phase | took | host |")
	p("|---|---|---|")
	for _, ph := range ps {
		p("| %s | %s | %s |", ph.Name, ph.Took.Round(time.Second), ph.Load)
	}
}
