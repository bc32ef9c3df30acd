package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// EngineSourceLabel is the image label holding the hash of the stand-in engine's source and
// Dockerfile; BuildEngineImages skips a tag whose label already matches.
const EngineSourceLabel = "rtm.test.engine.source"

// EngineDir is the stand-in engine's package, relative to the module root.
const EngineDir = "test/engine"

// BadRelease is the engine version whose probe always fails (like any version ending in "-sick").
const BadRelease = "1.4.3"

// IsSickVersion reports whether BuildEngineImages gives version an engine that fails its probe.
func IsSickVersion(version string) bool {
	return version == BadRelease || strings.HasSuffix(version, "-sick")
}

// BuildEngineImages builds the stand-in engine (test/engine, CGO_ENABLED=0) and tags it
// repo:version for each version: a single-layer image with no parent (what FROM scratch plus
// COPY gives), ENTRYPOINT ["/engine"], ENV ENGINE_VERSION=<version>, plus ENGINE_SICK=1 for sick
// versions (see IsSickVersion). The module root is found by walking up from the working
// directory to go.mod. A tag whose EngineSourceLabel matches the current source is left as it
// is, so repeated calls cost one docker image inspect per version.
//
// Images are made with `docker import --change …` rather than `docker build`: the daemon's legacy
// builder commits a container per Dockerfile step (about 2.3 s per tag here), import takes 0.2 s.
func BuildEngineImages(ctx context.Context, repo string, versions ...string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	srcHash, err := hashDir(filepath.Join(root, EngineDir))
	if err != nil {
		return fmt.Errorf("testenv: hashing engine source: %w", err)
	}

	type build struct {
		tag     string
		changes []string
	}
	var todo []build
	for _, v := range versions {
		tag := repo + ":" + v
		changes := []string{
			"ENV ENGINE_VERSION=" + v,
			`ENTRYPOINT ["/engine"]`,
			"EXPOSE 8080",
		}
		if IsSickVersion(v) {
			changes = append(changes, "ENV ENGINE_SICK=1")
		}
		sum := sha256.Sum256([]byte(srcHash + "\n" + strings.Join(changes, "\n")))
		label := hex.EncodeToString(sum[:8])
		if imageLabel(ctx, tag) == label {
			continue
		}
		todo = append(todo, build{tag, append(changes, "LABEL "+EngineSourceLabel+"="+label)})
	}
	if len(todo) == 0 {
		return nil
	}

	dir, err := os.MkdirTemp("", "rtm-engine-build-")
	if err != nil {
		return fmt.Errorf("testenv: engine build dir: %w", err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "engine")
	if err := GoBuild(ctx, root, bin, "./"+EngineDir); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	layer, err := tarFile(bin, "engine")
	if err != nil {
		return fmt.Errorf("testenv: packing engine: %w", err)
	}

	for _, b := range todo {
		args := []string{"import"}
		for _, c := range b.changes {
			args = append(args, "--change", c)
		}
		args = append(args, "-", b.tag)
		bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		cmd := exec.CommandContext(bctx, "docker", args...)
		cmd.Stdin = bytes.NewReader(layer)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("testenv: docker import %s: %w\n%s", b.tag, err, out)
		}
	}
	return nil
}

// tarFile returns a tar archive holding the file at path as name, executable, owned by root.
func tarFile(path, name string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// imageLabel returns the engine source label of a local image, or "" when the image or the label
// is absent.
func imageLabel(ctx context.Context, tag string) string {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "image", "inspect", "-f",
		fmt.Sprintf("{{index .Config.Labels %q}}", EngineSourceLabel), tag).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// hashDir hashes the names and contents of the regular files directly in dir.
func hashDir(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, en := range entries {
		if en.Type().IsRegular() {
			names = append(names, en.Name())
		}
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", n, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
