package testenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Process is a child process of a test suite (the rtmanager binary of the e2e and chaos suites)
// whose output goes to a log file.
type Process struct {
	Cmd  *exec.Cmd
	done chan struct{}
	code int
}

// StartProcess runs bin with the environment env, its output appended to the file at logPath: a
// file, never a pipe, for go test waits for the pipes a child inherits.
func StartProcess(bin string, env []string, logPath string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	return Watch(cmd), nil
}

// Watch waits in the background for cmd, which has started: the Process of a child started
// otherwise than by StartProcess.
func Watch(cmd *exec.Cmd) *Process {
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.code = 128 + int(ws.Signal())
		}
		close(p.done)
	}()
	return p
}

// Done is closed once the process has exited and been waited for.
func (p *Process) Done() <-chan struct{} { return p.done }

// Code is the exit code once Done is closed: 128 + the signal's number when a signal ended the
// process, as a shell reports it.
func (p *Process) Code() int {
	select {
	case <-p.done:
		return p.code
	default:
		return -1
	}
}

// Alive reports whether the process still runs.
func (p *Process) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Kill kills the process with SIGKILL (nothing runs on its way out) and waits for it.
func (p *Process) Kill() {
	if p.Alive() {
		_ = p.Cmd.Process.Kill()
	}
	<-p.done
}

// Terminate sends SIGTERM and, when the process has not exited within grace, SIGKILL; it returns
// once the process is gone and reports whether it exited within grace.
func (p *Process) Terminate(grace time.Duration) bool {
	return Terminate(p.Cmd.Process, p.done, grace)
}

// RTMEnviron is the test process's environment without any RTM, OpenTelemetry or Kubernetes
// client setting, plus env (in the order of its names): the environment of an rtmanager process
// a test starts.
func RTMEnviron(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "RTMANAGER_") || strings.HasPrefix(kv, "OTEL_") ||
			strings.HasPrefix(kv, "KUBECONFIG=") || strings.HasPrefix(kv, "KUBERNETES_") {
			continue
		}
		out = append(out, kv)
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}

var listeningAddr = regexp.MustCompile(`"msg":"internal http listening".*?"addr":"([^"]+)"`)

// ListenAddr returns http://addr of RTM's internal listener from its log line in log (RTM's
// JSON log), or "".
func ListenAddr(log string) string {
	m := listeningAddr.FindStringSubmatch(log)
	if m == nil {
		return ""
	}
	return "http://" + m[1]
}

// WaitReady waits until the rtmanager process p is ready the way the runbook's readiness check
// says: its log (log returns what the process has written so far) has as many `worker started`
// lines as it has background workers (so the synchronous boot pass is over: the listener, and
// with it /readyz, opens before that pass) and /readyz answers 200. It returns the internal
// listener's http://addr; an error when the process exits or timeout passes first.
func (p *Process) WaitReady(log func() string, workers int, timeout time.Duration) (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	api := ""
	for {
		out := log()
		if api == "" {
			api = ListenAddr(out)
		}
		if api != "" && strings.Count(out, `"msg":"worker started"`) >= workers {
			if resp, err := c.Get(api + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return api, nil
				}
			}
		}
		if !p.Alive() {
			return "", fmt.Errorf("rtmanager exited with %d during start-up", p.Code())
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("rtmanager not ready within %s", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RTMTestEnv is the environment the e2e and chaos suites give the rtmanager they start, before
// their own settings: its listener on a free loopback port, the test's database (dsn) and
// redis-server, the engine repositories it may run (comma-separated), JSON logs, and timings a
// test can wait out: a probe every second that fails after two misses, an inspection every 2 s,
// a 10-s shutdown, and the periodic reconcile out of the way.
func RTMTestEnv(dsn string, redis *RedisServer, engineRepos string) map[string]string {
	return map[string]string{
		"RTMANAGER_INTERNAL_HTTP_ADDR":         "127.0.0.1:0",
		"RTMANAGER_POSTGRES_PRIMARY_DSN":       dsn,
		"RTMANAGER_REDIS_MASTER_ADDR":          redis.Addr(),
		"RTMANAGER_REDIS_PASSWORD":             redis.Password,
		"RTMANAGER_ALLOWED_IMAGE_REPOSITORIES": engineRepos,
		"RTMANAGER_LOG_FORMAT":                 "json",
		"RTMANAGER_PROBE_INTERVAL":             "1s",
		"RTMANAGER_PROBE_TIMEOUT":              "500ms",
		"RTMANAGER_PROBE_FAILURE_THRESHOLD":    "2",
		"RTMANAGER_INSPECT_INTERVAL":           "2s",
		"RTMANAGER_RECONCILE_INTERVAL":         "5m",
		"RTMANAGER_SHUTDOWN_TIMEOUT":           "10s",
	}
}
