//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// bootSequence is CONTRACT §2's start-up order, as log messages; step 3 is the runtime's
// (docs/kubernetes.md: Start-up and readiness).
func bootSequence() []string {
	runtime := []string{"docker ping ok", "docker network found"}
	if onKube() {
		runtime = []string{"kubernetes ping ok", "kubernetes access ok", "kubernetes pods listed"}
	}
	seq := []string{"migrations applied", "postgres ping ok", "redis ping ok"}
	seq = append(seq, runtime...)
	return append(seq, "telemetry exporter started", "internal http listening", "reconciler initial pass completed")
}

// backgroundWorkers are the seven workers whose `worker started` lines close a healthy boot.
var backgroundWorkers = []string{"startjobs", "stopjobs", "dockerevents", "prober", "inspector", "reconcile_ticker", "publisher"}

// A healthy boot logs the runbook's lines in the runbook's order, then exactly seven
// `worker started` lines, one per background worker, and answers both probes.
func TestBoot_HealthyStartupLogsRunbookOrderAndSevenWorkers(t *testing.T) {
	r := newRig(t, "boot")
	r.Start()
	// Give the workers their moment: readiness may answer before the last line is written.
	testenv.Eventually(t, 5*time.Second, "seven worker started lines", func() (bool, string) {
		n := 0
		for _, l := range r.LogLines() {
			if l.str("msg") == "worker started" {
				n++
			}
		}
		return n >= 7, fmt.Sprintf("%d so far", n)
	})

	var msgs []string
	var workers []string
	seq := bootSequence()
	for _, l := range r.LogLines() {
		msg := l.str("msg")
		if slices.Contains(seq, msg) {
			msgs = append(msgs, msg)
		}
		if msg == "worker started" {
			if len(msgs) != len(seq) {
				t.Fatalf("worker %q started before the boot sequence completed (seen so far: %q)", l.str("worker"), msgs)
			}
			workers = append(workers, l.str("worker"))
		}
	}
	expect(t, slices.Equal(msgs, seq), "boot log lines %q, want %q in that order, once each", msgs, seq)
	slices.Sort(workers)
	want := slices.Clone(backgroundWorkers)
	slices.Sort(want)
	expect(t, slices.Equal(workers, want), "worker started lines for %q, want exactly %q", workers, want)

	code, body := httpGet(r.API + "/healthz")
	expect(t, code == http.StatusOK && strings.Contains(string(body), `"status":"ok"`), "/healthz: %d %s", code, body)
	code, body = httpGet(r.API + "/readyz")
	expect(t, code == http.StatusOK && strings.Contains(string(body), `"status":"ready"`), "/readyz: %d %s", code, body)

	r.StopClean()
}

// A bad setting stops RTM with exit code 2 and one line naming the variable; a missing network
// is fatal (exit 1) before any listener opens. (Kubernetes: the Docker setting is refused as a
// setting of the other runtime, and an API server that does not answer is the fatal step.)
func TestBoot_RefusesBadConfigAndMissingNetwork(t *testing.T) {
	r := newRig(t, "badboot")

	r.Env["RTMANAGER_GAME_STATE_DIR_MODE"] = "banana"
	out, code := runOnce(t, r.Env)
	expect(t, code == 2, "bad RTMANAGER_GAME_STATE_DIR_MODE: exit %d, want 2:\n%s", code, out)
	expect(t, strings.Contains(out, "RTMANAGER_GAME_STATE_DIR_MODE"), "the error does not name the variable:\n%s", out)
	delete(r.Env, "RTMANAGER_GAME_STATE_DIR_MODE")

	step := "docker network"
	if onKube() {
		step = "kubernetes ping"
		dead := startProxy(t, "127.0.0.1", "tcp", "127.0.0.1:1")
		dead.Cut() // nothing listens there now
		r.Env["KUBECONFIG"] = kubeconfigVia(t, suite.k8s.Kubeconfig(), "https://"+dead.listen)
	} else {
		r.Env["RTMANAGER_DOCKER_NETWORK"] = r.Net + "-missing"
	}
	out, code = runOnce(t, r.Env)
	expect(t, code == 1, "%s fails: exit %d, want 1:\n%s", step, code, out)
	expect(t, !strings.Contains(out, "internal http listening"), "a listener opened despite the failed %s:\n%s", step, out)
	expect(t, strings.Contains(out, `"step":"`+step+`"`), "the error does not name the step %s:\n%s", step, out)
}

// runOnce runs rtmanager to completion (it must exit by itself) and returns its output and code.
func runOnce(t *testing.T, env map[string]string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, suite.bin)
	cmd.Env = testenv.RTMEnviron(env)
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("rtmanager did not exit by itself within 30s:\n%s", out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// /readyz pings every dependency fresh on each request: cutting PostgreSQL, Redis, the Docker
// daemon or removing the network turns it 503 with the canonical envelope naming that
// dependency first, and it is ready again once the dependency is back. (Kubernetes: the API
// server behind a forwarder, and RTM's permissions, a RoleBinding of docs/kubernetes/rbac.yaml's
// Role, withdrawn and given back: their verdict is kept 30 s.)
func TestReadyz_Turns503PerDependency(t *testing.T) {
	r := newRig(t, "ready")
	pg := startProxy(t, "127.0.0.1", "tcp", pgAddr())
	r.Env["RTMANAGER_POSTGRES_PRIMARY_DSN"] = strings.Replace(r.DSN, pgAddr(), pg.listen, 1)
	var rt *proxy
	var user string
	if onKube() {
		user = "rtm-" + r.prefix
		kubeconfig, _, err := suite.k8s.AddUser(user, nil)
		if err != nil {
			t.Fatal(err)
		}
		applyRBAC(t, r.NS, user)
		rt = startProxy(t, "127.0.0.1", "tcp", apiServerAddr(t))
		r.Env["KUBECONFIG"] = kubeconfigVia(t, kubeconfig, "https://"+rt.listen)
	} else {
		dockerSock := strings.TrimPrefix(dockerHost(), "unix://")
		rt = startProxy(t, "127.0.0.1", "unix", dockerSock)
		r.Env["RTMANAGER_DOCKER_HOST"] = "tcp://" + rt.listen
	}
	r.Start()

	notReady := func(prefix string, within time.Duration) {
		t.Helper()
		testenv.Eventually(t, within, "/readyz 503 naming "+prefix, func() (bool, string) {
			code, body := httpGet(r.API + "/readyz")
			msg := errorOf(body).Message
			return code == http.StatusServiceUnavailable && errorCode(body) == "service_unavailable" &&
				strings.HasPrefix(msg, prefix), string(body)
		})
	}
	ready := func(within time.Duration) {
		t.Helper()
		testenv.Eventually(t, within, "/readyz ready again", func() (bool, string) {
			code, body := httpGet(r.API + "/readyz")
			return code == http.StatusOK && strings.Contains(string(body), `"status":"ready"`), string(body)
		})
	}

	pg.Cut()
	notReady("postgres: ", 15*time.Second)
	pg.Restore()
	ready(30 * time.Second)

	r.Redis.Stop()
	notReady("redis: ", 15*time.Second)
	r.Redis.Restart()
	ready(30 * time.Second)

	rt.Cut()
	if onKube() {
		notReady("kubernetes: ", 15*time.Second)
	} else {
		notReady("docker: ", 15*time.Second)
	}
	rt.Restore()
	ready(30 * time.Second)

	if onKube() {
		ctx := context.Background()
		bindings := suite.k8s.Client().RbacV1().RoleBindings(r.NS)
		if err := bindings.Delete(ctx, "rtmanager", metav1.DeleteOptions{}); err != nil {
			t.Fatalf("deleting RTM's RoleBinding: %v", err)
		}
		notReady("kubernetes access: ", 45*time.Second)
		applyRBAC(t, r.NS, user)
		ready(45 * time.Second)
	} else {
		ctx := context.Background()
		if err := suite.docker.NetworkRemove(ctx, r.Net); err != nil {
			t.Fatalf("removing the network: %v", err)
		}
		notReady("docker network: ", 15*time.Second)
		if _, err := suite.docker.NetworkCreate(ctx, r.Net, network.CreateOptions{Driver: "bridge"}); err != nil {
			t.Fatalf("creating the network again: %v", err)
		}
		ready(30 * time.Second)
	}

	code, _ := httpGet(r.API + "/healthz")
	expect(t, code == http.StatusOK, "/healthz is not a dependency check, yet answered %d", code)
	r.StopClean()
}

// SIGTERM makes RTM exit 0 within the shutdown budget after persisting each consumer's offset;
// the next process resumes from it: jobs handled before are not handled again, and a job written
// while RTM was down is handled exactly once.
func TestShutdown_PersistsOffsetsAndResumesWithoutRehandling(t *testing.T) {
	r := newRig(t, "shut")
	r.Start()
	ctx := context.Background()
	a, b := r.game("a"), r.game("b")

	startID := r.StartJob(a, img(v141), "req-a-start")
	r.WaitSucceeded("req-a-start")
	stopID := r.StopJob(a, "req-a-stop", "admin_request")
	r.WaitSucceeded("req-a-stop")

	took := r.StopClean()
	expect(t, took < r.cfg.ShutdownTimeout, "shutdown took %s, over RTMANAGER_SHUTDOWN_TIMEOUT %s", took, r.cfg.ShutdownTimeout)
	var msgs []string
	for _, l := range r.LogLines() {
		msgs = append(msgs, l.str("msg"))
	}
	expect(t, slices.Contains(msgs, "internal http listener stopped") || slices.Contains(msgs, "shutting down"),
		"no shutdown log lines: %q", msgs)

	offStart, err := r.RDB.Get(ctx, "rtmanager:stream_offsets:startjobs").Result()
	expect(t, err == nil && offStart == startID, "start jobs offset %q (%v), want the last entry %s", offStart, err, startID)
	offStop, err := r.RDB.Get(ctx, "rtmanager:stream_offsets:stopjobs").Result()
	expect(t, err == nil && offStop == stopID, "stop jobs offset %q (%v), want the last entry %s", offStop, err, stopID)

	// While RTM is down, Lobby keeps writing.
	laterID := r.StartJob(b, img(v141), "req-b-start")
	r.Start()
	r.WaitSucceeded("req-b-start")
	expect(t, r.State(b) == "running", "game b not running after the restart: %q", r.State(b))
	time.Sleep(2 * time.Second) // time for a wrongly re-read entry to be answered again
	for _, req := range []string{"req-a-start", "req-a-stop", "req-b-start"} {
		n := len(r.Results(req))
		expect(t, n == 1, "%s has %d job results after the restart, want 1", req, n)
	}
	expect(t, r.Ops(a, "start", "") == 1 && r.Ops(a, "stop", "") == 1, "game a's jobs were handled again: %q", r.OpKinds(a))
	expect(t, r.State(a) == "exited", "the stopped game was started again: %q", r.State(a))
	testenv.Eventually(t, 5*time.Second, "start jobs offset advanced", func() (bool, string) {
		off, _ := r.RDB.Get(ctx, "rtmanager:stream_offsets:startjobs").Result()
		return off == laterID, "offset " + off + ", want " + laterID
	})
}

func pgAddr() string { return fmt.Sprintf("%s:%d", suite.env.PGHost, suite.env.PGPort) }

// dockerHost is the daemon the tests use (DOCKER_HOST or the default socket).
func dockerHost() string {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return h
	}
	return "unix:///var/run/docker.sock"
}
