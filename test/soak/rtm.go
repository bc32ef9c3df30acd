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

// rtmProc is the running rtmanager binary. Its log goes to a file in the work dir; the soak
// reads it as it is written to learn the listener's address and to count warning and error
// lines by message.
type rtmProc struct {
	cmd     *exec.Cmd
	pid     int
	api     string // http://addr of the internal listener
	logPath string
	done    chan struct{}

	mu       sync.Mutex
	ready    map[string]string // start-up messages seen → an attribute of interest
	changed  chan struct{}     // closed and replaced on every start-up message
	problems map[string]int    // "LEVEL msg" → lines, for WARN and ERROR
}

// startRTM runs the binary with env (and PATH) and waits until every worker has started.
func (w *world) startRTM(ctx context.Context, env map[string]string) (*rtmProc, error) {
	logPath := filepath.Join(w.work, "rtmanager.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(w.bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// Its own process group: a Ctrl-C in the terminal reaches the soak, which stops RTM in
	// order, after the traffic has stopped.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A kernel pipe: RTM's log writes never wait for the reader.
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
	p := &rtmProc{cmd: cmd, pid: cmd.Process.Pid, logPath: logPath, done: make(chan struct{}),
		ready: map[string]string{}, changed: make(chan struct{}), problems: map[string]int{}}
	w.mu.Lock()
	w.rtm = p
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
	addr, err := p.waitReady(rctx, "internal http listening")
	if err != nil {
		p.stop(5 * time.Second)
		return nil, fmt.Errorf("rtmanager did not open its listener: %w (log %s)", err, logPath)
	}
	p.api = "http://" + addr
	if _, err := p.waitReady(rctx, "worker started publisher"); err != nil {
		p.stop(5 * time.Second)
		return nil, fmt.Errorf("rtmanager did not start its workers: %w (log %s)", err, logPath)
	}
	return p, nil
}

// readLog copies RTM's log to the file, notes the start-up messages and counts WARN and ERROR
// lines by message.
func (p *rtmProc) readLog(r io.Reader, copyTo io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b := sc.Bytes()
		_, _ = copyTo.Write(append(b, '\n'))
		var m struct {
			Level  string `json:"level"`
			Msg    string `json:"msg"`
			Addr   string `json:"addr"`
			Worker string `json:"worker"`
		}
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		p.mu.Lock()
		switch {
		case m.Msg == "internal http listening":
			p.ready[m.Msg] = m.Addr
			close(p.changed)
			p.changed = make(chan struct{})
		case m.Msg == "worker started":
			p.ready[m.Msg+" "+m.Worker] = ""
			close(p.changed)
			p.changed = make(chan struct{})
		case m.Level == "WARN" || m.Level == "ERROR":
			p.problems[m.Level+" "+m.Msg]++
		}
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// waitReady waits for a start-up message and returns its attribute.
func (p *rtmProc) waitReady(ctx context.Context, key string) (string, error) {
	for {
		p.mu.Lock()
		v, ok := p.ready[key]
		ch := p.changed
		p.mu.Unlock()
		if ok {
			return v, nil
		}
		select {
		case <-ch:
		case <-p.done:
			return "", fmt.Errorf("rtmanager exited")
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// logProblems returns the WARN and ERROR line counts by message.
func (p *rtmProc) logProblems() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.problems))
	for k, v := range p.problems {
		out[k] = v
	}
	return out
}

// exited reports whether RTM is gone.
func (p *rtmProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace before killing.
func (p *rtmProc) stop(grace time.Duration) {
	if p.exited() {
		return
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
	cpu     time.Duration // utime + stime
	rssKB   int64
	threads int64
	fds     int
}

func (p *rtmProc) stat() (procStat, error) {
	st := procStat{at: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return st, err
	}
	// Fields after the command name (which may hold spaces) start after ")".
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
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid))
	if err != nil {
		return st, err
	}
	st.fds = len(fds)
	return st, nil
}

// goroutineProfile returns /debug/pprof/goroutine?debug=1 and the total on its first line.
func (p *rtmProc) goroutineProfile(ctx context.Context) (string, int, error) {
	body, err := httpGetBody(ctx, p.api+"/debug/pprof/goroutine?debug=1")
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

// metrics scrapes /metrics once.
func (p *rtmProc) metrics(ctx context.Context) (promText, error) {
	body, err := httpGetBody(ctx, p.api+"/metrics")
	return promText(body), err
}

// promText is a Prometheus text exposition.
type promText string

// sum adds the samples of a metric whose labels contain all of want.
func (t promText) sum(name string, want ...string) float64 {
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

// waitIdle returns once the controller's queue is empty and no reconcile runs, twice in a row
// 200ms apart, or after timeout.
func (p *rtmProc) waitIdle(ctx context.Context, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	quiet := 0
	for time.Now().Before(deadline) && ctx.Err() == nil {
		m, err := p.metrics(ctx)
		if err == nil && m.sum("workqueue_depth", `name="game"`) == 0 && m.sum("controller_runtime_active_workers", `controller="game"`) == 0 {
			quiet++
			if quiet >= 2 {
				return
			}
		} else {
			quiet = 0
		}
		sleepCtx(ctx, 200*time.Millisecond)
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
