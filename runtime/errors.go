package runtime

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/client"

	rtm "github.com/galaxy-platform/rtmanager"
)

// kindError joins a domain sentinel (rtm.ErrNotFound, ErrConflict, ErrUnavailable) to the
// SDK's error without changing its text, so that callers match the sentinel with errors.Is and
// logs still carry the daemon's own words.
type kindError struct {
	msg  string // "" means err's text
	kind error
	err  error
}

func (e *kindError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	if e.err == nil {
		return e.kind.Error()
	}
	return e.err.Error()
}

func (e *kindError) Unwrap() []error {
	if e.err == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.err}
}

// kindOf tells which domain sentinel an SDK error belongs to, or nil for any other failure.
// parent is the caller's context: when it is done the failure is the caller's cancellation, not
// the daemon's, and no sentinel applies; when only the per-call timeout fired, the daemon is
// wedged or gone and the failure is ErrUnavailable.
func kindOf(parent context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case parent.Err() != nil:
		return nil
	case errdefs.IsNotFound(err):
		return rtm.ErrNotFound
	case errdefs.IsConflict(err):
		return rtm.ErrConflict
	case unreachable(err):
		return rtm.ErrUnavailable
	}
	return nil
}

// unreachable reports whether err means the daemon could not be reached or did not answer in
// time: a failed connection, a transport error, a timeout, or the daemon saying it is
// unavailable.
func unreachable(err error) bool {
	if client.IsErrConnectionFailed(err) ||
		errdefs.IsUnavailable(err) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}

// classify returns err joined to its domain sentinel, or err unchanged when none applies.
func classify(parent context.Context, err error) error {
	if kind := kindOf(parent, err); kind != nil {
		return &kindError{kind: kind, err: err}
	}
	return err
}
