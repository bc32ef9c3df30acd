//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// ctlVersion is the version linked into the rtmctl binary the test builds.
const ctlVersion = "e2e-ctl"

// ctl runs the rtmctl binary the way an operator does, against one rig's RTM: the server and
// Redis come from the environment (RTMCTL_SERVER, RTMANAGER_REDIS_*), as after sourcing make
// dev's environment file.
type ctl struct {
	t   *testing.T
	bin string
	env []string
}

// ctlRun is how one rtmctl invocation ended.
type ctlRun struct {
	code           int
	stdout, stderr string
}

func (c ctlRun) String() string {
	return "exit " + strconv.Itoa(c.code) + "\n--- stdout:\n" + c.stdout + "--- stderr:\n" + c.stderr
}

// newCtl builds rtmctl (static, with its version linked in) and points it at r's RTM.
func newCtl(t *testing.T, r *rig) *ctl {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rtmctl")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := testenv.GoBuild(ctx, suite.root, bin, "./cmd/rtmctl", "-ldflags", "-X main.version="+ctlVersion); err != nil {
		t.Fatal(err)
	}
	cfg := r.Config()
	return &ctl{t: t, bin: bin, env: []string{
		"HOME=" + os.Getenv("HOME"),
		"RTMCTL_SERVER=" + r.API,
		"RTMANAGER_REDIS_MASTER_ADDR=" + r.Redis.Addr(),
		"RTMANAGER_REDIS_PASSWORD=" + r.Redis.Password,
		"RTMANAGER_REDIS_HEALTH_EVENTS_STREAM=" + cfg.HealthEventsStream,
	}}
}

func (c *ctl) command(ctx context.Context, args ...string) (*exec.Cmd, *testenv.SyncBuffer, *testenv.SyncBuffer) {
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = c.env
	var out, errOut testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	return cmd, &out, &errOut
}

// run runs rtmctl to its end (at most 2 minutes).
func (c *ctl) run(args ...string) ctlRun {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd, out, errOut := c.command(ctx, args...)
	err := cmd.Run()
	code := cmd.ProcessState.ExitCode()
	if err != nil && code == -1 {
		c.t.Fatalf("rtmctl %v: %v", args, err)
	}
	c.t.Logf("rtmctl %s → exit %d", strings.Join(args, " "), code)
	return ctlRun{code: code, stdout: out.String(), stderr: errOut.String()}
}

// background is an rtmctl running while the test does something else.
type background struct {
	cmd         *exec.Cmd
	out, errOut *testenv.SyncBuffer
	done        chan struct{}
}

// start runs rtmctl in the background; the test ends it (end, interrupt) before it returns.
func (c *ctl) start(args ...string) *background {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd, out, errOut := c.command(ctx, args...)
	if err := cmd.Start(); err != nil {
		cancel()
		c.t.Fatalf("rtmctl %v: %v", args, err)
	}
	b := &background{cmd: cmd, out: out, errOut: errOut, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); cancel(); close(b.done) }()
	c.t.Cleanup(func() { _ = cmd.Process.Kill(); <-b.done })
	return b
}

// end waits for the background rtmctl to exit by itself and returns how it ended.
func (b *background) end(t *testing.T, within time.Duration) ctlRun {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(within):
		t.Fatalf("rtmctl %v still running after %s:\n%s\n%s", b.cmd.Args[1:], within, b.out, b.errOut)
	}
	return ctlRun{code: b.cmd.ProcessState.ExitCode(), stdout: b.out.String(), stderr: b.errOut.String()}
}

// interrupt sends SIGINT (Ctrl-C) and returns how the background rtmctl ended.
func (b *background) interrupt(t *testing.T) ctlRun {
	t.Helper()
	_ = b.cmd.Process.Signal(syscall.SIGINT)
	return b.end(t, 10*time.Second)
}

// healthOf is the HEALTH cell of the game's row in `rtmctl get runtime g --no-headers`.
func (c *ctl) healthOf(gameID string) (string, string) {
	res := c.run("get", "runtime", gameID, "--no-headers")
	f := strings.Fields(res.stdout)
	if res.code != 0 || len(f) < 3 || f[0] != gameID {
		return "", res.String()
	}
	return f[2], res.stdout
}

// TestRtmctl_VerbsAgainstARealRTM drives the operators' verbs of rtmctl against a real RTM whose
// own wait for convergence is 10ms, so that every mutation that needs work is answered 202 and
// rtmctl follows it to its outcome: version, start, get with HEALTH (also for an engine failing
// its probes), -o name / jsonpath, --no-headers, describe, logs and logs -f, wait for running,
// stopped and removed (and its timeout), get -w, a patch that has not converged when --timeout
// runs out (exit 3) and one followed past RTM's wait to its rollback (exit 1), and the refusal
// of a patch across a minor version (exit 1, semver_patch_only).
func TestRtmctl_VerbsAgainstARealRTM(t *testing.T) {
	r := newRig(t, "ctl")
	r.Env["RTMANAGER_REST_WAIT_TIMEOUT"] = "10ms"
	r.Start()
	c := newCtl(t, r)
	g := r.game("a")

	// version: the client's and the server's.
	res := c.run("version")
	expect(t, res.code == 0 && strings.Contains(res.stdout, "Client Version: "+ctlVersion+" (") &&
		strings.Contains(res.stdout, "Server Version: e2e (") && strings.Contains(res.stdout, "API v1)"), "version: %v", res)

	// start: RTM answers 202 after its 10ms; rtmctl waits for the outcome and prints the record.
	res = c.run("start", g, "--image", img(v141))
	expect(t, res.code == 0 && strings.Contains(res.stderr, "waiting for request rest-") &&
		strings.Contains(res.stdout, g) && strings.Contains(res.stdout, "running"), "start: %v", res)
	r.WaitStatus(g, "running", 5*time.Second)

	// get: the HEALTH column follows the probes.
	var last string
	testenv.Eventually(t, 10*time.Second, "HEALTH healthy", func() (bool, string) {
		h, out := c.healthOf(g)
		last = out
		return h == "healthy", out
	})
	res = c.run("get", "runtimes")
	expect(t, res.code == 0 && strings.Contains(res.stdout, "HEALTH") && strings.Contains(res.stdout, "GAME ID"), "get runtimes: %v", res)
	r.Engine(g, "/control/sick")
	testenv.Eventually(t, 10*time.Second, "HEALTH unhealthy for an engine failing every probe", func() (bool, string) {
		h, out := c.healthOf(g)
		if h == "probe_failing" {
			t.Logf("seen on the way: %s", strings.TrimSpace(out))
		}
		return h == "unhealthy", out
	})
	res = c.run("describe", g)
	expect(t, res.code == 0 && strings.Contains(res.stdout, "unhealthy (probe_failed)") && strings.Contains(res.stdout, "probe_failed"),
		"describe of a sick engine: %v", res)
	r.Engine(g, "/control/well")
	testenv.Eventually(t, 10*time.Second, "HEALTH healthy again", func() (bool, string) {
		h, out := c.healthOf(g)
		return h == "healthy", out
	})
	t.Logf("healthy row: %s", strings.TrimSpace(last))

	// -o name, -o jsonpath, --no-headers.
	res = c.run("get", "runtimes", "-o", "name")
	expect(t, res.code == 0 && strings.Contains(res.stdout, "runtime/"+g+"\n"), "-o name: %v", res)
	res = c.run("get", "runtime", g, "-o", "jsonpath={.current_image_ref}")
	expect(t, res.code == 0 && res.stdout == img(v141), "-o jsonpath: %v", res)
	res = c.run("get", "runtimes", "-o", `jsonpath={range .runtimes[*]}{.game_id}:{.status}{"\n"}{end}`)
	expect(t, res.code == 0 && strings.Contains(res.stdout, g+":running\n"), "-o jsonpath over the list: %v", res)
	res = c.run("get", "runtimes", "--no-headers")
	expect(t, res.code == 0 && strings.HasPrefix(res.stdout, g+" ") && !strings.Contains(res.stdout, "GAME ID"), "--no-headers: %v", res)

	// describe: record, health, operations, events in one view (the events reach Redis through
	// the outbox, a moment after the snapshot changed).
	testenv.Eventually(t, 10*time.Second, "describe shows it all", func() (bool, string) {
		res = c.run("describe", g)
		for _, want := range []string{"Name:", g, "Status:", "running", "Health:", "healthy", "Health Snapshot:",
			"Operations (newest first", "start", "admin_rest", "succeeded", "Events (" + r.Config().HealthEventsStream,
			"container_started", "probe_failed", "probe_recovered"} {
			if res.code != 0 || !strings.Contains(res.stdout, want) {
				return false, "lacks " + want + ": " + res.String()
			}
		}
		return true, ""
	})
	t.Logf("rtmctl describe %s:\n%s", g, res.stdout)

	// logs: the engine's stderr lines, plain text; with timestamps.
	var follow *background
	if onKube() {
		// Kubernetes: an engine's output comes through the API server from its node's kubelet,
		// and kwok's nodes serve none (the API server cannot reach their kubelet port): rtmctl
		// reports RTM's 503, and there is nothing to follow.
		res = c.run("logs", g, "--tail", "20")
		expect(t, res.code == 1 && strings.Contains(res.stderr, "error: service_unavailable:"), "logs on kwok's node: %v", res)
	} else {
		res = c.run("logs", g, "--tail", "20")
		expect(t, res.code == 0 && strings.Contains(res.stdout, "engine: ") && strings.Contains(res.stdout, "serving on :8080") &&
			strings.Contains(res.stdout, `game="`+g+`"`) && !strings.ContainsRune(res.stdout, 0), "logs: %v", res)
		res = c.run("logs", g, "--tail", "1", "--timestamps")
		ts, _, _ := strings.Cut(res.stdout, " ")
		_, err := time.Parse(time.RFC3339Nano, ts)
		expect(t, res.code == 0 && err == nil, "logs --timestamps: %v (%v)", res, err)

		// logs -f and wait --for=status=stopped across a stop: the stream ends with the container.
		follow = c.start("logs", g, "-f", "--tail", "1")
		testenv.Eventually(t, 10*time.Second, "logs -f opened", func() (bool, string) { return follow.out.String() != "", follow.errOut.String() })
	}
	waiter := c.start("wait", g, "--for=status=stopped", "--interval", "200ms")
	res = c.run("stop", g)
	expect(t, res.code == 0 && strings.Contains(res.stdout, "stopped"), "stop: %v", res)
	if follow != nil {
		res = follow.end(t, 30*time.Second)
		expect(t, res.code == 0 && strings.Contains(res.stdout, "exiting"), "logs -f across the stop: %v", res)
	}
	res = waiter.end(t, 30*time.Second)
	expect(t, res.code == 0 && res.stdout == "runtime/"+g+" condition met\n", "wait --for=status=stopped: %v", res)

	// wait times out: exit 3.
	res = c.run("--timeout", "2s", "wait", g, "--for=status=running", "--interval", "200ms")
	expect(t, res.code == 3 && strings.Contains(res.stderr, "timed out after 2s") && strings.Contains(res.stderr, "(it is stopped)"),
		"wait past its timeout: %v", res)

	// get -w prints the row again when it changes; Ctrl-C ends it with 0.
	watch := c.start("get", "runtime", g, "-w", "--interval", "200ms")
	testenv.Eventually(t, 10*time.Second, "get -w printed the table", func() (bool, string) {
		return len(strings.Split(strings.TrimSpace(watch.out.String()), "\n")) >= 2, watch.out.String()
	})
	res = c.run("start", g, "--image", img(v141))
	expect(t, res.code == 0, "start again: %v", res)
	res = c.run("wait", g, "--for=status=running")
	expect(t, res.code == 0 && strings.Contains(res.stdout, "condition met"), "wait --for=status=running: %v", res)
	testenv.Eventually(t, 10*time.Second, "get -w printed the running row", func() (bool, string) {
		ls := strings.Split(strings.TrimSpace(watch.out.String()), "\n")
		return len(ls) >= 3 && strings.Fields(ls[len(ls)-1])[1] == "running", watch.out.String()
	})
	res = watch.interrupt(t)
	expect(t, res.code == 0 && strings.HasPrefix(res.stdout, "GAME ID"), "get -w after Ctrl-C: %v", res)

	// A patch to a release that fails its probe cannot finish within 500ms (two failed probes
	// are a second apart): not converged, exit 3, the record as it stands on stdout.
	res = c.run("--timeout", "500ms", "patch", g, "--image", img(v143), "-o", "json")
	expect(t, res.code == 3 && strings.Contains(res.stderr, "not converged within 500ms") &&
		strings.Contains(res.stderr, "rtmctl wait "+g+" --for=status=running"), "patch not converged: %v", res)
	var rec map[string]any
	expect(t, json.Unmarshal([]byte(res.stdout), &rec) == nil && rec["game_id"] == g, "the record as it stands: %v", res)
	testenv.Eventually(t, 30*time.Second, "the first patch rolled back", func() (bool, string) {
		return r.Ops(g, "patch", "outcome = 'failed'") == 1, strings.Join(r.OpKinds(g), " ")
	})
	r.WaitStatus(g, "running", 10*time.Second)

	// The same patch with rtmctl's default --timeout: RTM's 10ms wait runs out, rtmctl keeps
	// waiting and reports the rollback as the refusal it is.
	t0 := time.Now()
	res = c.run("patch", g, "--image", img(v143))
	expect(t, res.code == 1 && strings.Contains(res.stderr, "error: patch_rolled_back:") &&
		strings.Contains(res.stderr, "the previous image runs again"), "patch followed to its rollback: %v", res)
	t.Logf("the rollback was reported %s after the request", time.Since(t0).Round(time.Millisecond))

	// Refused at once, as before: across a minor version.
	res = c.run("patch", g, "--image", img(v150))
	expect(t, res.code == 1 && strings.Contains(res.stderr, "semver_patch_only"), "patch across a minor: %v", res)

	// Stop, clean up, wait for removed; a removed game has no output to read.
	res = c.run("stop", g)
	expect(t, res.code == 0, "stop: %v", res)
	res = c.run("cleanup", g, "-o", "name")
	expect(t, res.code == 0 && res.stdout == "runtime/"+g+"\n", "cleanup: %v", res)
	res = c.run("wait", g, "--for=status=removed", "--timeout", "30s")
	expect(t, res.code == 0, "wait --for=status=removed: %v", res)
	res = c.run("logs", g)
	expect(t, res.code == 1 && strings.Contains(res.stderr, "error: runtime_not_found: game "+g+" has no container"), "logs of a removed game: %v", res)
}
