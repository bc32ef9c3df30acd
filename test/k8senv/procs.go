package k8senv

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

const typeMerge = types.MergePatchType

// proc is a component the harness started itself (envtest runs etcd and the apiserver).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

// openLog creates the work dir's <name>.log.
func (e *Env) openLog(name string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(e.workDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("k8senv: %w", err)
	}
	return f, nil
}

// start runs a binary of the bin dir with its output in <name>.log. The process is killed if the
// test binary dies first (Pdeathsig), and its pid is recorded for reapStale otherwise.
func (e *Env) start(name string, env []string, args ...string) error {
	f, err := e.openLog(name)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.binDir, name), args...)
	cmd.Dir = e.workDir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("k8senv: starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(f, "k8senv: %s exited: %v\n", name, err)
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	e.recordPid(cmd.Process.Pid)
	return nil
}

// stop asks the process to end, and kills it after 10 s.
func (p *proc) stop() {
	testenv.Terminate(p.cmd.Process, p.done, 10*time.Second)
	p.log.Close()
}

// startScheduler runs kube-scheduler on a free loopback port; it returns the port.
func (e *Env) startScheduler() (int, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return 0, err
	}
	cfg := filepath.Join(e.workDir, "scheduler.yaml")
	conf := fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %q
  qps: 500
  burst: 1000
leaderElection:
  leaderElect: false
`, e.kubeconfig)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return 0, fmt.Errorf("k8senv: %w", err)
	}
	return port, e.start("kube-scheduler", nil,
		"--config="+cfg,
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(e.workDir, "scheduler-certs"),
		"--authentication-kubeconfig="+e.kubeconfig,
		"--authorization-kubeconfig="+e.kubeconfig,
		"--v=1",
	)
}

// startControllerManager runs kube-controller-manager with the controllers that act on nodes and
// Pods, a 1-s node monitor period and the configured grace period; it returns its port.
func (e *Env) startControllerManager() (int, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return 0, err
	}
	return port, e.start("kube-controller-manager", nil,
		"--kubeconfig="+e.kubeconfig,
		"--authentication-kubeconfig="+e.kubeconfig,
		"--authorization-kubeconfig="+e.kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(e.workDir, "kcm-certs"),
		"--leader-elect=false",
		"--controllers="+controllers,
		"--node-monitor-period=1s",
		"--node-monitor-grace-period="+e.opts.NodeMonitorGracePeriod.String(),
		"--kube-api-qps=500",
		"--kube-api-burst=1000",
		"--v=1",
	)
}

// startKwok runs kwok with the embedded stages, managing the nodes annotated
// kwok.x-k8s.io/node=fake, with loopback node and Pod IPs. Its lease lasts 4/5 of the node
// monitor grace period and is renewed every quarter of that.
func (e *Env) startKwok() error {
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	home := filepath.Join(e.workDir, "kwok")
	if err := os.Mkdir(home, 0o700); err != nil {
		return fmt.Errorf("k8senv: %w", err)
	}
	stages := filepath.Join(home, "stages.yaml")
	if err := os.WriteFile(stages, stagesYAML, 0o644); err != nil {
		return fmt.Errorf("k8senv: %w", err)
	}
	lease := max(1, int(e.opts.NodeMonitorGracePeriod*4/5/time.Second))
	// HOME: kwok also reads ~/.kwok/kwok.yaml when it exists.
	return e.start("kwok", []string{"HOME=" + home},
		"--config="+stages,
		"--kubeconfig="+e.kubeconfig,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector="+AnnotationKwokNode+"=fake",
		"--cidr="+PodCIDR,
		"--node-ip="+NodeIP,
		"--node-lease-duration-seconds="+strconv.Itoa(lease),
		"--server-address=127.0.0.1:"+strconv.Itoa(port),
	)
}

// waitHealthy polls https://127.0.0.1:port/healthz of a component (its self-signed certificate is
// not checked: it is our own process on loopback) until it answers 200.
func (e *Env) waitHealthy(ctx context.Context, name string, port int) error {
	c := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // loopback, our own child
	}
	defer c.CloseIdleConnections()
	url := fmt.Sprintf("https://127.0.0.1:%d/healthz", port)
	var last string
	for {
		if resp, err := c.Get(url); err != nil {
			last = err.Error()
		} else {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("k8senv: %s not healthy on port %d: %s: %w", name, port, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// recordPid appends "pid exe" to the work dir's pids file, for reapStale.
func (e *Env) recordPid(pid int) {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return
	}
	f, err := os.OpenFile(filepath.Join(e.workDir, "pids"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%d %s\n", pid, exe)
}

// recordChildren records the pids of envtest's processes (our children running a binary of the
// bin dir), which envtest does not expose.
func (e *Env) recordChildren() {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …: comm may hold spaces, so split after the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(self) {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && filepath.Dir(exe) == e.binDir {
			e.recordPid(pid)
		}
	}
}

// reapStale kills the processes a dead environment recorded in its work dir dir
// (testenv.OwnedWorkDir) that still run the same executable.
func reapStale(dir string) {
	f, err := os.Open(filepath.Join(dir, "pids"))
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pidStr, exe, ok := strings.Cut(sc.Text(), " ")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil {
			continue
		}
		if now, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && now == exe {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// logTails returns the last n lines of every component's log.
func (e *Env) logTails(n int) string {
	logs, _ := filepath.Glob(filepath.Join(e.workDir, "*.log"))
	sort.Strings(logs)
	var b strings.Builder
	for _, l := range logs {
		data, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "--- %s (last %d lines)\n%s\n", filepath.Base(l), len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}
