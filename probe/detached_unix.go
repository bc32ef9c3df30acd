//go:build unix

package probe

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// detach takes nc's socket out of Go's network poller: it keeps a duplicate of the descriptor
// (non-blocking, as nc's was) and closes nc, which removes the socket from the poller without
// ending the connection. A kept probe connection is detached between probes: its engine's answer
// then arrives without waking the poller, and the probe that reads it finds it with one read
// (at 1,000 engines the poller's wake-ups were a sixth of RTM's CPU at rest). ok is false when nc
// is not a socket that can be duplicated; nc is then left as it is.
func detach(nc net.Conn) (fd int, ok bool) {
	sc, isSock := nc.(syscall.Conn)
	if !isSock {
		return -1, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, false
	}
	fd = -1
	var dupErr error
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || dupErr != nil {
		return -1, false
	}
	_ = nc.Close() // the poller forgets the socket; fd keeps the connection open
	return fd, true
}

// pollSlice bounds one wait of a detached socket, so that a deadline moved earlier (a probe cut
// short) is seen within it.
const pollSlice = 50 * time.Millisecond

// await waits until the detached socket fd is ready for events or deadline() has passed
// (os.ErrDeadlineExceeded). It blocks its thread: only a probe whose answer has not arrived waits
// here, and the prober runs those at bounded concurrency.
func await(fd int, events int16, deadline func() time.Time) error {
	for {
		wait := pollSlice
		if d := deadline(); !d.IsZero() {
			left := time.Until(d)
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			wait = min(wait, left)
		}
		ms := int((wait + time.Millisecond - 1) / time.Millisecond)
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: events}}, ms)
		switch {
		case errors.Is(err, unix.EINTR):
		case err != nil:
			return os.NewSyscallError("poll", err)
		case n > 0:
			return nil
		}
	}
}

// rawRead reads from the detached socket fd, waiting for data until deadline() has passed.
func rawRead(fd int, b []byte, deadline func() time.Time) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		switch {
		case err == nil && n == 0 && len(b) > 0:
			return 0, io.EOF
		case err == nil:
			return n, nil
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if err := await(fd, unix.POLLIN, deadline); err != nil {
				return 0, err
			}
		default:
			return 0, os.NewSyscallError("read", err)
		}
	}
}

// rawWrite writes b whole to the detached socket fd, waiting for room until deadline() has
// passed. A peer that has gone is an error, not a signal.
func rawWrite(fd int, b []byte, deadline func() time.Time) (int, error) {
	written := 0
	for written < len(b) {
		n, err := unix.SendmsgN(fd, b[written:], nil, nil, unix.MSG_NOSIGNAL)
		switch {
		case err == nil:
			written += n
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if err := await(fd, unix.POLLOUT, deadline); err != nil {
				return written, err
			}
		default:
			return written, os.NewSyscallError("write", err)
		}
	}
	return written, nil
}

// rawClose closes the detached socket fd.
func rawClose(fd int) error { return unix.Close(fd) }
