package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/probe"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

const repo = "rtm-ctrl-test/game"

var (
	env     *testenv.Env
	network string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e, err := testenv.Start(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "test environment:", err)
		return 1
	}
	defer e.Stop()
	env = e
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv("RTM_E2E_REQUIRED") == "1" {
			fmt.Fprintln(os.Stderr, "docker is required:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "docker not available; skipping the reconciler's integration tests")
		return 0
	}
	if err := testenv.BuildEngineImages(ctx, repo, "1.4.1", "1.4.2", "1.4.3"); err != nil {
		fmt.Fprintln(os.Stderr, "engine images:", err)
		return 1
	}
	network = fmt.Sprintf("rtm-ctrl-test-%d", os.Getpid())
	if out, err := exec.Command("docker", "network", "create", network).CombinedOutput(); err != nil {
		fmt.Fprintln(os.Stderr, "network:", err, string(out))
		return 1
	}
	defer exec.Command("docker", "network", "rm", network).Run()
	return m.Run()
}

// rig is one reconciler wired to real PostgreSQL, Redis and Docker.
type rig struct {
	t      *testing.T
	store  *store.Store
	docker *runtime.Docker
	rdb    *redis.Client
	rec    *controllers.GameReconciler
	root   string
	prefix string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	st, _ := env.MustStore(t)
	rdb := env.MustRedis(t)
	dk, err := runtime.New(runtime.Options{Host: "unix:///var/run/docker.sock", Network: network,
		// These tests are about the reconciler, not Docker's latency: on a machine loaded by other
		// suites the daemon has taken more than the default 10 s to start a container.
		CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dk.Close() })
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	prefix := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	prefix = fmt.Sprintf("%s-%d", prefix[len(prefix)-min(len(prefix), 20):], time.Now().UnixNano()%100000)
	r := &rig{t: t, store: st, docker: dk, rdb: rdb, root: root, prefix: strings.TrimLeft(prefix, "-")}
	r.rec = r.reconciler("test")
	t.Cleanup(func() {
		out, _ := exec.Command("docker", "ps", "-aq", "--filter", "name=galaxy-game-"+r.prefix).Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("docker", "rm", "-f", id).Run()
		}
	})
	return r
}

// reconciler returns a reconciler on the rig's store, Docker and Redis whose leases carry owner:
// another RTM process when owner differs from the rig's.
func (r *rig) reconciler(owner string) *controllers.GameReconciler {
	r.t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	co := coord.New(r.rdb, owner, 10*time.Second)
	hctx, stop := context.WithCancel(context.Background())
	r.t.Cleanup(stop)
	if err := co.Heartbeat(hctx); err != nil {
		r.t.Fatal(err)
	}
	rec, err := controllers.New(r.store, r.docker, co,
		runtime.StateDirs{Root: r.root, Mode: 0o750}, probe.New(8080, true, time.Second),
		controllers.Options{Network: network, EnginePort: 8080, StateMount: "/var/lib/galaxy-game",
			StopTimeout: 5 * time.Second, MemoryBytes: 64 << 20, NanoCPUs: 1e9, PidsLimit: 64, ReadOnlyRoot: true,
			PatchVerifyTimeout: 3 * time.Second, ProbeInterval: 200 * time.Millisecond}, log, nil, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	return rec
}

func (r *rig) game(name string) string { return r.prefix + "-" + name }

// running starts game name at 1.4.1 and reconciles it: a running game.
func (r *rig) running(name string) string {
	r.t.Helper()
	g := r.game(name)
	r.submit(start(g, repo+":1.4.1"))
	r.reconcile(g)
	return g
}

func (r *rig) submit(req rtm.Request) rtm.Submission {
	r.t.Helper()
	req.ReceivedAt = time.Now().UTC()
	if req.RequestID == "" {
		req.RequestID = fmt.Sprintf("req-%d", time.Now().UnixNano())
	}
	if req.Channel == "" {
		req.Channel, req.Source = rtm.ChannelREST, rtm.SourceAdminREST
	}
	sub, err := r.store.Submit(context.Background(), req, func(rec *rtm.Record, busy bool) rtm.Admission {
		return rtm.Admit(rec, req, busy, rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return filepath.Join(r.root, id) }})
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return sub
}

// reconcile runs Reconcile until it asks for nothing more (at most a few rounds).
func (r *rig) reconcile(game string) {
	r.t.Helper()
	for i := 0; i < 5; i++ {
		res, err := r.rec.Reconcile(context.Background(), game)
		if err != nil {
			r.t.Fatalf("Reconcile(%s): %v", game, err)
		}
		if res.RequeueAfter == 0 {
			return
		}
		time.Sleep(res.RequeueAfter)
	}
}

func (r *rig) record(game string) *rtm.Record {
	r.t.Helper()
	rec, err := r.store.Get(context.Background(), game)
	if err != nil {
		r.t.Fatal(err)
	}
	return rec
}

func (r *rig) answer(req rtm.Request) *rtm.Answer {
	r.t.Helper()
	a, err := r.store.RequestAnswer(context.Background(), req.Channel, req.RequestID)
	if err != nil {
		r.t.Fatal(err)
	}
	return a
}

func (r *rig) inspect(game string) (rtm.Container, error) {
	return r.docker.Inspect(context.Background(), game)
}

func (r *rig) ops(game string, kind rtm.OpKind) int {
	ops, err := r.store.Operations(context.Background(), game, 100)
	if err != nil {
		r.t.Fatal(err)
	}
	n := 0
	for _, o := range ops {
		if o.Kind == kind {
			n++
		}
	}
	return n
}

func start(game, image string) rtm.Request {
	return rtm.Request{GameID: game, Kind: rtm.OpStart, ImageRef: image, RequestID: "start-" + game + "-" + image}
}

func TestGameReconciler_Reconcile_startStopAndRemove(t *testing.T) {
	r := newRig(t)
	g := r.game("life")
	req := start(g, repo+":1.4.1")
	sub := r.submit(req)
	req.Channel = sub.Request.Channel
	r.reconcile(g)
	rec := r.record(g)
	if rec.Status != rtm.StatusRunning || rec.CurrentContainerID == "" || !rec.Settled() {
		t.Fatalf("record after start: %+v", rec)
	}
	if a := r.answer(req); a == nil || a.Outcome != rtm.OutcomeSucceeded {
		t.Fatalf("answer: %+v", a)
	}
	c, err := r.inspect(g)
	if err != nil || !c.Running() || c.ID != rec.CurrentContainerID {
		t.Fatalf("container: %+v %v", c, err)
	}
	if fi, err := os.Stat(filepath.Join(r.root, g)); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("state dir: %v %v", fi, err)
	}
	// A second pass over a converged game writes nothing.
	before := r.record(g).UpdatedAt
	r.reconcile(g)
	if after := r.record(g).UpdatedAt; !after.Equal(before) {
		t.Fatal("a pass over a converged game wrote the record")
	}

	r.submit(rtm.Request{GameID: g, Kind: rtm.OpStop})
	r.reconcile(g)
	if rec := r.record(g); rec.Status != rtm.StatusStopped {
		t.Fatalf("after stop: %s", rec.Status)
	}
	if c, _ := r.inspect(g); c.Running() {
		t.Fatal("container still runs after stop")
	}
	r.submit(rtm.Request{GameID: g, Kind: rtm.OpCleanupContainer})
	r.reconcile(g)
	if _, err := r.inspect(g); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("container after cleanup: %v", err)
	}
	if rec := r.record(g); rec.Status != rtm.StatusRemoved {
		t.Fatalf("after cleanup: %s", rec.Status)
	}
	if _, err := os.Stat(filepath.Join(r.root, g)); err != nil {
		t.Fatal("cleanup removed the state dir")
	}
}

func TestGameReconciler_Reconcile_imagePullFailureIsTerminal(t *testing.T) {
	r := newRig(t)
	g := r.game("pull")
	req := start(g, "127.0.0.1:1/"+repo+":9.9.9") // a registry on loopback where nothing listens: no traffic leaves the machine
	req.Channel = r.submit(req).Request.Channel
	r.reconcile(g)
	rec := r.record(g)
	if rec.Status != rtm.StatusFailed || rec.LastErrorCode != rtm.CodeImagePullFailed {
		t.Fatalf("record: %+v", rec)
	}
	if a := r.answer(req); a == nil || a.Code != rtm.CodeImagePullFailed {
		t.Fatalf("answer: %+v", a)
	}
	if act := controllers.Decide(rec, nil); act != controllers.ActNone {
		t.Fatalf("a terminal failure is retried: %s", act)
	}
}

func TestGameReconciler_Reconcile_patchAndRollback(t *testing.T) {
	r := newRig(t)
	g := r.running("patch")
	first := r.record(g).CurrentContainerID

	patch := rtm.Request{GameID: g, Kind: rtm.OpPatch, ImageRef: repo + ":1.4.2", OldImageRef: repo + ":1.4.1", RequestID: "p1"}
	patch.Channel = r.submit(patch).Request.Channel
	r.reconcile(g)
	rec := r.record(g)
	if rec.CurrentImageRef != repo+":1.4.2" || rec.CurrentContainerID == first || rec.Status != rtm.StatusRunning {
		t.Fatalf("after patch: %+v", rec)
	}
	if a := r.answer(patch); a == nil || a.Outcome != rtm.OutcomeSucceeded {
		t.Fatalf("patch answer: %+v", a)
	}
	if boots, _ := os.ReadFile(filepath.Join(r.root, g, "boots")); string(boots) != "2" {
		t.Fatalf("the engine's state did not survive the patch: boots=%q", boots)
	}

	bad := rtm.Request{GameID: g, Kind: rtm.OpPatch, ImageRef: repo + ":1.4.3", OldImageRef: repo + ":1.4.2", RequestID: "p2"}
	bad.Channel = r.submit(bad).Request.Channel
	r.reconcile(g)
	rec = r.record(g)
	if rec.CurrentImageRef != repo+":1.4.2" || rec.DesiredImageRef != repo+":1.4.2" || rec.Status != rtm.StatusRunning {
		t.Fatalf("after a failed patch: %+v", rec)
	}
	if a := r.answer(bad); a == nil || a.Code != rtm.CodePatchRolledBack {
		t.Fatalf("failed patch answer: %+v", a)
	}
	if c, err := r.inspect(g); err != nil || !c.Running() || c.ImageRef != repo+":1.4.2" {
		t.Fatalf("container after rollback: %+v %v", c, err)
	}
	if n := r.ops(g, rtm.OpPatch); n != 2 {
		t.Fatalf("%d patch rows, want 2", n)
	}
}

func TestGameReconciler_Reconcile_restartGivesAFreshContainer(t *testing.T) {
	r := newRig(t)
	g := r.running("restart")
	first := r.record(g).CurrentContainerID
	r.submit(rtm.Request{GameID: g, Kind: rtm.OpRestart})
	r.reconcile(g)
	rec := r.record(g)
	if rec.CurrentContainerID == first || rec.Status != rtm.StatusRunning {
		t.Fatalf("after restart: %+v", rec)
	}
}

func TestGameReconciler_Reconcile_drift(t *testing.T) {
	r := newRig(t)
	gone, exited, manual := r.running("gone"), r.running("exited"), r.game("manual")
	if err := exec.Command("docker", "rm", "-f", "galaxy-game-"+gone).Run(); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("docker", "stop", "-t", "0", "galaxy-game-"+exited).Run(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("docker", "run", "-d", "--name", "galaxy-game-"+manual, "--network", network,
		"-l", "com.galaxy.owner=rtmanager", "-l", "com.galaxy.game_id="+manual, repo+":1.4.1").CombinedOutput()
	if err != nil {
		t.Fatalf("docker run: %v %s", err, out)
	}
	foreign := r.game("foreign")
	if out, err := exec.Command("docker", "run", "-d", "--name", "galaxy-game-"+foreign,
		"-l", "com.galaxy.game_id="+foreign, repo+":1.4.1").CombinedOutput(); err != nil {
		t.Fatalf("docker run: %v %s", err, out)
	}
	for i := 0; i < 2; i++ { // the second pass must change nothing
		for _, g := range []string{gone, exited, manual, foreign} {
			r.reconcile(g)
		}
	}
	if rec := r.record(gone); rec.Status != rtm.StatusRemoved || r.ops(gone, rtm.OpReconcileDispose) != 1 {
		t.Fatalf("vanished container: %+v", rec)
	}
	if rec := r.record(exited); rec.Status != rtm.StatusExited || r.ops(exited, rtm.OpReconcileObservedExited) != 1 {
		t.Fatalf("exited container: %+v", rec)
	}
	if rec := r.record(manual); rec.Status != rtm.StatusRunning || r.ops(manual, rtm.OpReconcileAdopt) != 1 {
		t.Fatalf("hand-started container: %+v", rec)
	}
	if c, _ := r.inspect(manual); !c.Running() {
		t.Fatal("the adopted container was touched")
	}
	if _, err := r.store.Get(context.Background(), foreign); !errors.Is(err, rtm.ErrNotFound) {
		t.Fatalf("a container without the owner label was recorded: %v", err)
	}
	if c, _ := r.inspect(foreign); !c.Running() || c.Owned {
		t.Fatalf("a foreign container was touched: %+v", c)
	}
}

func TestGameReconciler_Reconcile_driftIsRecordedOnceUnderTheLease(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	g := r.running("crash")
	// Another process holds the game's lease (alive: its instance key beats) while the engine
	// dies: the exit is not recorded until the lease is free.
	holder := coord.New(r.rdb, "holder", 30*time.Second)
	hctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := holder.Heartbeat(hctx); err != nil {
		t.Fatal(err)
	}
	_, release, err := holder.Acquire(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("docker", "kill", "galaxy-game-"+g).CombinedOutput(); err != nil {
		t.Fatalf("docker kill: %v %s", err, out)
	}
	res, err := r.rec.Reconcile(ctx, g)
	if err != nil || res.RequeueAfter == 0 {
		t.Fatalf("Reconcile with the lease held elsewhere = %+v, %v; want a requeue", res, err)
	}
	if rec := r.record(g); rec.Status != rtm.StatusRunning || r.ops(g, rtm.OpReconcileObservedExited) != 0 {
		t.Fatalf("exit recorded while another process held the lease: %+v", rec)
	}
	release()
	// Two RTM processes see it at once: one records it, the other is refused the lease or finds
	// it recorded.
	second := r.reconciler("second")
	var wg sync.WaitGroup
	for _, rec := range []*controllers.GameReconciler{r.rec, second, r.rec, second} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				res, err := rec.Reconcile(ctx, g)
				if err != nil {
					t.Errorf("Reconcile: %v", err)
					return
				}
				if res.RequeueAfter == 0 {
					return
				}
				time.Sleep(res.RequeueAfter)
			}
		}()
	}
	wg.Wait()
	if rec := r.record(g); rec.Status != rtm.StatusExited || rec.ExitCode == nil || *rec.ExitCode != 137 {
		t.Fatalf("record after the kill: %+v", rec)
	}
	if n := r.ops(g, rtm.OpReconcileObservedExited); n != 1 {
		t.Fatalf("%d reconcile_observed_exited rows, want 1", n)
	}
	exits := 0
	if _, err := r.store.RelayOutbox(ctx, 1000, func(_ context.Context, es []rtm.OutboxEntry) (int, error) {
		for _, e := range es {
			for i := 0; i+1 < len(e.Fields); i += 2 {
				if e.Fields[i] == "event_type" && e.Fields[i+1] == string(rtm.EventContainerExited) {
					exits++
				}
			}
		}
		return len(es), nil
	}); err != nil {
		t.Fatal(err)
	}
	if exits != 1 {
		t.Fatalf("%d container_exited events, want 1", exits)
	}
}
