package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// logLine is one JSON log line of RTM.
type logLine struct {
	Time  time.Time
	Msg   string
	Attrs map[string]any
}

// rtmProc is a running rtmanager binary, its parsed log and its internal listener.
type rtmProc struct {
	cmd  *exec.Cmd
	pid  int
	api  string // http://addr of the internal listener
	done chan struct{}

	mu      sync.Mutex
	lines   []logLine
	changed chan struct{} // closed and replaced on every new line
}

// startRTM runs the binary with env (and PATH) and waits until every worker has started.
func (w *world) startRTM(ctx context.Context, env map[string]string, logName string) (*rtmProc, error) {
	logFile, err := os.OpenFile(filepath.Join(w.work, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(w.bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// Its own process group: a Ctrl-C in the terminal reaches the benchmark, which stops RTM in
	// order, after nothing depends on it any more.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A kernel pipe (not io.Pipe): RTM's log writes never wait for the parser.
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, pw
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		logFile.Close()
		return nil, fmt.Errorf("starting rtmanager: %w", err)
	}
	p := &rtmProc{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{}), changed: make(chan struct{})}
	w.mu.Lock()
	w.rtms = append(w.rtms, p)
	w.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	go func() {
		p.readLog(pr, logFile)
		pr.Close()
		logFile.Close()
	}()

	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	l, err := p.waitLog(rctx, 0, func(l logLine) bool { return l.Msg == "internal http listening" })
	if err != nil {
		p.stop(5 * time.Second)
		return nil, fmt.Errorf("rtmanager did not open its listener: %w (log %s)", err, logFile.Name())
	}
	p.api = "http://" + fmt.Sprint(l.Attrs["addr"])
	if _, err := p.waitLog(rctx, 0, func(l logLine) bool { return l.Msg == "worker started" && l.Attrs["worker"] == "publisher" }); err != nil {
		p.stop(5 * time.Second)
		return nil, fmt.Errorf("rtmanager did not start its workers: %w (log %s)", err, logFile.Name())
	}
	return p, nil
}

func (p *rtmProc) readLog(r io.Reader, copyTo io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b := sc.Bytes()
		_, _ = copyTo.Write(append(b, '\n'))
		var m map[string]any
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		l := logLine{Attrs: m}
		l.Msg, _ = m["msg"].(string)
		if ts, ok := m["time"].(string); ok {
			l.Time, _ = time.Parse(time.RFC3339Nano, ts)
		}
		p.mu.Lock()
		p.lines = append(p.lines, l)
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// waitLog returns the first line at index ≥ from that matches.
func (p *rtmProc) waitLog(ctx context.Context, from int, match func(logLine) bool) (logLine, error) {
	for {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			if match(p.lines[i]) {
				l := p.lines[i]
				p.mu.Unlock()
				return l, nil
			}
		}
		from = len(p.lines)
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-p.done:
			return logLine{}, fmt.Errorf("rtmanager exited")
		case <-ctx.Done():
			return logLine{}, ctx.Err()
		}
	}
}

// stop sends SIGTERM and waits up to grace before killing.
func (p *rtmProc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// procStat is a reading of /proc/<pid>.
type procStat struct {
	at      time.Time
	cpu     time.Duration // user + system
	rssKB   int64
	threads int64
}

func (p *rtmProc) stat() (procStat, error) {
	st := procStat{at: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return st, err
	}
	// Fields after the command name (which may hold spaces) start at ")".
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	st.cpu = time.Duration(utime+stime) * time.Second / clkTck
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
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
			st.rssKB = n
		case "Threads":
			st.threads = n
		}
	}
	return st, nil
}

// goroutines reads the goroutine count from /debug/pprof/goroutine?debug=1.
func (p *rtmProc) goroutines(ctx context.Context) (int, error) {
	body, err := httpGetBody(ctx, p.api+"/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(body, "\n")
	var n int
	if _, err := fmt.Sscanf(first, "goroutine profile: total %d", &n); err != nil {
		return 0, fmt.Errorf("reading goroutine profile: %q", first)
	}
	return n, nil
}

// metric sums the samples of a Prometheus metric whose labels contain all of want.
func (p *rtmProc) metric(ctx context.Context, name string, want ...string) (float64, error) {
	body, err := httpGetBody(ctx, p.api+"/metrics")
	if err != nil {
		return 0, err
	}
	var total float64
	for _, line := range strings.Split(body, "\n") {
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
	return total, nil
}

// waitIdle returns once the controller's queue is empty and no reconcile runs, twice in a row
// 50ms apart, or after timeout.
func (p *rtmProc) waitIdle(ctx context.Context, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	quiet := 0
	for time.Now().Before(deadline) && ctx.Err() == nil {
		depth, err1 := p.metric(ctx, "workqueue_depth", `name="game"`)
		active, err2 := p.metric(ctx, "controller_runtime_active_workers", `controller="game"`)
		if err1 == nil && err2 == nil && depth == 0 && active == 0 {
			quiet++
			if quiet >= 2 {
				return
			}
		} else {
			quiet = 0
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

func httpGetBody(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return string(b), nil
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
