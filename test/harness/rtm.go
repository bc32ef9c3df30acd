package harness

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
	"sync"
	"syscall"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// LogLine is one JSON log line of RTM.
type LogLine struct {
	Time  time.Time
	Level string
	Msg   string
	Attrs map[string]any // every field of the line, msg, level and time included
}

// Proc is a running rtmanager binary: its log (copied to a file in the work dir and parsed as it
// is written), its /proc entry and its internal listener.
type Proc struct {
	*testenv.Process
	API     string // http://addr of the internal listener
	LogPath string

	http *http.Client
	keep func(LogLine) bool

	mu      sync.Mutex
	lines   []LogLine
	changed chan struct{} // closed and replaced on every line kept
}

// StartRTM runs the binary with env (and PATH), its log going to logName in the work dir, and
// waits until it listens and every worker has started. keep is called for every log line, from
// the goroutine that reads the log; the line is kept for WaitLog when it returns true (nil keeps
// every line). Close stops the process if the caller has not (Terminate).
func (w *World) StartRTM(ctx context.Context, env map[string]string, logName string, keep func(LogLine) bool) (*Proc, error) {
	logPath := filepath.Join(w.Work, logName)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(w.Bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// Its own process group: a Ctrl-C in the terminal reaches the program, which stops RTM in
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
	if keep == nil {
		keep = func(LogLine) bool { return true }
	}
	p := &Proc{Process: testenv.Watch(cmd), LogPath: logPath,
		http: &http.Client{Timeout: 30 * time.Second}, keep: keep, changed: make(chan struct{})}
	w.mu.Lock()
	w.procs = append(w.procs, p)
	w.mu.Unlock()
	go func() {
		p.readLog(pr, logFile)
		pr.Close()
		logFile.Close()
	}()

	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	l, err := p.WaitLog(rctx, 0, func(l LogLine) bool { return l.Msg == "internal http listening" })
	if err != nil {
		p.Terminate(5 * time.Second)
		return nil, fmt.Errorf("rtmanager did not open its listener: %w (log %s)", err, logPath)
	}
	p.API = "http://" + fmt.Sprint(l.Attrs["addr"])
	if _, err := p.WaitLog(rctx, 0, func(l LogLine) bool { return l.Msg == "worker started" && l.Attrs["worker"] == "publisher" }); err != nil {
		p.Terminate(5 * time.Second)
		return nil, fmt.Errorf("rtmanager did not start its workers: %w (log %s)", err, logPath)
	}
	return p, nil
}

func (p *Proc) readLog(r io.Reader, copyTo io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b := sc.Bytes()
		_, _ = copyTo.Write(append(b, '\n'))
		var m map[string]any
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		l := LogLine{Attrs: m}
		l.Msg, _ = m["msg"].(string)
		l.Level, _ = m["level"].(string)
		if ts, ok := m["time"].(string); ok {
			l.Time, _ = time.Parse(time.RFC3339Nano, ts)
		}
		// Start-up lines are always kept: StartRTM waits for them.
		if !p.keep(l) && l.Msg != "internal http listening" && l.Msg != "worker started" {
			continue
		}
		p.mu.Lock()
		p.lines = append(p.lines, l)
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// WaitLog returns the first kept line at index ≥ from that matches, or an error when RTM exits
// or ctx ends first.
func (p *Proc) WaitLog(ctx context.Context, from int, match func(LogLine) bool) (LogLine, error) {
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
		case <-p.Done():
			return LogLine{}, fmt.Errorf("rtmanager exited")
		case <-ctx.Done():
			return LogLine{}, ctx.Err()
		}
	}
}
