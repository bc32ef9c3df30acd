package store

import (
	"strings"
	"syscall"
	"time"
)

// tcpUserTimeout is TCP_USER_TIMEOUT of linux/tcp.h (the syscall package does not name it).
const tcpUserTimeout = 0x12

// userTimeout returns a dialer Control that sets TCP_USER_TIMEOUT to d: the kernel drops the
// connection when data it sent, keepalive probes included, stays unacknowledged that long. A
// Unix socket is left alone.
func userTimeout(d time.Duration) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		if !strings.HasPrefix(network, "tcp") {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d.Milliseconds()))
		})
		if err != nil {
			return err
		}
		return serr
	}
}
