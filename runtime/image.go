package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"

	rtm "github.com/galaxy-platform/rtmanager"
)

// EnsureImage makes ref present on the docker host: an image already there is used as is (no
// pull, so a local build wins); otherwise it is pulled within PullTimeout and the whole progress
// stream is read. Concurrent calls for one missing image share one pull; each caller waits for it
// until its own context ends. Any pull failure (an HTTP error, an error message in the stream, the pull
// timeout) is *rtm.Error with CodeImagePullFailed and a message starting "pulling <ref>:";
// an unreachable daemon wraps rtm.ErrUnavailable instead, since that is transient.
func (d *Docker) EnsureImage(ctx context.Context, ref string) error {
	c := d.begin(ctx, "inspect", d.opts.CallTimeout, attrImage.String(ref))
	_, err := d.cli.ImageInspect(c.ctx, ref)
	switch {
	case err == nil:
		return c.end(nil)
	case !errdefs.IsNotFound(err) || ctx.Err() != nil:
		return c.end(fmt.Errorf("inspecting image %s: %w", ref, classify(ctx, err)))
	}
	c.end(err)

	// Games that start on one new image at once share one pull. It runs detached from any one
	// caller (within PullTimeout), so a caller that gives up, or loses its lease, ends only its
	// own wait; the pull itself changes no game.
	ch := d.pulls.DoChan(ref, func() (any, error) {
		pctx := context.WithoutCancel(ctx)
		d.log.Debug("pulling image", "image_ref", ref)
		c := d.begin(pctx, "pull", d.opts.PullTimeout, attrImage.String(ref))
		if err := d.pull(c.ctx, ref); err != nil {
			return nil, c.end(pullError(c, ref, err))
		}
		d.log.Debug("image pulled", "image_ref", ref)
		return nil, c.end(nil)
	})
	d.pullWaiters.Add(1)
	defer d.pullWaiters.Add(-1)
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return fmt.Errorf("pulling %s: %w", ref, ctx.Err())
	}
}

// pullMessage is the part of a pull progress message that reports failure: old daemons fill
// only "error", newer ones also "errorDetail".
type pullMessage struct {
	Error       string `json:"error"`
	ErrorDetail *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
}

// pull pulls ref and drains the progress stream, returning the first error it reports.
func (d *Docker) pull(ctx context.Context, ref string) error {
	rc, err := d.cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var m pullMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading pull progress: %w", err)
		}
		switch {
		case m.ErrorDetail != nil && m.ErrorDetail.Message != "":
			return errors.New(m.ErrorDetail.Message)
		case m.Error != "":
			return errors.New(m.Error)
		}
	}
}

// pullError classifies a failed pull.
func pullError(c *call, ref string, err error) error {
	switch {
	case c.parent.Err() != nil:
		return fmt.Errorf("pulling %s: %w", ref, err)
	case c.timedOut():
		return &rtm.Error{
			Code:    rtm.CodeImagePullFailed,
			Message: fmt.Sprintf("pulling %s: timed out after %s", ref, c.d.opts.PullTimeout),
			Err:     err,
		}
	case kindOf(c.parent, err) == rtm.ErrUnavailable:
		return fmt.Errorf("pulling %s: %w", ref, &kindError{kind: rtm.ErrUnavailable, err: err})
	}
	return &rtm.Error{
		Code:    rtm.CodeImagePullFailed,
		Message: fmt.Sprintf("pulling %s: %s", ref, daemonMessage(err)),
		Err:     err,
	}
}
