//go:build integration

package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"

	"github.com/galaxy-platform/rtmanager/test/k8senv"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// Engine images the suite builds once (FROM scratch, the stand-in engine of test/engine). They
// live in their own repository so that they never mix with dev images of galaxy/game, and they
// are kept between runs: a rebuild of unchanged sources is a cache hit.
const (
	engineRepo = "rtm-e2e/game"

	v141 = "1.4.1" // the release every game starts with
	v142 = "1.4.2" // its patch
	v143 = "1.4.3" // a bad release: its /healthz always fails (ENGINE_SICK=1)
	v150 = "1.5.0" // another minor: a patch to it is semver_patch_only
	// vBroken is a semver tag whose image cannot start: its entrypoint does not exist, so the
	// daemon refuses to start the container (container_start_failed).
	vBroken = "0.0.1"

	// rtmImageRepo is RTM's own image, built from the product's Dockerfile for the
	// production-shape test and removed when the suite ends.
	rtmImageRepo = "rtm-e2e/rtmanager"
)

func img(version string) string { return engineRepo + ":" + version }

// unreachableRepo is the engine repository on a registry on loopback where nothing listens: a
// pull of it fails at once (image_pull_failed) and no test traffic leaves the machine. kwok's
// nodes fail the pull of its images too (k8senv.UnpullableRegistry).
const unreachableRepo = k8senv.UnpullableRegistry + "/" + engineRepo

// suite is what TestMain prepares once for every test.
var suite struct {
	runtime  string // RTM_E2E_RUNTIME: runtimeDocker or runtimeKube
	env      *testenv.Env
	k8s      *k8senv.Env // the control plane, on Kubernetes
	noK8s    error       // why there is none (the binaries are not built): the tests skip
	bin      string      // the rtmanager binary (static, CGO_ENABLED=0)
	rtmImage string      // RTM's own image, repo:tag
	run      string      // a short random prefix of this run's game ids
	root     string      // the module root
	docker   *client.Client
	setupErr error // set when Docker answers but preparing the suite failed
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	flag.Parse()
	limitParallel()
	// testcontainers-go reads these once, at its first use. Without Ryuk nothing reaps what a
	// test leaves behind, so every helper below registers its own cleanup.
	setDefaultEnv("TESTCONTAINERS_RYUK_DISABLED", "true")
	setDefaultEnv("TESTCONTAINERS_HOST_OVERRIDE", "localhost")
	// Containers log through their test (t.Logf); the image builds need no banner.
	tclog.SetDefault(tclog.NewNoopLogger())

	suite.run = testenv.RunID("e")
	suite.runtime = suiteRuntime()
	prepare := prepareDocker
	switch suite.runtime {
	case runtimeDocker:
		if err := testenv.DockerPing(context.Background()); err != nil {
			// Every test calls requireSuite first: it skips, or fails under RTM_E2E_REQUIRED=1.
			fmt.Fprintf(os.Stderr, "e2e: no Docker daemon (%v); the tests will skip unless %s=1\n", err, testenv.EnvE2ERequired)
			return m.Run()
		}
	case runtimeKube:
		prepare = prepareKube
	default:
		fmt.Fprintf(os.Stderr, "e2e: %s=%q: want %s or %s\n", envRuntime, suite.runtime, runtimeDocker, runtimeKube)
		return 2
	}

	// Generous: on a busy 2-core machine a cold build of ./cmd/manager takes minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("", "rtm-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(work)

	cleanup, err := prepare(ctx, work)
	defer cleanup()
	if err != nil {
		suite.setupErr = err
		fmt.Fprintln(os.Stderr, "e2e: preparing the suite:", err)
		return 1
	}
	if suite.noK8s != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v; the tests will skip unless %s=1\n", suite.noK8s, testenv.EnvE2ERequired)
	}
	return m.Run()
}

// undoList is what a preparation did, undone in reverse order by run.
type undoList []func()

func (u undoList) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// prepareShared starts the shared PostgreSQL (test/testenv) and builds the rtmanager binary into
// work, side by side with more (the runtime's own slow steps); it returns once all have.
func prepareShared(ctx context.Context, work string, undo *undoList, more ...func() error) error {
	root, err := testenv.ModuleRoot()
	if err != nil {
		return err
	}
	suite.root = root
	err = testenv.Parallel(append([]func() error{
		func() (err error) {
			suite.env, err = testenv.Start(ctx)
			return err
		},
		func() error {
			suite.bin = filepath.Join(work, "rtmanager")
			return testenv.GoBuild(ctx, root, suite.bin, "./cmd/manager", "-ldflags", "-X main.version=e2e")
		},
	}, more...)...)
	if suite.env != nil {
		*undo = append(*undo, suite.env.Stop)
	}
	return err
}

// prepareDocker prepares the suite on Docker: prepareShared, and besides the engine images and
// RTM's own image. The returned cleanup undoes what was done, also on error.
func prepareDocker(ctx context.Context, work string) (func(), error) {
	var undo undoList
	var err error
	suite.docker, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return undo.run, fmt.Errorf("docker client: %w", err)
	}
	undo = append(undo, func() { _ = suite.docker.Close() })
	if err := prepareShared(ctx, work, &undo, func() error {
		return buildEngineImages(ctx, suite.root, filepath.Join(work, "engine"))
	}); err != nil {
		return undo.run, err
	}
	tag, err := buildRTMImage(ctx, suite.root, suite.bin, filepath.Join(work, "rtm-image"))
	if err != nil {
		return undo.run, err
	}
	suite.rtmImage = tag
	undo = append(undo, func() { removeImage(tag) })
	return undo.run, nil
}

// prepareKube prepares the suite on Kubernetes: prepareShared, and besides one control plane with
// three kwok nodes for every test of the binary (each test has a namespace of its own). No Docker
// daemon and no image is needed: kwok runs no containers. Without the control plane's binaries
// the suite is prepared with suite.noK8s set (the tests skip).
func prepareKube(ctx context.Context, work string) (func(), error) {
	var undo undoList
	began := time.Now()
	err := prepareShared(ctx, work, &undo, func() error {
		env, err := k8senv.Launch(ctx, k8senv.Options{Nodes: 3})
		if errors.Is(err, k8senv.ErrNoBinaries) {
			suite.noK8s = err
			return nil
		}
		suite.k8s = env
		return err
	})
	if suite.k8s != nil {
		undo = append(undo, suite.k8s.Stop)
		t := suite.k8s.Timings()
		fmt.Fprintf(os.Stderr, "e2e: kubernetes: control plane up in %s, %d nodes Ready in %s (suite prepared in %s)\n",
			t.ControlPlane.Round(time.Millisecond), len(suite.k8s.Nodes()), t.Ready.Round(time.Millisecond),
			time.Since(began).Round(time.Millisecond))
	}
	return undo.run, err
}

// defaultParallel is how many tests (each with its own RTM, redis-server and engines) run at
// once unless -parallel says otherwise: enough to overlap their waits, few enough for 2 cores.
const defaultParallel = 4

// limitParallel sets -test.parallel to defaultParallel when the command line did not set it
// (go test's default is GOMAXPROCS, 2 here, which leaves the waits of the suite unoverlapped).
func limitParallel() {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "test.parallel" {
			set = true
		}
	})
	if !set {
		_ = flag.Set("test.parallel", strconv.Itoa(defaultParallel))
	}
}

func setDefaultEnv(k, v string) {
	if os.Getenv(k) == "" {
		_ = os.Setenv(k, v)
	}
}

// requireSuite is the first call of every test: without a Docker daemon (on Kubernetes: without
// the control plane's binaries) the test skips, or fails when RTM_E2E_REQUIRED=1 (CI sets it, so
// CI never passes by skipping).
func requireSuite(t *testing.T) {
	t.Helper()
	if !onKube() {
		testenv.RequireSuite(t, suite.env, suite.setupErr)
		return
	}
	if suite.noK8s != nil {
		if os.Getenv(testenv.EnvE2ERequired) == "1" {
			t.Fatalf("%v (%s=1 requires them)", suite.noK8s, testenv.EnvE2ERequired)
		}
		t.Skipf("%v", suite.noK8s)
	}
	if suite.setupErr != nil || suite.env == nil || suite.k8s == nil {
		t.Fatalf("the suite was not prepared: %v", suite.setupErr)
	}
}

// buildEngineImages builds the stand-in engine once and one FROM scratch image per version with
// testcontainers-go's FromDockerfile.
func buildEngineImages(ctx context.Context, root, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := testenv.GoBuild(ctx, root, filepath.Join(dir, "engine"), "./"+testenv.EngineDir); err != nil {
		return err
	}
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return fmt.Errorf("testcontainers provider: %w", err)
	}
	defer provider.Close()
	for _, v := range []string{v141, v142, v143, v150, vBroken} {
		env := "ENGINE_VERSION=" + v
		if v == v143 {
			env += " ENGINE_SICK=1"
		}
		entry := "/engine"
		if v == vBroken {
			entry = "/no-such-engine"
		}
		df := fmt.Sprintf("FROM scratch\nCOPY engine /engine\nENV %s\nEXPOSE 8080\nLABEL rtm.e2e.engine=%q\nENTRYPOINT [%q]\n",
			env, v, entry)
		name := "Dockerfile." + v
		if err := os.WriteFile(filepath.Join(dir, name), []byte(df), 0o644); err != nil {
			return err
		}
		if err := buildImage(ctx, provider, dir, name, engineRepo, v); err != nil {
			return err
		}
	}
	return nil
}

// buildRTMImage builds RTM's own image. It prefers the product's Dockerfile (the one `make image`
// uses): the context holds that Dockerfile and the freshly built static binary at every path the
// Dockerfile copies a rtmanager binary from. Without a product Dockerfile it uses an equivalent
// FROM scratch one.
func buildRTMImage(ctx context.Context, root, bin, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		df = []byte("FROM scratch\nCOPY rtmanager /rtmanager\nEXPOSE 8096\nENTRYPOINT [\"/rtmanager\"]\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), df, 0o644); err != nil {
		return "", err
	}
	for _, src := range copySources(string(df)) {
		dst := filepath.Join(dir, filepath.FromSlash(src))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		from := filepath.Join(root, filepath.FromSlash(src))
		if strings.Contains(filepath.Base(src), "rtmanager") || strings.Contains(filepath.Base(src), "manager") {
			from = bin
		}
		if err := copyFile(from, dst); err != nil {
			return "", fmt.Errorf("RTM image context: %s: %w", src, err)
		}
	}
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return "", fmt.Errorf("testcontainers provider: %w", err)
	}
	defer provider.Close()
	tag := suite.run
	if err := buildImage(ctx, provider, dir, "Dockerfile", rtmImageRepo, tag); err != nil {
		return "", err
	}
	return rtmImageRepo + ":" + tag, nil
}

// copySources returns the local source paths of the Dockerfile's COPY and ADD instructions
// (those without --from), so the build context can hold them.
func copySources(df string) []string {
	var out []string
	for _, line := range strings.Split(df, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || (!strings.EqualFold(f[0], "COPY") && !strings.EqualFold(f[0], "ADD")) {
			continue
		}
		args := f[1:]
		skip := false
		for len(args) > 0 && strings.HasPrefix(args[0], "--") {
			if strings.HasPrefix(args[0], "--from") {
				skip = true
			}
			args = args[1:]
		}
		if skip || len(args) < 2 || strings.HasPrefix(args[0], "[") {
			continue
		}
		out = append(out, args[:len(args)-1]...)
	}
	return out
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm()|0o444)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func buildImage(ctx context.Context, provider *testcontainers.DockerProvider, dir, dockerfile, repo, tag string) error {
	var log strings.Builder
	_, err := provider.BuildImage(ctx, &testcontainers.ContainerRequest{FromDockerfile: testcontainers.FromDockerfile{
		Context: dir, Dockerfile: dockerfile, Repo: repo, Tag: tag, KeepImage: true, BuildLogWriter: &log,
	}})
	if err != nil {
		return fmt.Errorf("building %s:%s: %w\n%s", repo, tag, err, log.String())
	}
	return nil
}

func removeImage(ref string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = suite.docker.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true})
}
