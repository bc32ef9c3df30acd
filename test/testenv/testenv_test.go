package testenv_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	var err error
	env, err = testenv.Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	env.Stop()
	os.Exit(code)
}

func TestEnv_NewDatabase_connectsAsServiceRoleInSchema(t *testing.T) {
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if !strings.HasPrefix(dsn, "postgres://rtmanagerservice:rtmanagerservice@") || !strings.Contains(dsn, "search_path=rtmanager") {
		t.Fatalf("unexpected DSN %q", dsn)
	}
	conn := testenv.MustConn(t, dsn)

	var user, searchPath string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_setting('search_path')").Scan(&user, &searchPath); err != nil {
		t.Fatal(err)
	}
	if user != "rtmanagerservice" || searchPath != "rtmanager" {
		t.Fatalf("got user %q search_path %q, want rtmanagerservice and rtmanager", user, searchPath)
	}
	// Unqualified objects land in schema rtmanager, which the role owns (migrations need that).
	if _, err := conn.Exec(ctx, "CREATE TABLE probe (id int PRIMARY KEY)"); err != nil {
		t.Fatalf("create table as service role: %v", err)
	}
	var schema string
	if err := conn.QueryRow(ctx, "SELECT table_schema FROM information_schema.tables WHERE table_name = 'probe'").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if schema != "rtmanager" {
		t.Fatalf("table landed in schema %q, want rtmanager", schema)
	}
}

func TestEnv_NewDatabase_isolated(t *testing.T) {
	a, b := env.NewDatabase(t), env.NewDatabase(t)
	if a == b {
		t.Fatalf("two calls returned the same DSN %q", a)
	}
}

func TestEnv_NewRedisDB_distinctAndEmpty(t *testing.T) {
	a, b := env.NewRedisDB(t), env.NewRedisDB(t)
	if a == b || a < 1 || a > 15 || b < 1 || b > 15 {
		t.Fatalf("got dbs %d and %d, want two distinct numbers in 1..15", a, b)
	}
	ca := redis.NewClient(env.RedisOptions(a))
	defer ca.Close()
	cb := redis.NewClient(env.RedisOptions(b))
	defer cb.Close()
	setKey(t, ca)
	wantNoKey(t, cb, "key leaked across dbs")
}

// setKey sets the key k in c's database.
func setKey(t *testing.T, c *redis.Client) {
	t.Helper()
	if err := c.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
}

// wantNoKey fails unless c answers that its database has no key k.
func wantNoKey(t *testing.T, c *redis.Client, why string) {
	t.Helper()
	if n, err := c.Exists(context.Background(), "k").Result(); err != nil || n != 0 {
		t.Fatalf("%s: exists=%d err=%v, want 0 and no error", why, n, err)
	}
}

func TestEnv_RestartRedisEmpty_losesData(t *testing.T) {
	if !env.RedisManaged {
		t.Skip("external redis")
	}
	c := env.MustRedis(t)
	setKey(t, c)
	if err := env.RestartRedisEmpty(); err != nil {
		t.Fatal(err)
	}
	wantNoKey(t, c, "after restart")
}

func TestEnv_StopPostgres_thenStart(t *testing.T) {
	if !env.PostgresManaged {
		t.Skip("external postgres")
	}
	ctx := context.Background()
	dsn := env.NewDatabase(t)
	if err := env.StopPostgres(); err != nil {
		t.Fatal(err)
	}
	if conn, err := pgx.Connect(ctx, dsn); err == nil {
		conn.Close(ctx)
		t.Fatal("connected while postgres was stopped")
	}
	if err := env.StartPostgres(); err != nil {
		t.Fatal(err)
	}
	testenv.MustConn(t, dsn) // connects again after the restart
}

func TestBuildEngineImages_runsReadOnlyAsNonRoot(t *testing.T) {
	testenv.RequireDocker(t)
	ctx := context.Background()
	if err := testenv.BuildEngineImages(ctx, "rtm-test/game", "0.0.1", "0.0.1-sick"); err != nil {
		t.Fatal(err)
	}
	// A second call finds the labels current and builds nothing.
	start := time.Now()
	if err := testenv.BuildEngineImages(ctx, "rtm-test/game", "0.0.1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("up-to-date check took %v", time.Since(start))

	if envJSON := docker(t, "image", "inspect", "-f", "{{json .Config.Env}}", "rtm-test/game:0.0.1-sick"); !strings.Contains(envJSON, "ENGINE_SICK=1") {
		t.Fatalf("sick image env %s lacks ENGINE_SICK=1", envJSON)
	}

	id := docker(t, "run", "-d", "--read-only", "--user", "65532:65532", "--cap-drop", "ALL",
		"--security-opt", "no-new-privileges", "-e", "GALAXY_GAME_ID=g1", "rtm-test/game:0.0.1")
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", id).Run() })
	ip := docker(t, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", id)

	var got struct {
		Status, Game, Version string
		Boots                 int
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + ip + ":8080/healthz")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine healthz never answered 200: %v (logs: %s)", err, docker(t, "logs", id))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got.Status != "ok" || got.Game != "g1" || got.Version != "0.0.1" || got.Boots != 1 {
		t.Fatalf("healthz = %+v", got)
	}

	docker(t, "stop", "-t", "5", id)
	if code := docker(t, "inspect", "-f", "{{.State.ExitCode}}", id); code != "0" {
		t.Fatalf("exit code after SIGTERM = %s, want 0", code)
	}
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// script writes an executable shell script of body and returns its path and a log path beside it.
func script(t *testing.T, body string) (bin, log string) {
	t.Helper()
	dir := t.TempDir()
	bin = filepath.Join(dir, "child")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, filepath.Join(dir, "child.log")
}

func TestProcess_exitCodes(t *testing.T) {
	bin, log := script(t, "echo started\nexit 3")
	p, err := testenv.StartProcess(bin, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if p.Alive() || p.Code() != 3 {
		t.Fatalf("alive %v, code %d; want an exit with 3", p.Alive(), p.Code())
	}
	if out, _ := os.ReadFile(log); string(out) != "started\n" {
		t.Fatalf("log %q, want the child's output", out)
	}

	bin, log = script(t, "exec sleep 60")
	for _, tc := range []struct {
		name string
		stop func(*testenv.Process)
		want int
	}{
		{"SIGTERM", func(p *testenv.Process) {
			if !p.Terminate(10 * time.Second) {
				t.Error("not gone within the grace period")
			}
		}, 128 + 15},
		{"SIGKILL", (*testenv.Process).Kill, 128 + 9},
	} {
		p, err := testenv.StartProcess(bin, nil, log)
		if err != nil {
			t.Fatal(err)
		}
		if !p.Alive() || p.Code() != -1 {
			t.Fatalf("%s: alive %v, code %d before the signal", tc.name, p.Alive(), p.Code())
		}
		tc.stop(p)
		if p.Alive() || p.Code() != tc.want {
			t.Errorf("%s: alive %v, code %d; want %d", tc.name, p.Alive(), p.Code(), tc.want)
		}
	}
}

func TestRTMEnviron_dropsTheTestsSettings(t *testing.T) {
	t.Setenv("RTMANAGER_LOG_LEVEL", "debug")
	t.Setenv("OTEL_SERVICE_NAME", "x")
	t.Setenv("KUBECONFIG", "/nowhere")
	env := testenv.RTMEnviron(map[string]string{"RTMANAGER_REDIS_PASSWORD": "p", "RTMANAGER_DOCKER_NETWORK": "n"})
	for _, kv := range env {
		if strings.HasPrefix(kv, "OTEL_") || strings.HasPrefix(kv, "KUBECONFIG=") || kv == "RTMANAGER_LOG_LEVEL=debug" {
			t.Errorf("%s passed on", kv)
		}
	}
	if tail := env[len(env)-2:]; !slices.Equal(tail, []string{"RTMANAGER_DOCKER_NETWORK=n", "RTMANAGER_REDIS_PASSWORD=p"}) {
		t.Errorf("env ends %q, want the rig's settings in name order", tail)
	}
}

func TestListenAddr(t *testing.T) {
	log := `{"time":"x","level":"INFO","msg":"internal http listening","addr":"127.0.0.1:4321"}` + "\n"
	if got := testenv.ListenAddr(log); got != "http://127.0.0.1:4321" {
		t.Errorf("ListenAddr = %q", got)
	}
	if got := testenv.ListenAddr(`{"msg":"worker started"}`); got != "" {
		t.Errorf("ListenAddr without the line = %q", got)
	}
}
