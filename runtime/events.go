package runtime

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	rtm "github.com/galaxy-platform/rtmanager"
)

// eventBuffer absorbs short bursts (a mass stop) so a slow consumer does not hold the daemon's
// stream.
const eventBuffer = 64

// connectEvents opens the daemon's event stream selected by filters, within c. The stream has no
// timeout, but connecting to it does: the SDK's Events blocks until the daemon answers, so a
// wedged daemon has c cancelled after CallTimeout, and timedOut then reports true.
func (d *Docker) connectEvents(c *call, filter ...filters.KeyValuePair) (msgs <-chan events.Message, errs <-chan error, timedOut func() bool) {
	var fired atomic.Bool
	watchdog := time.AfterFunc(d.opts.CallTimeout, func() {
		fired.Store(true)
		c.cancel()
	})
	msgs, errs = d.cli.Events(c.ctx, events.ListOptions{Filters: filters.NewArgs(filter...)})
	watchdog.Stop()
	return msgs, errs, fired.Load
}

// Events follows the daemon's events for containers carrying com.galaxy.owner=rtmanager until
// ctx ends or the stream breaks. Each message becomes a rtm.DockerEvent: the game id from
// the container's game id label, the action without its details (a "health_status: healthy"
// event has Action "health_status" and Health "healthy"), ExitCode from a die event's exitCode
// attribute (-1 for every other action) and the daemon's timestamp. exec_* events are dropped:
// they say nothing about a container's life.
//
// The error channel receives exactly one value, then is closed; after it no event is sent and
// the event channel (never closed) may be dropped. The value is ctx's error when ctx ended, and
// otherwise wraps rtm.ErrUnavailable (the daemon could not be reached within CallTimeout,
// restarted, or closed the stream): the caller reconnects, and since events missed in between
// are lost, reconciles everything.
//
// The span and latency sample (op events) cover the subscription only, not the stream's life.
func (d *Docker) Events(ctx context.Context) (<-chan rtm.DockerEvent, <-chan error) {
	out := make(chan rtm.DockerEvent, eventBuffer)
	errc := make(chan error, 1)

	c := d.begin(ctx, "events", 0)
	msgs, errs, connectTimedOut := d.connectEvents(c,
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", rtm.LabelOwner+"="+rtm.OwnerValue),
	)

	// streamError turns the SDK's final error into the one this method promises.
	streamError := func(err error, connecting bool) error {
		what := "docker event stream ended"
		if connecting {
			what = "connecting to docker events"
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case connectTimedOut():
			return fmt.Errorf("connecting to docker events: timed out after %s: %w", d.opts.CallTimeout, rtm.ErrUnavailable)
		case err == nil:
			err = errors.New("stream closed")
		}
		return fmt.Errorf("%s: %w", what, &kindError{kind: rtm.ErrUnavailable, err: err})
	}

	// A failed connection has usually queued its error by now; anything later is a stream end.
	select {
	case err := <-errs:
		err = streamError(err, true)
		c.cancel()
		c.finish(err)
		errc <- err
		close(errc)
		return out, errc
	default:
		c.finish(nil)
	}
	d.log.Debug("docker event stream connected")

	go func() {
		defer close(errc)
		defer c.cancel()
		for {
			select {
			case m := <-msgs:
				ev, ok := fromMessage(m)
				if !ok {
					continue
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					errc <- ctx.Err()
					return
				}
			case err := <-errs:
				errc <- streamError(err, false)
				return
			}
		}
	}()
	return out, errc
}

// fromMessage converts a container event; ok is false for events RTM ignores.
func fromMessage(m events.Message) (ev rtm.DockerEvent, ok bool) {
	action := string(m.Action)
	if strings.HasPrefix(action, "exec_") {
		return rtm.DockerEvent{}, false
	}
	ev = rtm.DockerEvent{
		GameID:      m.Actor.Attributes[rtm.LabelGameID],
		ContainerID: m.Actor.ID,
		ExitCode:    -1,
	}
	if name, detail, found := strings.Cut(action, ": "); found {
		action = name
		if name == "health_status" {
			ev.Health = strings.TrimSpace(detail)
		}
	}
	ev.Action = action
	if action == string(events.ActionDie) {
		if code, err := strconv.Atoi(m.Actor.Attributes["exitCode"]); err == nil {
			ev.ExitCode = code
		}
	}
	switch {
	case m.TimeNano != 0:
		ev.Time = time.Unix(0, m.TimeNano).UTC()
	case m.Time != 0:
		ev.Time = time.Unix(m.Time, 0).UTC()
	}
	return ev, true
}
