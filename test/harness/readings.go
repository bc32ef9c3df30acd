package harness

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcStat is a reading of /proc/<pid>.
type ProcStat struct {
	At      time.Time
	CPU     time.Duration // user + system
	RSSKB   int64
	Threads int64
}

// Stat reads RTM's CPU time, RSS and threads from /proc.
func (p *Proc) Stat() (ProcStat, error) {
	st := ProcStat{At: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
	if err != nil {
		return st, err
	}
	// Fields after the command name (which may hold spaces) start after ")".
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	st.CPU = time.Duration(utime+stime) * time.Second / clkTck
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.Fields(v + " 0")[0], 10, 64)
		switch k {
		case "VmRSS":
			st.RSSKB = n
		case "Threads":
			st.Threads = n
		}
	}
	return st, nil
}

// FDs counts RTM's open file descriptors.
func (p *Proc) FDs() (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Cmd.Process.Pid))
	return len(fds), err
}

// Get returns the body of a GET of path on RTM's internal listener.
func (p *Proc) Get(ctx context.Context, path string) (string, error) {
	return HTTPGet(ctx, p.http, p.API+path)
}

// GoroutineProfile returns /debug/pprof/goroutine?debug=1 and the total on its first line.
func (p *Proc) GoroutineProfile(ctx context.Context) (string, int, error) {
	body, err := p.Get(ctx, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return "", 0, err
	}
	first, _, _ := strings.Cut(body, "\n")
	var n int
	if _, err := fmt.Sscanf(first, "goroutine profile: total %d", &n); err != nil {
		return "", 0, fmt.Errorf("reading goroutine profile: %q", first)
	}
	return body, n, nil
}

// Metrics scrapes /metrics once.
func (p *Proc) Metrics(ctx context.Context) (PromText, error) {
	body, err := p.Get(ctx, "/metrics")
	return PromText(body), err
}

// PromText is a Prometheus text exposition.
type PromText string

// Sum adds the samples of a metric whose labels contain all of want.
func (t PromText) Sum(name string, want ...string) float64 {
	var total float64
	for _, line := range strings.Split(string(t), "\n") {
		if !strings.HasPrefix(line, name) || len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ' {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			total += v
		}
	}
	return total
}

// Series returns the samples whose line begins with one of prefixes, by series (the name and
// its labels as written).
func (t PromText) Series(prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(string(t), "\n") {
		for _, p := range prefixes {
			if !strings.HasPrefix(line, p) {
				continue
			}
			i := strings.LastIndexByte(line, ' ')
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				out[line[:i]] = v
			}
			break
		}
	}
	return out
}

// WaitIdle returns once the controller's queue is empty and no reconcile runs, twice in a row
// every apart, or after timeout.
func (p *Proc) WaitIdle(ctx context.Context, timeout, every time.Duration) {
	deadline := time.Now().Add(timeout)
	quiet := 0
	for time.Now().Before(deadline) && ctx.Err() == nil {
		m, err := p.Metrics(ctx)
		if err == nil && m.Sum("workqueue_depth", `name="game"`) == 0 && m.Sum("controller_runtime_active_workers", `controller="game"`) == 0 {
			quiet++
			if quiet >= 2 {
				return
			}
		} else {
			quiet = 0
		}
		SleepCtx(ctx, every)
	}
}
