//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// Engine images of the suite: the stand-in engine of test/engine, in their own repository.
const (
	engineRepo = "rtm-chaos/game"
	v141       = "1.4.1" // every game starts with it
	v142       = "1.4.2" // its patch
	v143       = "1.4.3" // a bad release: its /healthz always fails (testenv.BadRelease)
)

// envChaosBin names a prebuilt rtmanager binary to run instead of building ./cmd/manager.
const envChaosBin = "RTM_CHAOS_BIN"

func img(version string) string { return engineRepo + ":" + version }

// suite is what TestMain prepares once.
var suite struct {
	env    *testenv.Env
	bin    string // the rtmanager binary
	run    string // random prefix of this run's game ids, networks and request ids
	work   string // temp dir of the run (binary, proxy sockets)
	docker *client.Client
	err    error // preparing failed although Docker answers
	begin  time.Time

	mu      sync.Mutex
	reports []string
}

func TestMain(m *testing.M) { os.Exit(runSuite(m)) }

func runSuite(m *testing.M) int {
	suite.begin = time.Now()
	suite.run = testenv.RunID("c")

	if err := testenv.DockerPing(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "chaos: no Docker daemon (%v); the tests will skip unless %s=1\n", err, testenv.EnvE2ERequired)
		return m.Run()
	}
	work, err := os.MkdirTemp("/tmp", "rtm-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	defer os.RemoveAll(work)
	suite.work = work

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	suite.err = prepare(ctx)
	if suite.env != nil {
		defer suite.env.Stop()
	}
	if suite.docker != nil {
		defer suite.docker.Close()
	}
	if suite.err != nil {
		fmt.Fprintln(os.Stderr, "chaos: preparing the suite:", suite.err)
		return 1
	}
	fmt.Printf("chaos: suite prepared in %s (run %s)\n", time.Since(suite.begin).Round(100*time.Millisecond), suite.run)
	code := m.Run()

	suite.mu.Lock()
	fmt.Println("chaos summary:")
	for _, r := range suite.reports {
		fmt.Println("  " + r)
	}
	suite.mu.Unlock()
	fmt.Printf("chaos: whole suite took %s\n", time.Since(suite.begin).Round(time.Second))
	return code
}

// prepare starts PostgreSQL (test/testenv), builds the rtmanager binary and the engine images,
// side by side.
func prepare(ctx context.Context) error {
	root, err := testenv.ModuleRoot()
	if err != nil {
		return err
	}
	suite.docker, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	err = testenv.Parallel(
		func() (err error) {
			suite.env, err = testenv.Start(ctx)
			return err
		},
		func() error {
			if bin := os.Getenv(envChaosBin); bin != "" {
				suite.bin = bin // a binary built elsewhere, e.g. from another commit to compare with
				return nil
			}
			suite.bin = filepath.Join(suite.work, "rtmanager")
			return testenv.GoBuild(ctx, root, suite.bin, "./cmd/manager", "-ldflags", "-X main.version=chaos")
		},
		func() error { return testenv.BuildEngineImages(ctx, engineRepo, v141, v142, v143) },
	)
	if err != nil {
		return err
	}
	if !suite.env.PostgresManaged {
		return fmt.Errorf("the chaos suite stops and starts PostgreSQL: unset %s", testenv.EnvPostgresDSN)
	}
	return nil
}

// requireSuite is the first call of every test: it skips without Docker (fails under
// RTM_E2E_REQUIRED=1) and fails when the suite could not be prepared.
func requireSuite(t *testing.T) { t.Helper(); testenv.RequireSuite(t, suite.env, suite.err) }

// report prints a fault's report line so that it shows in `make chaos` output (fmt) and in the
// test's log (t.Log), and keeps it for the summary TestMain prints at the end.
func report(t *testing.T, line string) {
	t.Helper()
	t.Log(line)
	fmt.Println(line)
	suite.mu.Lock()
	suite.reports = append(suite.reports, line)
	suite.mu.Unlock()
}
