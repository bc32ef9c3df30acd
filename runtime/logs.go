package runtime

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Logs opens the output of gameID's container: the last tail lines (none when tail is 0) of its
// stdout and stderr, merged in the order the daemon stored them and demultiplexed into plain
// text, each line prefixed with the daemon's RFC 3339 timestamp and a space when timestamps is
// set. With follow the stream stays open and carries new output until the container stops, ctx
// ends or the returned reader is closed; without it the stream ends after the lines asked for.
// The caller must close the reader; Close returns once nothing of the stream runs any more.
//
// The container is the one Inspect finds for the game, and it must be RTM's (Owned): a container
// of that name belonging to nobody or to another RTM is not read. Errors, all before any output:
// no such container, or not RTM's, wraps rtm.ErrNotFound; a logging driver that keeps nothing to
// read (driver none, a remote driver) wraps rtm.ErrConflict; an unreachable daemon wraps
// rtm.ErrUnavailable. Opening the stream is bounded by CallTimeout; the stream itself only by
// ctx. The span and latency sample (op logs) cover the opening only, as for Events.
func (d *Docker) Logs(ctx context.Context, gameID string, tail int, follow, timestamps bool) (io.ReadCloser, error) {
	if tail < 0 {
		return nil, fmt.Errorf("reading the output of game %s: tail %d is negative", gameID, tail)
	}
	ct, err := d.Inspect(ctx, gameID)
	if err != nil {
		return nil, fmt.Errorf("reading the output of game %s: %w", gameID, err)
	}
	if !ct.Owned {
		return nil, fmt.Errorf("reading the output of game %s: container %s is not RTM's: %w", gameID, ct.Name, rtm.ErrNotFound)
	}
	tty, err := d.tty(ctx, ct.ID)
	if err != nil {
		return nil, fmt.Errorf("reading the output of game %s: %w", gameID, err)
	}

	c := d.begin(ctx, "logs", 0, attrGameID.String(gameID), semconv.ContainerID(ct.ID),
		attribute.Bool("docker.logs.follow", follow), attribute.Int("docker.logs.tail", tail))
	// The daemon answers the request's headers at once, then streams; only the wait for the
	// headers is bounded here, as a follow stream may rightly stay open for hours.
	watchdog := time.AfterFunc(d.opts.CallTimeout, c.cancel)
	body, err := d.cli.ContainerLogs(c.ctx, ct.ID, container.LogsOptions{
		ShowStdout: true, ShowStderr: true, Follow: follow, Timestamps: timestamps, Tail: strconv.Itoa(tail),
	})
	if !watchdog.Stop() && err == nil {
		// The watchdog fired as the answer came: the stream's context is already cancelled.
		body.Close()
		err = context.DeadlineExceeded
	}
	if err != nil {
		err = fmt.Errorf("reading the output of container %s: %w", shortID(ct.ID), logsError(ctx, err))
		c.cancel()
		c.finish(err)
		return nil, err
	}
	c.finish(nil)

	pr, pw := io.Pipe()
	s := &logStream{pr: pr, cancel: c.cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer body.Close()
		var err error
		if tty {
			_, err = io.Copy(pw, body)
		} else {
			_, err = stdcopy.StdCopy(pw, pw, body)
		}
		if err != nil && ctx.Err() == nil && c.ctx.Err() == nil {
			err = fmt.Errorf("reading the output of container %s: %w", shortID(ct.ID), classify(ctx, err))
		}
		pw.CloseWithError(err) // nil: the reader sees io.EOF
	}()
	return s, nil
}

// tty reports whether the container has a terminal: its output then comes as one raw stream,
// not multiplexed. RTM never creates one, but an adopted, hand-started container may have one.
func (d *Docker) tty(ctx context.Context, id string) (bool, error) {
	c := d.begin(ctx, "inspect", d.opts.CallTimeout, semconv.ContainerID(id))
	resp, err := d.cli.ContainerInspect(c.ctx, id)
	if err != nil {
		return false, c.end(fmt.Errorf("inspecting container %s: %w", id, classify(ctx, err)))
	}
	return resp.Config != nil && resp.Config.Tty, c.end(nil)
}

// logsError classifies a refused logs request: a logging driver that cannot be read is the
// container's state, not the daemon's failure.
func logsError(ctx context.Context, err error) error {
	if ctx.Err() == nil && (errdefs.IsInvalidArgument(err) || errdefs.IsNotImplemented(err)) {
		return &kindError{kind: rtm.ErrConflict, err: err}
	}
	return classify(ctx, err)
}

// logStream is the reader Logs returns: demultiplexed text from a pipe a goroutine fills.
type logStream struct {
	pr     *io.PipeReader
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func (s *logStream) Read(p []byte) (int, error) { return s.pr.Read(p) }

// Close ends the daemon's stream and waits for the goroutine copying it.
func (s *logStream) Close() error {
	s.once.Do(func() {
		s.cancel()
		_ = s.pr.Close()
		<-s.done
	})
	return nil
}
