//go:build integration

package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// The runbook's Patch Upgrade: the container is replaced by one of the new image, the endpoint
// is stable, the state survives on the bind mount, one patch row names both images, and the
// inner start emits container_started. Cross-minor and non-semver targets are refused.
func TestPatch_UpgradeReplacesContainerAndKeepsState(t *testing.T) {
	r, g := runningGame(t, "patch", img(v141))
	r.WaitBoots(g, 1, "first boot")
	oldID := r.ContainerID(g)
	endpoint := fmt.Sprintf("http://galaxy-game-%s:%d", g, r.cfg.EnginePort)

	code, b := r.Call(http.MethodPost, gamePath(g, "/patch"), "admin", map[string]string{"image_ref": img(v150)})
	expect(t, code == http.StatusUnprocessableEntity && errorCode(b) == "semver_patch_only", "cross-minor patch: %d %s", code, b)
	code, b = r.Call(http.MethodPost, gamePath(g, "/patch"), "admin", map[string]string{"image_ref": engineRepo + ":latest"})
	expect(t, code == http.StatusUnprocessableEntity && errorCode(b) == "image_ref_not_semver", "non-semver patch: %d %s", code, b)
	code, b = r.Call(http.MethodPost, gamePath(g, "/patch"), "lobby", map[string]string{"image_ref": img(v142)})
	expect(t, code == http.StatusForbidden && errorCode(b) == "forbidden", "patch as lobby: %d %s", code, b)
	expect(t, r.ContainerID(g) == oldID, "a refused patch touched the container")

	rec := r.Admin(http.StatusOK, http.MethodPost, gamePath(g, "/patch"), map[string]string{"image_ref": img(v142)})
	expect(t, rec["current_image_ref"] == img(v142) && rec["status"] == "running" && rec["engine_endpoint"] == endpoint,
		"patch answered %v", rec)
	c := r.Inspect(g)
	expect(t, c.running() && c.ID != oldID && c.Image == img(v142), "after the patch: %+v (was %s)", c, oldID)
	expect(t, rec["current_container_id"] == c.ID, "record names container %v, Docker runs %s", rec["current_container_id"], c.ID)
	r.WaitBoots(g, 2, "the patched engine booted from the kept state")
	expect(t, r.Ops(g, "patch", "op_source = 'admin_rest' AND outcome = 'succeeded' AND old_image_ref = $1 AND new_image_ref = $2",
		img(v141), img(v142)) == 1, "operation log %q", r.OpKinds(g))
	expect(t, r.Ops(g, "patch", "") == 1, "more than one patch row: %q", r.OpKinds(g))
	started := r.HealthEvents(g, "container_started")
	expect(t, len(started) > 0 && started[len(started)-1].F["container_id"] == c.ID, "no container_started for the new container: %v", started)
	dbrec := r.Record(g)
	expect(t, dbrec.CurrentImage == img(v142) && dbrec.Endpoint == endpoint, "record %+v", dbrec)

	// The runbook's post-patch verification.
	code, b = httpGet(r.EngineURL(g) + "/healthz")
	expect(t, code == http.StatusOK && strings.Contains(string(b), `"version":"`+v142+`"`), "engine /healthz: %d %s", code, b)
	code, b = r.Call(http.MethodGet, gamePath(g), "", nil)
	expect(t, code == http.StatusOK, "GET runtime: %d %s", code, b)
	expect(t, decodeJSON(t, b)["current_image_ref"] == img(v142), "GET runtime: %s", b)
}

// A patch to a release that never passes its probe is rolled back: 409 patch_rolled_back and
// the previous image runs again on the same state.
func TestPatch_RollbackWhenNewReleaseFailsProbe(t *testing.T) {
	r, g := runningGame(t, "rollback", img(v142), "RTMANAGER_PATCH_VERIFY_TIMEOUT=5s")
	oldID := r.ContainerID(g)

	code, b := r.Call(http.MethodPost, gamePath(g, "/patch"), "admin", map[string]string{"image_ref": img(v143)})
	expect(t, code == http.StatusConflict && errorCode(b) == "patch_rolled_back", "patch to the bad release: %d %s", code, b)

	c := r.Inspect(g)
	expect(t, c.running() && c.Image == img(v142), "not rolled back to %s: %+v", img(v142), c)
	rec := r.Record(g)
	expect(t, rec.Status == "running" && rec.CurrentImage == img(v142) && rec.ContainerID == c.ID, "record after the rollback %+v", rec)
	// The answer comes once the old image's container runs again; its engine may take a moment
	// more to listen on a loaded host.
	testenv.Eventually(t, 10*time.Second, "the rolled-back engine answers", func() (bool, string) {
		code, b = httpGet(r.EngineURL(g) + "/healthz")
		return code == http.StatusOK && strings.Contains(string(b), `"version":"`+v142+`"`), fmt.Sprintf("%d %s", code, b)
	})
	expect(t, r.Ops(g, "patch", "outcome = 'failed' AND new_image_ref = $1", img(v143)) == 1, "operation log %q", r.OpKinds(g))
	t.Logf("container %s before, %s after the rollback", short(oldID), short(c.ID))
	// It stays: nothing retries the bad release behind the operator's back.
	time.Sleep(2 * time.Second)
	expect(t, r.ContainerID(g) == c.ID && r.State(g) == "running", "the rolled-back container did not stay")
}

// Restart gives the game a fresh container of its current image (the state dir stays), also
// after the container was disposed.
func TestRestart_FreshContainerSameImageAlsoAfterDispose(t *testing.T) {
	r, g := runningGame(t, "restart", img(v141))
	oldID := r.ContainerID(g)

	rec := r.Admin(http.StatusOK, http.MethodPost, gamePath(g, "/restart"), map[string]any{})
	c := r.Inspect(g)
	expect(t, c.running() && c.ID != oldID && c.Image == img(v141), "after restart: same container or not running: %+v", c)
	expect(t, rec["status"] == "running" && rec["current_container_id"] == c.ID && rec["current_image_ref"] == img(v141), "restart answered %v", rec)
	r.WaitBoots(g, 2, "second boot")
	expect(t, r.Ops(g, "restart", "op_source = 'admin_rest' AND outcome = 'succeeded'") == 1, "operation log %q", r.OpKinds(g))

	// The container vanishes (dispose), then the operator restarts the game.
	r.W.remove(g)
	r.WaitStatus(g, "removed", 10*time.Second)
	rec = r.Admin(http.StatusOK, http.MethodPost, gamePath(g, "/restart"), map[string]any{})
	expect(t, rec["status"] == "running", "restart after a dispose answered %v", rec)
	expect(t, r.State(g) == "running", "no container after restarting a disposed game: %q", r.State(g))
	r.WaitBoots(g, 3, "third boot")

	code, b := r.Call(http.MethodPost, gamePath(r.game("nobody"), "/restart"), "gm", map[string]any{})
	expect(t, code == http.StatusNotFound && errorCode(b) == "runtime_not_found", "restart of an unknown game: %d %s", code, b)
}

// The runbook's Manual Cleanup: DELETE refuses a running container; stop, then DELETE removes
// the container, the record becomes removed, the state dir stays, and the operation log has
// cleanup_container from admin_rest.
func TestCleanup_StopThenDeleteKeepsStateDir(t *testing.T) {
	r, g := runningGame(t, "cleanup", img(v141))
	// The engine records its boot a moment after its container runs; the check below is that
	// cleanup keeps what the engine wrote, so it must have written it.
	r.WaitBoots(g, 1, "first boot")

	code, b := r.Call(http.MethodDelete, gamePath(g, "/container"), "admin", nil)
	expect(t, code == http.StatusConflict && errorCode(b) == "runtime_running", "cleanup of a running container: %d %s", code, b)
	expect(t, r.State(g) == "running", "a refused cleanup touched the container")

	rec := r.Admin(http.StatusOK, http.MethodPost, gamePath(g, "/stop"), map[string]string{"reason": "admin_request"})
	expect(t, rec["status"] == "stopped", "stop answered %v", rec)
	expect(t, r.State(g) == "exited", "container after the REST stop: %q", r.State(g))
	rec = r.Admin(http.StatusOK, http.MethodDelete, gamePath(g, "/container"), nil)
	expect(t, rec["status"] == "removed", "cleanup answered %v", rec)

	expect(t, r.Inspect(g) == nil, "the container is still there after cleanup")
	expect(t, r.W.stateExists(g) && r.Boots(g) == "1", "cleanup deleted the state (%s) or its contents: boots %q",
		r.W.stateDir(g), r.Boots(g))
	expect(t, r.Record(g).Status == "removed", "record %+v", r.Record(g))
	expect(t, r.Ops(g, "cleanup_container", "op_source = 'admin_rest' AND outcome = 'succeeded'") == 1, "operation log %q", r.OpKinds(g))
	expect(t, r.Ops(g, "stop", "op_source = 'admin_rest'") == 1, "operation log %q", r.OpKinds(g))

	code, b = r.Call(http.MethodGet, gamePath(g, "/operations"), "", nil)
	expect(t, code == http.StatusOK && strings.Contains(string(b), "cleanup_container"), "operations: %d %s", code, b)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
