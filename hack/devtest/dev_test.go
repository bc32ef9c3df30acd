// Package devtest runs hack/dev.sh (make dev) against the real Docker daemon, PostgreSQL and
// Redis, and checks that its clean-up removes only the engine containers the session made.
package devtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// TestDevCleanupLeavesForeignContainers starts make dev's script on a network of its own, starts
// a game through it, starts a foreign labelled container on another network during the session,
// interrupts the script as Ctrl-C would, and checks that the game's container is gone while the
// foreign one still runs and is listed.
func TestDevCleanupLeavesForeignContainers(t *testing.T) {
	testenv.RequireDocker(t)
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	suffix := randomSuffix(t)
	devNet := "rtm-devtest-" + suffix
	foreignNet := "rtm-devtest-foreign-" + suffix
	gameID := "devtest-" + suffix
	foreignName := "rtm-devtest-foreign-" + suffix
	dir, err := os.MkdirTemp("", "rtm-devtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		docker(context.Background(), t, "rm", "-f", foreignName)
		if ids := docker(context.Background(), t, "ps", "-aq", "--filter", "label=com.galaxy.game_id="+gameID); ids != "" {
			docker(context.Background(), t, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
		docker(context.Background(), t, "network", "rm", devNet)
		docker(context.Background(), t, "network", "rm", foreignNet)
		_ = os.RemoveAll(dir)
	})
	if _, err := runDocker(ctx, "network", "create", foreignNet); err != nil {
		t.Fatal(err)
	}

	var out testenv.SyncBuffer
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "dev.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "RTM_DEV_DIR="+dir, "RTMANAGER_DOCKER_NETWORK="+devNet, "NO_COLOR=")
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}()

	env := waitForEnv(ctx, t, filepath.Join(dir, "env"), exited, &out)
	if addr := env["RTMANAGER_INTERNAL_HTTP_ADDR"]; !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Errorf("RTMANAGER_INTERNAL_HTTP_ADDR = %q, want loopback", addr)
	}
	if s := env["RTMCTL_SERVER"]; s != env["RTM_DEV_HTTP"] || s == "" {
		t.Errorf("RTMCTL_SERVER = %q, want rtmctl pointed at %q", s, env["RTM_DEV_HTTP"])
	}
	waitFor(ctx, t, "rtmanager ready", exited, &out, func() bool {
		resp, err := http.Get(env["RTM_DEV_HTTP"] + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// The database checks passwords: the printed DSN works, a wrong password does not.
	dsn := env["RTMANAGER_POSTGRES_PRIMARY_DSN"]
	if conn, err := pgx.Connect(ctx, dsn); err != nil {
		t.Errorf("the printed DSN does not connect: %v", err)
	} else {
		conn.Close(ctx)
	}
	wrong := strings.Replace(dsn, "rtmanagerservice:rtmanagerservice@", "rtmanagerservice:wrong@", 1)
	if conn, err := pgx.Connect(ctx, wrong); err == nil {
		conn.Close(ctx)
		t.Errorf("a wrong password connects to the dev database")
	}

	rdb := redis.NewClient(&redis.Options{Addr: env["RTMANAGER_REDIS_MASTER_ADDR"], Password: env["RTMANAGER_REDIS_PASSWORD"]})
	defer rdb.Close()
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "runtime:start_jobs", Values: map[string]any{
		"game_id": gameID, "image_ref": "galaxy/game:1.4.1", "request_id": "devtest-req-" + suffix,
	}}).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the game's container running", exited, &out, func() bool {
		return docker(ctx, t, "ps", "-q", "--filter", "label=com.galaxy.game_id="+gameID, "--filter", "status=running") != ""
	})

	// A foreign labelled container appears during the session, on another network.
	if _, err := runDocker(ctx, "run", "-d", "--name", foreignName, "--network", foreignNet,
		"--label", "com.galaxy.owner=rtmanager", "--label", "com.galaxy.game_id=foreign-"+suffix,
		"galaxy/game:1.4.1"); err != nil {
		t.Fatal(err)
	}

	// Ctrl-C: SIGINT to the foreground process group.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		stopped = true
	case <-time.After(2 * time.Minute):
		t.Fatalf("dev.sh did not stop within 2m after SIGINT; output:\n%s", out.String())
	}

	output := out.String()
	if got := docker(ctx, t, "inspect", "-f", "{{.State.Running}}", foreignName); got != "true" {
		t.Errorf("foreign container running = %q after make dev's clean-up, want true; output:\n%s", got, output)
	}
	if !strings.Contains(output, "left running:") || !strings.Contains(output, foreignName) {
		t.Errorf("output does not list the foreign container as left running:\n%s", output)
	}
	if ids := docker(ctx, t, "ps", "-aq", "--filter", "label=com.galaxy.game_id="+gameID); ids != "" {
		t.Errorf("the session's engine container %s is still there; output:\n%s", ids, output)
	}
	if strings.Contains(output, "\x1b") {
		t.Errorf("output to a non-terminal carries terminal escapes:\n%q", output)
	}
	if !strings.Contains(output, "first build takes") {
		t.Errorf("output does not say that the first build takes minutes:\n%s", output)
	}
}

func randomSuffix(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func runDocker(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// docker runs a docker command and returns its trimmed output, or "" when it fails.
func docker(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := runDocker(ctx, args...)
	if err != nil {
		return ""
	}
	return out
}

// waitFor polls cond every 200ms until it holds; it fails the test when dev.sh exits first or
// ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, exited <-chan error, out *testenv.SyncBuffer, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case err := <-exited:
			t.Fatalf("dev.sh exited (%v) before %s; output:\n%s", err, what, out.String())
		case <-ctx.Done():
			t.Fatalf("no %s before the deadline; output:\n%s", what, out.String())
		case <-tick.C:
		}
	}
}

// waitForEnv waits for dev.sh's environment file and returns its exported variables.
func waitForEnv(ctx context.Context, t *testing.T, path string, exited <-chan error, out *testenv.SyncBuffer) map[string]string {
	t.Helper()
	env := map[string]string{}
	waitFor(ctx, t, "environment file", exited, out, func() bool {
		data, err := exec.CommandContext(ctx, "bash", "-c", `source "$1" && env`, "bash", path).Output()
		if err != nil {
			return false
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok {
				env[k] = v
			}
		}
		return env["RTM_DEV_HTTP"] != "" && env["RTMANAGER_POSTGRES_PRIMARY_DSN"] != ""
	})
	return env
}
