//go:build integration

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// Lobby's path: a start job brings up galaxy-game-<id> as CONTRACT §3 describes it and answers
// with exactly one result; repeated and conflicting starts, malformed jobs, and a stop job behave
// as CONTRACT §5 says.
func TestJobs_StartAndStopDriveContainersWithOneResultEach(t *testing.T) {
	r := newRig(t, "jobs")
	r.Start()
	g := r.game("a")

	res := r.StartGame(g, img(v141))
	cfg := r.cfg
	endpoint := fmt.Sprintf("http://galaxy-game-%s:%d", g, cfg.EnginePort)
	expect(t, res.F["job"] == "start" && res.F["game_id"] == g && res.F["engine_endpoint"] == endpoint &&
		res.F["image_ref"] == img(v141) && res.F["container_id"] != "" && res.F["finished_at"] != "",
		"start result fields: %v", res)
	if _, err := time.Parse(time.RFC3339, res.F["finished_at"]); err != nil {
		t.Fatalf("finished_at %q is not RFC 3339: %v", res.F["finished_at"], err)
	}

	c := r.Inspect(g)
	expect(t, c.running(), "galaxy-game-%s is not running: %+v", g, c)
	expect(t, c.ID == res.F["container_id"], "result container_id %s, engine %s", res.F["container_id"], c.ID)
	if onKube() {
		r.kube.checkPod(t, g, cfg)
	} else {
		checkContainer(t, r, g, cfg)
	}
	dir := r.W.stateDir(g)
	r.WaitBoots(g, 1, "the engine's boot counter in its state dir")

	rec := r.Record(g)
	expect(t, rec.Status == "running" && rec.Desired == "running" && rec.CurrentImage == img(v141) &&
		rec.ContainerID == c.ID && rec.Endpoint == endpoint && rec.StateDir == dir, "record %+v", rec)
	expect(t, r.Ops(g, "start", "op_source = 'start_jobs' AND outcome = 'succeeded' AND request_id = $1", "req-"+g+"-start") == 1,
		"operation log %q", r.OpKinds(g))
	r.WaitHealth(g, "container_started", 5*time.Second)

	// The same request again, and a new request for the same image: one result each, no new
	// container, no restart.
	r.StartJob(g, img(v141), "req-"+g+"-start")
	r.StartJob(g, img(v141), "req-"+g+"-again")
	r.WaitSucceeded("req-" + g + "-again")
	// Another image for the running game: conflict.
	r.StartJob(g, img(v142), "req-"+g+"-other")
	other := r.WaitResult("req-"+g+"-other", 20*time.Second)
	expect(t, other.F["outcome"] == "failed" && other.F["error_code"] == "conflict", "start with another image: %v", other)
	time.Sleep(time.Second)
	expect(t, len(r.Results("req-"+g+"-start")) == 1, "the repeated request has %d results", len(r.Results("req-"+g+"-start")))
	expect(t, r.ContainerID(g) == c.ID && r.Boots(g) == "1", "a repeated start replaced or restarted the container")

	// Malformed jobs: invalid_job, game_id as given, nothing created, no intent.
	r.xadd(r.cfg.StartJobsStream, "game_id", "../../etc", "image_ref", img(v141), "request_id", "req-bad-id")
	r.xadd(r.cfg.StartJobsStream, "game_id", r.game("noimage"), "request_id", "req-no-image")
	r.xadd(r.cfg.StartJobsStream, "game_id", r.game("big"), "image_ref", img(v141)+strings.Repeat("x", 2000), "request_id", "req-big")
	for req, gid := range map[string]string{"req-bad-id": "../../etc", "req-no-image": r.game("noimage"), "req-big": r.game("big")} {
		e := r.WaitResult(req, 20*time.Second)
		expect(t, e.F["outcome"] == "failed" && e.F["error_code"] == "invalid_job" && e.F["game_id"] == gid,
			"malformed job %s: %v", req, e)
	}
	if !onKube() { // on a cluster a game's state is a claim, never a path
		_, err := os.Stat(filepath.Join(filepath.Dir(r.StateRoot), "etc"))
		expect(t, os.IsNotExist(err), "a path-traversing game id created a directory")
	}
	expect(t, len(r.Intents("")) == 0, "malformed jobs produced notification intents: %v", r.Intents(""))

	// A stop job for an unknown game still gets its one result.
	r.StopJob(r.game("nobody"), "req-nobody-stop", "admin_request")
	e := r.WaitResult("req-nobody-stop", 20*time.Second)
	expect(t, e.F["job"] == "stop" && e.F["outcome"] == "failed" && e.F["error_code"] == "runtime_not_found", "stop of an unknown game: %v", e)

	// Stop.
	r.StopJob(g, "req-"+g+"-stop", "admin_request")
	stop := r.WaitSucceeded("req-" + g + "-stop")
	expect(t, stop.F["job"] == "stop" && stop.F["game_id"] == g, "stop result %v", stop)
	expect(t, r.State(g) == "exited", "container after stop: %q", r.State(g))
	rec = r.Record(g)
	expect(t, rec.Status == "stopped" && rec.Desired == "stopped", "record after stop %+v", rec)
	expect(t, r.Ops(g, "stop", "op_source = 'stop_jobs' AND outcome = 'succeeded'") == 1, "operation log %q", r.OpKinds(g))
	// RTM stopped it on purpose: that is no incident.
	time.Sleep(time.Second)
	expect(t, len(r.HealthEvents(g, "container_exited")) == 0, "a requested stop was reported as container_exited: %v", r.HealthEvents(g, ""))

	// A stopped game starts again from its existing state.
	r.StartJob(g, img(v141), "req-"+g+"-restart")
	again := r.WaitSucceeded("req-" + g + "-restart")
	expect(t, r.State(g) == "running", "container after a second start: %q", r.State(g))
	if onKube() {
		// Kubernetes: a terminated Pod cannot run again; a start after a stop makes a new Pod.
		expect(t, again.F["container_id"] == r.ContainerID(g) && again.F["container_id"] != c.ID,
			"start after a stop: result %v, Pod %s, want a new Pod (was %s)", again, r.ContainerID(g), c.ID)
	} else {
		expect(t, again.F["container_id"] == c.ID && r.ContainerID(g) == c.ID,
			"start after a stop: result %v, container %s, want the same container %s", again, r.ContainerID(g), c.ID)
	}
	r.WaitBoots(g, 2, "second boot from the same state dir")
}

// The three start failures each answer the job with their error code and publish exactly one
// notification intent named after it; a failed start leaves no container behind.
func TestStartFailure_EachPublishesItsIntent(t *testing.T) {
	r := newRig(t, "fail")
	type failure struct {
		name, game, image, code string
		foreign                 string // the id of the engine of another owner holding the game's name
	}
	cases := []failure{
		{name: "ImagePullFailed", game: r.game("pull"), image: unreachableRepo + ":9.9.9", code: "image_pull_failed"},
		{name: "StartConfigInvalid/OutsideAllowList", game: r.game("evil"), image: "busybox:1.36.0", code: "start_config_invalid"},
		{name: "StartConfigInvalid/TagNotSemver", game: r.game("latest"), image: engineRepo + ":latest", code: "start_config_invalid"},
	}
	if onKube() {
		// Kubernetes: kwok starts any container, so the Pod that cannot start is one whose name is
		// taken by a Pod RTM does not own; a game's state is a claim, never a path that can be a file.
		taken := r.game("taken")
		cases = append(cases, failure{name: "ContainerStartFailed/NameTaken", game: taken, image: img(v141), code: "container_start_failed",
			foreign: r.W.foreign(engineName(taken), map[string]string{"app": "someone-else"})})
	} else {
		// A state dir path that is a file: the game's start config cannot be used.
		fileGame := r.game("file")
		if err := os.WriteFile(filepath.Join(r.StateRoot, fileGame), []byte("not a dir"), 0o644); err != nil {
			t.Fatal(err)
		}
		cases = append(cases,
			failure{name: "ContainerStartFailed", game: r.game("broken"), image: img(vBroken), code: "container_start_failed"},
			failure{name: "StartConfigInvalid/StateDirIsAFile", game: fileGame, image: img(v141), code: "start_config_invalid"})
	}
	r.Start()

	for _, tc := range cases {
		r.StartJob(tc.game, tc.image, "req-"+tc.game)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := r.WaitResult("req-"+tc.game, 60*time.Second)
			if res.F["outcome"] != "failed" || res.F["error_code"] != tc.code || res.F["error_message"] == "" {
				t.Fatalf("result %v, want failed with %s and a message", res, tc.code)
			}
			var intents []entry
			testenv.Eventually(t, 10*time.Second, "notification intent", func() (bool, string) {
				intents = r.Intents(tc.game)
				return len(intents) > 0, "none"
			})
			in := intents[0]
			if len(intents) != 1 || in.F["intent"] != "runtime."+tc.code || in.F["error_code"] != tc.code ||
				in.F["image_ref"] != tc.image || in.F["message"] == "" {
				t.Fatalf("intents %v, want one runtime.%s naming %s", intents, tc.code, tc.image)
			}
			if _, err := time.Parse(time.RFC3339, in.F["created_at"]); err != nil {
				t.Fatalf("created_at %q: %v", in.F["created_at"], err)
			}
			if c := r.Inspect(tc.game); c.running() && c.ID != tc.foreign {
				t.Fatalf("a failed start left a running container: %+v", c)
			}
			if rec := r.Record(tc.game); rec.Exists && rec.Status == "running" {
				t.Fatalf("record %+v after a failed start", rec)
			}
		})
	}
	// "Published once per failing start request": a second look finds no more.
	time.Sleep(time.Second)
	n := len(r.Intents(""))
	expect(t, n == len(cases), "%d intents in all, want %d", n, len(cases))
}

// checkContainer checks the game's container as CONTRACT §3 describes it: labels, network alias,
// restart policy, dropped capabilities, no-new-privileges, limits, environment, and its state
// dir's mode.
func checkContainer(t *testing.T, r *rig, g string, cfg config.Config) {
	t.Helper()
	c := dockerWorld{r}.inspect(engineName(g))
	labels := c.Config.Labels
	expect(t, labels["com.galaxy.owner"] == "rtmanager" && labels["com.galaxy.game_id"] == g &&
		labels["com.galaxy.image_ref"] == img(v141), "labels %v", labels)
	nw := c.NetworkSettings.Networks[r.Net]
	expect(t, nw != nil && slices.Contains(nw.Aliases, "galaxy-game-"+g), "not on %s with alias galaxy-game-%s: %+v", r.Net, g, nw)
	expect(t, c.HostConfig.RestartPolicy.Name == "no" || c.HostConfig.RestartPolicy.Name == "", "restart policy %q", c.HostConfig.RestartPolicy.Name)
	expect(t, slices.Contains(c.HostConfig.CapDrop, "ALL"), "capabilities not dropped: %v", c.HostConfig.CapDrop)
	expect(t, slices.ContainsFunc(c.HostConfig.SecurityOpt, func(s string) bool { return strings.HasPrefix(s, "no-new-privileges") }),
		"no no-new-privileges: %v", c.HostConfig.SecurityOpt)
	expect(t, c.HostConfig.Memory == cfg.EngineMemoryBytes && c.HostConfig.NanoCPUs == cfg.EngineNanoCPUs &&
		c.HostConfig.PidsLimit != nil && *c.HostConfig.PidsLimit == cfg.EnginePidsLimit,
		"limits memory %d cpus %d pids %v", c.HostConfig.Memory, c.HostConfig.NanoCPUs, c.HostConfig.PidsLimit)
	expect(t, slices.Contains(c.Config.Env, "GALAXY_GAME_ID="+g) && slices.Contains(c.Config.Env, "GALAXY_STATE_DIR="+cfg.EngineStateMount),
		"engine environment %v", c.Config.Env)
	dir := filepath.Join(r.StateRoot, g)
	st, err := os.Stat(dir)
	expect(t, err == nil && st.Mode().Perm() == 0o750, "state dir %s: %v mode %v, want 0750", dir, err, st)
}
