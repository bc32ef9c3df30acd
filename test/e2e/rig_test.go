//go:build integration

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"

	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// rig is one test's world: its own PostgreSQL database, its own redis-server, the runtime's
// place for its games (on Docker its own network and state root; on Kubernetes its own namespace
// with stand-in engines), and one RTM (a host process, or a container in the production-shape
// test) at a time. Everything is torn down when the test ends, RTM first, then the games'
// engines, then the network or the namespace's Pods.
type rig struct {
	t *testing.T
	// prefix starts every game id of the test: the run's random prefix and the test's tag.
	prefix string

	// W is the runtime as the test sees it (world_test.go).
	W world
	// kube is W on Kubernetes, nil on Docker.
	kube *kubeWorld

	Net       string // Docker: the network RTM is configured with
	StateRoot string // Docker: the games' state root
	NS        string // Kubernetes: the namespace RTM drives
	DSN       string // the service role's DSN, search_path=rtmanager form
	LibpqDSN  string // the same in libpq form (options=-csearch_path%3Drtmanager), psql's form
	Redis     *testenv.RedisServer
	RDB       *redis.Client
	PG        *pgxpool.Pool // as the service role, which owns the tables

	// Env is RTM's environment; a test may change it before Start.
	Env map[string]string

	mu      sync.Mutex
	proc    *testenv.Process
	API     string // http://127.0.0.1:port of the running RTM's internal listener
	logPath string
	logMark int64 // where the current process's output starts in the log file
	cfg     config.Config
}

// rigOptions change how newRig builds the world.
type rigOptions struct {
	redisBind []string // where the redis-server listens; 127.0.0.1 by default
	serial    bool     // the test runs alone, not beside the others
}

// newRig prepares a test's world without starting RTM. tag names the test in game ids and must
// be short. Every test has a world of its own, so newRig runs the test beside the others
// (t.Parallel), unless it is serial.
func newRig(t *testing.T, tag string, opts ...func(*rigOptions)) *rig {
	t.Helper()
	o := rigOptions{redisBind: []string{"127.0.0.1"}}
	for _, f := range opts {
		f(&o)
	}
	if !o.serial {
		t.Parallel()
	}
	requireSuite(t)
	ctx := context.Background()
	r := &rig{t: t, prefix: suite.run + "-" + tag}

	if onKube() {
		// Registered first, so it runs last: the namespace's Pods go once RTM and the stand-in
		// engines are gone.
		r.NS = suite.k8s.Namespace(t)
	} else {
		// Registered first, so it runs last: the network goes once its containers are gone.
		nw, err := tcnetwork.New(ctx, tcnetwork.WithLabels(map[string]string{"rtm.e2e.test": t.Name()}))
		if err != nil {
			t.Fatalf("creating the game network: %v", err)
		}
		r.Net = nw.Name
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			removeContainers(ctx, t, filters.NewArgs(filters.Arg("network", r.Net)))
			// By name: a test may have removed and created the network again.
			if err := suite.docker.NetworkRemove(ctx, r.Net); err != nil && !isNotFound(err) {
				t.Logf("removing network %s: %v", r.Net, err)
			}
		})
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			removeContainers(ctx, t, filters.NewArgs(filters.Arg("name", "galaxy-game-"+r.prefix)))
		})
		r.StateRoot = stateRoot(t)
	}

	r.DSN = suite.env.NewDatabase(t)
	r.LibpqDSN = strings.Replace(r.DSN, "search_path=rtmanager", "options=-csearch_path%3Drtmanager", 1)
	pool, err := pgxpool.New(ctx, r.DSN)
	if err != nil {
		t.Fatalf("pgx pool: %v", err)
	}
	t.Cleanup(pool.Close)
	r.PG = pool
	r.Redis = testenv.StartRedisServer(t, o.redisBind...)
	r.RDB = r.Redis.Client()

	r.Env = testenv.RTMTestEnv(r.DSN, r.Redis, engineRepo+","+unreachableRepo)
	maps.Copy(r.Env, map[string]string{
		"RTMANAGER_ENGINE_STOP_TIMEOUT":  "5s",
		"RTMANAGER_PATCH_VERIFY_TIMEOUT": "6s",
		"RTMANAGER_ENGINE_MEMORY_LIMIT":  "256m",
	})
	if onKube() {
		// The Docker settings must be unset (RTM refuses them with exit 2 on Kubernetes). RTM
		// runs outside the cluster but reaches the Pod IPs (loopback here), so it probes them
		// as on Docker.
		maps.Copy(r.Env, map[string]string{
			"RTMANAGER_RUNTIME":            "kubernetes",
			"KUBECONFIG":                   suite.k8s.Kubeconfig(),
			"RTMANAGER_KUBE_NAMESPACE":     r.NS,
			"RTMANAGER_PROBE_TARGET":       "container_ip",
			"RTMANAGER_KUBE_START_TIMEOUT": "30s",
		})
		r.kube = newKubeWorld(t, r.NS, r.Config().EnginePort)
		r.W = r.kube
	} else {
		r.Env["RTMANAGER_DOCKER_NETWORK"] = r.Net
		r.Env["RTMANAGER_GAME_STATE_ROOT"] = r.StateRoot
		r.W = dockerWorld{r}
	}
	r.logPath = filepath.Join(t.TempDir(), "rtmanager.log")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("rtmanager log (last 80 lines):\n%s", testenv.Tail(r.logPath, 80))
		}
	})
	return r
}

// runningGame prepares a rig tagged tag, starts RTM with env ("NAME=value") laid over the rig's
// environment and has it start game "a" of image; it returns the rig and the game id.
func runningGame(t *testing.T, tag, image string, env ...string) (*rig, string) {
	t.Helper()
	r := newRig(t, tag)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		r.Env[k] = v
	}
	r.Start()
	g := r.game("a")
	r.StartGame(g, image)
	return r, g
}

// withRedisBind makes the rig's redis-server listen on the given addresses.
func withRedisBind(bind ...string) func(*rigOptions) {
	return func(o *rigOptions) { o.redisBind = bind }
}

// serial runs the test alone (before the parallel ones resume): for what affects every test of
// the run, such as a lost node.
func serial(o *rigOptions) { o.serial = true }

// stateRoot returns a fresh state root that every user may traverse (the engine may run as
// another user, and the daemon resolves the bind mount's source).
func stateRoot(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("chmod %s: %v", d, err)
		}
	}
	return dir
}

// game returns a game id of this test: the rig's prefix and suffix.
func (r *rig) game(suffix string) string { return r.prefix + "-" + suffix }

// Config returns the rig's environment read by the product's own config package: the test
// fails at once on a setting RTM would refuse, and reads names and defaults from one place.
func (r *rig) Config() config.Config {
	r.t.Helper()
	cfg, err := config.Load(func(k string) string { return r.Env[k] })
	if err != nil {
		r.t.Fatalf("the test's RTM environment is invalid: %v", err)
	}
	return cfg
}

// Start runs the rtmanager binary with the rig's environment and waits until it is ready the
// way the runbook's readiness check says: the seven `worker started` lines are logged (so the
// synchronous boot pass is over: the listener, and with it /readyz, opens before that pass) and
// /readyz answers 200. RTM's output is appended to the rig's log file.
func (r *rig) Start() {
	r.t.Helper()
	r.cfg = r.Config()
	p := r.spawn()
	api, err := p.WaitReady(r.currentLog, len(backgroundWorkers), 45*time.Second)
	if err != nil {
		r.t.Fatalf("%v:\n%s", err, testenv.Tail(r.logPath, 30))
	}
	r.API = api
}

// spawn starts the process without waiting for it to be ready.
func (r *rig) spawn() *testenv.Process {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		r.t.Fatal("rtmanager is already running")
	}
	r.logMark = 0
	if fi, err := os.Stat(r.logPath); err == nil {
		r.logMark = fi.Size()
	}
	p, err := testenv.StartProcess(suite.bin, testenv.RTMEnviron(r.Env), r.logPath)
	if err != nil {
		r.t.Fatal(err)
	}
	r.proc = p
	r.API = ""
	r.t.Cleanup(p.Kill)
	return p
}

// Stop sends SIGTERM and waits for the process to exit; it returns the exit code and how long
// the shutdown took.
func (r *rig) Stop() (int, time.Duration) {
	r.t.Helper()
	r.mu.Lock()
	p := r.proc
	r.proc = nil
	r.mu.Unlock()
	if p == nil {
		r.t.Fatal("rtmanager is not running")
	}
	t0 := time.Now()
	if !p.Terminate(30 * time.Second) {
		r.t.Fatalf("rtmanager did not exit within 30s of SIGTERM")
	}
	return p.Code(), time.Since(t0)
}

// StopClean stops RTM as Stop does and fails the test unless it exited 0; it returns how long
// the exit took.
func (r *rig) StopClean() time.Duration {
	r.t.Helper()
	code, took := r.Stop()
	expect(r.t, code == 0, "SIGTERM: exit code %d, want 0", code)
	return took
}

// currentLog is the output of the current (or last) process.
func (r *rig) currentLog() string {
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		return ""
	}
	if r.logMark > int64(len(b)) {
		return ""
	}
	return string(b[r.logMark:])
}

// logLine is one structured line of RTM's JSON log.
type logLine map[string]any

func (l logLine) str(k string) string {
	s, _ := l[k].(string)
	return s
}

// LogLines parses the current process's JSON log lines (other output is skipped).
func (r *rig) LogLines() []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(r.currentLog()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// ---- HTTP ----

var httpClient = &http.Client{Timeout: 90 * time.Second}

func httpGet(u string) (int, []byte) {
	resp, err := httpClient.Get(u)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// Call sends a REST request to /api/v1/internal<path> as caller (none when empty), with body
// marshalled to JSON when it is not a string. It returns the status and the body.
func (r *rig) Call(method, path, caller string, body any) (int, []byte) {
	r.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			r.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, r.API+"/api/v1/internal"+path, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if caller != "" {
		req.Header.Set("X-Galaxy-Caller", caller)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// Admin sends a REST mutation as the admin caller and fails the test unless the status is want.
// It returns the decoded JSON body.
func (r *rig) Admin(want int, method, path string, body any) map[string]any {
	r.t.Helper()
	code, b := r.Call(method, path, "admin", body)
	if code != want {
		r.t.Fatalf("%s %s: HTTP %d, want %d: %s", method, path, code, want, b)
	}
	return decodeJSON(r.t, b)
}

func decodeJSON(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object: %v: %s", err, b)
	}
	return m
}

// apiError is the error of the contract's error envelope.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// errorOf reads the error envelope of a REST answer; zero when there is none.
func errorOf(b []byte) apiError {
	var env struct {
		Error apiError `json:"error"`
	}
	_ = json.Unmarshal(b, &env)
	return env.Error
}

// errorCode is error.code of the contract's error envelope, or "".
func errorCode(b []byte) string { return errorOf(b).Code }

func gamePath(gameID string, rest ...string) string {
	return "/runtimes/" + url.PathEscape(gameID) + strings.Join(rest, "")
}

// ---- waiting ----

// ---- Docker ----

func isNotFound(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "No such"))
}

// removeContainers force-removes every container matching f.
func removeContainers(ctx context.Context, t *testing.T, f filters.Args) {
	if _, err := testenv.RemoveContainers(ctx, suite.docker, f); err != nil {
		t.Logf("removing containers: %v", err)
	}
}

// Engine calls one of the stand-in engine's control endpoints (/control/exit?code=3, …). A start
// is answered once the engine's container runs, and on a loaded host its engine listens a moment
// later: a request that reached no engine (no HTTP status) is sent again for up to 10 s; one the
// engine answered is never repeated.
func (r *rig) Engine(gameID, path string) {
	r.t.Helper()
	var (
		code int
		b    []byte
	)
	testenv.Eventually(r.t, 10*time.Second, "engine "+gameID+path+" reached", func() (bool, string) {
		code, b = httpGet(r.EngineURL(gameID) + path)
		return code != 0, string(b)
	})
	if code != http.StatusOK {
		r.t.Fatalf("engine %s%s: %d %s", gameID, path, code, b)
	}
}

// RunContainer starts a container the way an operator would by hand (docker run), managed by
// testcontainers-go and terminated when the test ends.
func (r *rig) RunContainer(name, image string, labels map[string]string, customize ...testcontainers.ContainerCustomizer) testcontainers.Container {
	r.t.Helper()
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithName(name),
		testcontainers.WithLabels(labels),
		tcnetwork.WithNetworkName([]string{name}, r.Net),
		testcontainers.WithLogger(tclog.TestLogger(r.t)),
	}
	opts = append(opts, customize...)
	c, err := testcontainers.Run(context.Background(), image, opts...)
	testcontainers.CleanupContainer(r.t, c)
	if err != nil {
		r.t.Fatalf("running %s: %v", name, err)
	}
	return c
}
