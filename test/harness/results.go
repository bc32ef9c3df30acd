package harness

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Sample is a set of measurements of one figure.
type Sample []float64

// Quantile returns the q-quantile (0..1) by linear interpolation between closest ranks; NaN for
// an empty sample.
func (s Sample) Quantile(q float64) float64 {
	c := slices.Clone(s)
	slices.Sort(c)
	if len(c) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(c)-1)
	lo, hi := int(math.Floor(pos)), int(math.Ceil(pos))
	return c[lo] + (c[hi]-c[lo])*(pos-float64(lo))
}

// Median is the 0.5-quantile.
func (s Sample) Median() float64 { return s.Quantile(0.5) }

// Min is the smallest measurement.
func (s Sample) Min() float64 { return s.Quantile(0) }

// Max is the largest measurement.
func (s Sample) Max() float64 { return s.Quantile(1) }

// Spread formats the sample's min – max, each with format (one verb), and its size; "n/a" when
// it is empty.
func (s Sample) Spread(format string) string {
	if len(s) == 0 {
		return "n/a"
	}
	return fmt.Sprintf(format+" – "+format+" (n=%d)", s.Min(), s.Max(), len(s))
}

// Row is one line of a benchmark's result table.
type Row struct {
	Figure, Median, Spread, Target string
	Verdict                        string // "pass", "MISS" or "" (no target)
}

// Check is the verdict of a figure with a target: "pass" or "MISS".
func Check(ok bool) string {
	if ok {
		return "pass"
	}
	return "MISS"
}

// Goal is a target that applies to some rows of a series only (one of its sizes): the other rows
// show neither the target nor a verdict.
type Goal bool

// Target is target for the rows the goal applies to, "" for the others.
func (g Goal) Target(target string) string {
	if g {
		return target
	}
	return ""
}

// Verdict is Check(ok) for the rows the goal applies to, "" for the others.
func (g Goal) Verdict(ok bool) string {
	if g {
		return Check(ok)
	}
	return ""
}

// Rows are a benchmark's result table.
type Rows []Row

// Missed counts the rows whose target was missed.
func (rs Rows) Missed() int {
	n := 0
	for _, x := range rs {
		if x.Verdict == "MISS" {
			n++
		}
	}
	return n
}

// Text renders the rows as aligned text, under a header whose third column is called spread.
func (rs Rows) Text(spread string) string {
	cells := [][5]string{{"figure", "median", spread, "target", "result"}}
	for _, x := range rs {
		cells = append(cells, [5]string{x.Figure, x.Median, x.Spread, x.Target, x.Verdict})
	}
	return Table(cells)
}

// Markdown writes the rows through p (a Printf) as a Markdown table whose third column is called
// spread.
func (rs Rows) Markdown(p func(format string, args ...any), spread string) {
	p("| figure | median | %s | target | result |", spread)
	p("|---|---|---|---|---|")
	for _, x := range rs {
		p("| %s | %s | %s | %s | %s |", strings.TrimSpace(x.Figure), x.Median, x.Spread, x.Target, x.Verdict)
	}
}

// Run is what a benchmark's report says of the run itself, besides its results.
type Run struct {
	Began            time.Time
	Elapsed, Cleanup time.Duration
	Machine, Commit  string
	GoVersion        string
	Phases           Phases
}

// Done records the end of the run: how long it took, the host, and the source tree at root.
func (r *Run) Done(root string) {
	r.Elapsed = time.Since(r.Began)
	r.Machine, r.Commit, r.GoVersion = Machine(), Commit(root), GoVersion()
}

// Markdown writes through p (a Printf) the document's heading and intro (a paragraph), the table
// that describes the run — machine, date, commit, the lines of more (a name and a value each),
// Go, run time and the number of targets missed — and then the phases' table.
func (r *Run) Markdown(p func(format string, args ...any), heading, intro string, missed int, more ...[2]string) {
	p("%s", heading)
	p("")
	p("%s", intro)
	p("")
	p("| | |")
	p("|---|---|")
	p("| machine | %s |", r.Machine)
	p("| date | %s |", r.Began.UTC().Format("2006-01-02 15:04 MST"))
	p("| commit | %s |", r.Commit)
	for _, m := range more {
		p("| %s | %s |", m[0], m[1])
	}
	p("| Go | %s |", r.GoVersion)
	p("| run time | %s (of which clean-up %s) |", r.Elapsed.Round(time.Second), r.Cleanup.Round(time.Second))
	p("| targets missed | %d |", missed)
	p("")
	r.Phases.Markdown(p)
}

// Report ends a run that measured without error (after Done): it prints the result table (whose
// third column is called spread) and the run time, writes the document with writeDoc when write
// is set, and logs how many targets were missed. It returns the program's exit code.
func (r *Run) Report(rows Rows, spread string, write bool, writeDoc func() bool) int {
	fmt.Println(rows.Text(spread))
	fmt.Printf("run time %s (clean-up %s)\n", r.Elapsed.Round(time.Second), r.Cleanup.Round(time.Second))
	if write && !writeDoc() {
		return 1
	}
	if n := rows.Missed(); n > 0 {
		Logf("%d target(s) missed", n)
	}
	return 0
}
