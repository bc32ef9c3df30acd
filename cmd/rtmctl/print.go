package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"k8s.io/client-go/util/jsonpath"
	"sigs.k8s.io/yaml"
)

// outputFormat is the value of -o: aligned tables for people; json, yaml, name and
// jsonpath=TEMPLATE for scripts. A jsonpath format holds its template: "jsonpath={.status}".
type outputFormat string

const (
	outTable outputFormat = "table"
	outWide  outputFormat = "wide"
	outJSON  outputFormat = "json"
	outYAML  outputFormat = "yaml"
	outName  outputFormat = "name"

	jsonpathPrefix = "jsonpath="
)

// The kinds of output a command may accept (see annOutputs).
const (
	kindTable    = "table"
	kindWide     = "wide"
	kindJSON     = "json"
	kindYAML     = "yaml"
	kindName     = "name"
	kindJSONPath = "jsonpath"
)

func (o *outputFormat) String() string { return string(*o) }
func (o *outputFormat) Type() string   { return "format" }

// Set accepts the formats above; anything else, or a jsonpath template that does not parse, is a
// flag error (exit 2).
func (o *outputFormat) Set(s string) error {
	if len(s) >= len(jsonpathPrefix) && strings.EqualFold(s[:len(jsonpathPrefix)], jsonpathPrefix) {
		tmpl := s[len(jsonpathPrefix):]
		if _, err := newJSONPath(tmpl); err != nil {
			return err
		}
		*o = outputFormat(jsonpathPrefix + tmpl)
		return nil
	}
	switch f := outputFormat(strings.ToLower(s)); f {
	case outTable, outWide, outJSON, outYAML, outName:
		*o = f
		return nil
	}
	return fmt.Errorf("must be one of table, wide, json, yaml, name or jsonpath=TEMPLATE")
}

// kind is the format without a jsonpath template: table, wide, json, yaml, name or jsonpath.
func (o outputFormat) kind() string {
	if strings.HasPrefix(string(o), jsonpathPrefix) {
		return kindJSONPath
	}
	return string(o)
}

// structured reports whether the format prints the API's JSON (json, yaml, or a jsonpath
// template over it).
func (o outputFormat) structured() bool {
	return o == outJSON || o == outYAML || o.kind() == kindJSONPath
}

// newJSONPath parses a template the way kubectl's -o jsonpath does: {.field}, {range …}{end},
// several expressions with text between them; a template without braces is one expression
// (".status" and "status" mean "{.status}"). Missing keys print nothing.
func newJSONPath(tmpl string) (*jsonpath.JSONPath, error) {
	if strings.TrimSpace(tmpl) == "" {
		return nil, errors.New("jsonpath needs a template, e.g. jsonpath={.status}")
	}
	if !strings.Contains(tmpl, "{") {
		if !strings.HasPrefix(tmpl, ".") {
			tmpl = "." + tmpl
		}
		tmpl = "{" + tmpl + "}"
	}
	j := jsonpath.New("output").AllowMissingKeys(true)
	if err := j.Parse(tmpl); err != nil {
		return nil, fmt.Errorf("bad jsonpath template: %v", err)
	}
	return j, nil
}

// printJSON prints raw JSON in the chosen structured format: indented JSON, YAML with the same
// field names, or the jsonpath template run over it.
func (a *app) printJSON(raw []byte) error {
	switch {
	case a.output == outYAML:
		y, err := yaml.JSONToYAML(raw)
		if err != nil {
			return fmt.Errorf("converting to yaml: %w", err)
		}
		_, err = a.stdout.Write(y)
		return err
	case a.output.kind() == kindJSONPath:
		j, err := newJSONPath(strings.TrimPrefix(string(a.output), jsonpathPrefix))
		if err != nil {
			return err
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber() // integers print as integers, not as 1e+06
		var v any
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("the answer is not valid JSON: %w", err)
		}
		if err := j.Execute(a.stdout, v); err != nil {
			return fmt.Errorf("jsonpath: %v", err)
		}
		return nil
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("the answer is not valid JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := buf.WriteTo(a.stdout)
	return err
}

// printValue marshals v and prints it as printJSON does.
func (a *app) printValue(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return a.printJSON(raw)
}

// writeTable prints a table to stdout, without its header when --no-headers is set.
func (a *app) writeTable(header []string, rows [][]string) error {
	if a.noHeaders {
		header = nil
	}
	return writeTable(a.stdout, header, rows)
}

// writeTable prints rows under header (none when nil), columns aligned with three spaces
// between them.
func writeTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	if header != nil {
		fmt.Fprintln(tw, strings.Join(header, "\t"))
	}
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = cell(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// writeKV prints "Key:  value" lines with the values aligned.
func writeKV(w io.Writer, kv [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, p := range kv {
		fmt.Fprintf(tw, "%s:\t%s\n", p[0], cell(p[1]))
	}
	return tw.Flush()
}

// cell makes a value fit in one table cell: no tabs or line breaks, "-" when empty.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	if strings.ContainsAny(s, "\t\r\n") {
		s = strings.Join(strings.Fields(s), " ")
	}
	return s
}

// trunc shortens s to n runes, marking the cut with "…".
func trunc(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// shortID is the 12-character form of a container id, as docker ps shows it.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// age formats the time since t the way kubectl does: 45s, 3m20s, 17m, 5h3m, 30h, 4d2h, 12d, 3y.
// A zero time is "-"; a time in the future (clock skew) is "0s".
func age(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return humanDuration(d)
}

func humanDuration(d time.Duration) string {
	s := int64(d / time.Second)
	m, h := s/60, s/3600
	switch {
	case s < 120:
		return strconv.FormatInt(s, 10) + "s"
	case m < 10:
		return twoUnits(m, "m", s%60, "s")
	case h < 3:
		return fmt.Sprintf("%dm", m)
	case h < 8:
		return twoUnits(h, "h", m%60, "m")
	case h < 48:
		return fmt.Sprintf("%dh", h)
	case h < 24*8:
		return twoUnits(h/24, "d", h%24, "h")
	case h < 24*365*2:
		return fmt.Sprintf("%dd", h/24)
	}
	return fmt.Sprintf("%dy", h/(24*365))
}

// twoUnits prints n of a unit and, unless it is zero, rest of the next smaller one: "3m", "3m20s".
func twoUnits(n int64, unit string, rest int64, restUnit string) string {
	if rest == 0 {
		return strconv.FormatInt(n, 10) + unit
	}
	return fmt.Sprintf("%d%s%d%s", n, unit, rest, restUnit)
}

// ago is age with " ago" and the exact time, for key/value output.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return fmt.Sprintf("%s ago (%s)", age(now, t), t.UTC().Format(time.RFC3339))
}

// lineWriter prints streamed rows aligned: each column is as wide as the widest value seen so
// far, so a long value shifts the rows after it, never the ones already printed.
type lineWriter struct {
	w      io.Writer
	widths []int
}

func newLineWriter(w io.Writer, header []string, minWidths []int) *lineWriter {
	l := &lineWriter{w: w, widths: make([]int, len(header))}
	for i, h := range header {
		l.widths[i] = utf8.RuneCountInString(h)
		if i < len(minWidths) && minWidths[i] > l.widths[i] {
			l.widths[i] = minWidths[i]
		}
	}
	return l
}

func (l *lineWriter) write(cells []string) error {
	var b strings.Builder
	for i, c := range cells {
		c = cell(c)
		if i == len(cells)-1 {
			b.WriteString(c)
			break
		}
		n := utf8.RuneCountInString(c)
		if i < len(l.widths) && n > l.widths[i] {
			l.widths[i] = n
		}
		b.WriteString(c)
		if i < len(l.widths) {
			b.WriteString(strings.Repeat(" ", l.widths[i]-n+3))
		} else {
			b.WriteString("   ")
		}
	}
	b.WriteByte('\n')
	_, err := io.WriteString(l.w, b.String())
	return err
}
