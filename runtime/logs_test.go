package runtime

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	rtm "github.com/galaxy-platform/rtmanager"
)

// readAll reads r to its end within 30 s; a stream that does not end fails the test.
func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(r)
		done <- result{b, err}
	}()
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatalf("reading the output: %v (read %q)", res.err, res.b)
		}
		return string(res.b)
	case <-time.After(30 * time.Second):
		t.Fatal("the output stream did not end")
		return ""
	}
}

// openLogs opens gameID's log stream, failing the test when Logs refuses.
func openLogs(t *testing.T, ctx context.Context, d *Docker, gameID string, tail int, follow, timestamps bool) io.ReadCloser {
	t.Helper()
	rc, err := d.Logs(ctx, gameID, tail, follow, timestamps)
	if err != nil {
		t.Fatalf("Logs(tail %d, follow %v, timestamps %v): %v", tail, follow, timestamps, err)
	}
	return rc
}

func TestDocker_Logs_tailDemultiplexedText(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	gameID := startGame(t, d).GameID

	rc := openLogs(t, ctx, d, gameID, 100, false, false)
	out := readAll(t, rc)
	if err := rc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The engine logs to stderr with the prefix "engine: "; demultiplexed, nothing of Docker's
	// 8-byte frame headers is left in the text.
	if !strings.HasPrefix(out, "engine: ") || !strings.Contains(out, "serving on :8080") ||
		!strings.Contains(out, `game="`+gameID+`"`) || strings.ContainsAny(out, "\x00\x01\x02") {
		t.Fatalf("output %q, want the engine's plain text lines", out)
	}

	// tail 0: no past lines at all.
	rc = openLogs(t, ctx, d, gameID, 0, false, false)
	if out := readAll(t, rc); out != "" {
		t.Errorf("tail 0 gave %q, want nothing", out)
	}
	_ = rc.Close()
}

func TestDocker_Logs_timestampsPrefixEachLine(t *testing.T) {
	d := newDocker(t, Options{})
	rc := openLogs(t, context.Background(), d, startGame(t, d).GameID, 10, false, true)
	defer rc.Close()
	lines := strings.Split(strings.TrimSuffix(readAll(t, rc), "\n"), "\n")
	for _, l := range lines {
		ts, rest, ok := strings.Cut(l, " ")
		if _, err := time.Parse(time.RFC3339Nano, ts); !ok || err != nil || !strings.HasPrefix(rest, "engine: ") {
			t.Errorf("line %q does not start with an RFC 3339 timestamp and a space", l)
		}
	}
}

func TestDocker_Logs_followEndsWhenTheContainerStops(t *testing.T) {
	d := newDocker(t, Options{})
	c := startGame(t, d)
	rc := openLogs(t, context.Background(), d, c.GameID, 0, true, false)
	defer rc.Close()
	control(t, c.IP, "/control/exit?code=3")
	if out := readAll(t, rc); !strings.Contains(out, "exiting with 3 as asked") || strings.Contains(out, "serving on") {
		t.Fatalf("followed output %q, want only the new line", out)
	}
}

func TestDocker_Logs_closeEndsAFollowStream(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})
	gameID := startGame(t, d).GameID

	rc := openLogs(t, ctx, d, gameID, 1, true, false)
	buf := make([]byte, 4096)
	if n, err := rc.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "serving on") {
		t.Fatalf("first read %q, %v", buf[:n], err)
	}
	closed := make(chan struct{})
	go func() { _ = rc.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close of a follow stream did not return")
	}
	if _, err := rc.Read(buf); err == nil {
		t.Fatal("Read after Close succeeded")
	}

	// The caller's context ends the stream too.
	cctx, cancel := context.WithCancel(ctx)
	rc = openLogs(t, cctx, d, gameID, 0, true, false)
	defer rc.Close()
	cancel()
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(rc); done <- err }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling the context did not end the stream")
	}
}

func TestDocker_Logs_notRTMsOrMissing(t *testing.T) {
	ctx := context.Background()
	d := newDocker(t, Options{})

	if _, err := d.Logs(ctx, newGameID(t), 10, false, false); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Logs of a game without a container = %v, want ErrNotFound", err)
	}

	// A container of the game's name without the owner label is nobody's: not read.
	gameID := newGameID(t)
	createByHand(t, d, newSpec(t, gameID), rtm.ContainerName(gameID), false, withoutOwner)
	if _, err := d.Logs(ctx, gameID, 10, false, false); !errors.Is(err, rtm.ErrNotFound) {
		t.Errorf("Logs of a container without the owner label = %v, want ErrNotFound", err)
	}

	if _, err := d.Logs(ctx, gameID, -1, false, false); err == nil {
		t.Error("a negative tail was accepted")
	}
}

func TestDocker_Logs_driverWithoutOutputIsConflict(t *testing.T) {
	d := newDocker(t, Options{})
	gameID := newGameID(t)
	createByHand(t, d, newSpec(t, gameID), rtm.ContainerName(gameID), false,
		func(_ *container.Config, hc *container.HostConfig, _ *network.NetworkingConfig) {
			hc.LogConfig = container.LogConfig{Type: "none"}
		})
	if _, err := d.Logs(context.Background(), gameID, 10, false, false); !errors.Is(err, rtm.ErrConflict) {
		t.Errorf("Logs of a container logging to none = %v, want ErrConflict", err)
	}
}

func TestDocker_Logs_unreachableDaemon(t *testing.T) {
	d := newDocker(t, Options{Host: "unix:///nonexistent.sock"})
	if _, err := d.Logs(context.Background(), newGameID(t), 10, false, false); !errors.Is(err, rtm.ErrUnavailable) {
		t.Errorf("Logs = %v, want ErrUnavailable", err)
	}
}
