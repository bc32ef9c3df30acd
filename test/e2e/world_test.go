//go:build integration

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

// The suite runs on either runtime RTM drives, chosen by RTM_E2E_RUNTIME: docker (the default:
// the Docker daemon of this machine) or kubernetes (a real control plane with kwok's nodes,
// test/k8senv). Every scenario asserts the same results, records and events on both; a world is
// what differs between them as a test sees it: where a game's engine is and what state it is in,
// and what an operator (or the infrastructure) does to it behind RTM's back.
const envRuntime = "RTM_E2E_RUNTIME"

const (
	runtimeDocker = "docker"
	runtimeKube   = "kubernetes"
)

// world is one test's view of the runtime its RTM drives.
type world interface {
	// byName returns the engine (container, Pod) of that name, nil when there is none.
	byName(name string) *engine
	// engineURL is http://<address>:<engine port> at which the test reaches the game's engine.
	engineURL(gameID string) string
	// kill kills the game's engine behind RTM's back (SIGKILL: exit 137, not an OOM).
	kill(gameID string)
	// exit ends the game's engine behind RTM's back and leaves it there (docker stop; on a
	// cluster, the engine exits 0).
	exit(gameID string)
	// remove removes the game's engine behind RTM's back (drift) and returns once it is gone.
	remove(gameID string)
	// handStart starts a labelled engine for gameID by hand, named name, the way the runbook's
	// operator does (RTM adopts it); it returns its id.
	handStart(name, gameID string) string
	// foreign starts an engine RTM does not own (labels without com.galaxy.owner=rtmanager, or
	// another owner), named name; it returns its id.
	foreign(name string, labels map[string]string) string
	// boots is the engine's boot counter in the game's state ("" before the first boot).
	boots(gameID string) string
	// stateDir is what the game's record names as its state (state_dir).
	stateDir(gameID string) string
	// stateExists reports whether the game's state (a directory, a claim) exists.
	stateExists(gameID string) bool
}

// engine is what a test reads of a game's engine on either runtime.
type engine struct {
	ID    string
	Name  string
	Image string // the image it runs, as RTM asked for it
	// State is Docker's word for it: "running", "exited", "created"; a Pod that is neither
	// running nor terminated is "pending".
	State    string
	ExitCode int
	OOM      bool
}

// running reports whether e is there and running.
func (e *engine) running() bool { return e != nil && e.State == "running" }

// suiteRuntime is the runtime this run drives (RTM_E2E_RUNTIME, docker when unset).
func suiteRuntime() string {
	if v := os.Getenv(envRuntime); v != "" {
		return v
	}
	return runtimeDocker
}

// onKube reports whether the suite runs on Kubernetes.
func onKube() bool { return suite.runtime == runtimeKube }

// dockerOnly skips a test that cannot exist on the Kubernetes runtime, saying why.
func dockerOnly(t *testing.T, why string) {
	t.Helper()
	if onKube() {
		t.Skipf("Docker only: %s", why)
	}
}

// kubeOnly skips a test of what only a cluster has.
func kubeOnly(t *testing.T) {
	t.Helper()
	if !onKube() {
		t.Skipf("Kubernetes only (%s=%s runs it)", envRuntime, runtimeKube)
	}
}

// ---- the rig's view, on either runtime ----

// Inspect returns the game's engine (galaxy-game-<game_id>), or nil when there is none.
func (r *rig) Inspect(gameID string) *engine {
	r.t.Helper()
	return r.W.byName(engineName(gameID))
}

// engineName is the name of a game's engine: galaxy-game-<game_id> (on a cluster in lower case,
// as DNS names are; the suite's game ids are DNS labels).
func engineName(gameID string) string {
	if onKube() {
		return "galaxy-game-" + strings.ToLower(gameID)
	}
	return "galaxy-game-" + gameID
}

// State is the engine's state ("running", "exited", …), or "" without an engine.
func (r *rig) State(gameID string) string {
	r.t.Helper()
	if e := r.Inspect(gameID); e != nil {
		return e.State
	}
	return ""
}

// ContainerID is the id of the game's engine (a container id, a Pod UID), or "".
func (r *rig) ContainerID(gameID string) string {
	r.t.Helper()
	if e := r.Inspect(gameID); e != nil {
		return e.ID
	}
	return ""
}

// EngineURL is http://<address>:<engine port>, how the test reaches the game's engine.
func (r *rig) EngineURL(gameID string) string {
	r.t.Helper()
	return r.W.engineURL(gameID)
}

// Boots reads the engine's boot counter from the game's state.
func (r *rig) Boots(gameID string) string { return r.W.boots(gameID) }

// ---- Docker ----

// dockerWorld is the Docker daemon of this machine, with the rig's network and state root.
type dockerWorld struct{ r *rig }

func (w dockerWorld) byName(name string) *engine {
	c := w.inspect(name)
	if c == nil {
		return nil
	}
	e := &engine{ID: c.ID, Name: strings.TrimPrefix(c.Name, "/")}
	if c.Config != nil {
		e.Image = c.Config.Image
	}
	if c.State != nil {
		e.State, e.ExitCode, e.OOM = string(c.State.Status), c.State.ExitCode, c.State.OOMKilled
	}
	return e
}

// inspect returns Docker's view of the container name (or id), nil when there is none.
func (w dockerWorld) inspect(name string) *container.InspectResponse {
	t := w.r.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := suite.docker.ContainerInspect(ctx, name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		t.Fatalf("docker inspect %s: %v", name, err)
	}
	return &c
}

func (w dockerWorld) engineURL(gameID string) string {
	r := w.r
	r.t.Helper()
	c := w.inspect(engineName(gameID))
	if c == nil || c.NetworkSettings == nil || c.NetworkSettings.Networks[r.Net] == nil {
		r.t.Fatalf("galaxy-game-%s is not on network %s", gameID, r.Net)
	}
	return fmt.Sprintf("http://%s:%d", c.NetworkSettings.Networks[r.Net].IPAddress, r.Config().EnginePort)
}

func (w dockerWorld) kill(gameID string) {
	w.r.t.Helper()
	if err := suite.docker.ContainerKill(context.Background(), engineName(gameID), "KILL"); err != nil {
		w.r.t.Fatalf("docker kill: %v", err)
	}
}

func (w dockerWorld) exit(gameID string) {
	w.r.t.Helper()
	zero := 0
	if err := suite.docker.ContainerStop(context.Background(), engineName(gameID), container.StopOptions{Timeout: &zero}); err != nil {
		w.r.t.Fatalf("docker stop: %v", err)
	}
}

func (w dockerWorld) remove(gameID string) {
	w.r.t.Helper()
	if err := suite.docker.ContainerRemove(context.Background(), engineName(gameID), container.RemoveOptions{Force: true}); err != nil {
		w.r.t.Fatalf("docker rm -f: %v", err)
	}
}

func (w dockerWorld) handStart(name, gameID string) string {
	w.r.t.Helper()
	return w.r.handRun(name, w.r.Net, gameID)
}

func (w dockerWorld) foreign(name string, labels map[string]string) string {
	w.r.t.Helper()
	return w.r.RunContainer(name, img(v141), labels).GetContainerID()
}

func (w dockerWorld) boots(gameID string) string {
	b, err := os.ReadFile(filepath.Join(w.r.StateRoot, gameID, "boots"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (w dockerWorld) stateDir(gameID string) string { return filepath.Join(w.r.StateRoot, gameID) }

func (w dockerWorld) stateExists(gameID string) bool {
	st, err := os.Stat(w.stateDir(gameID))
	return err == nil && st.IsDir()
}
