//go:build !linux

package store

import (
	"syscall"
	"time"
)

// userTimeout returns nil: TCP_USER_TIMEOUT is Linux's; elsewhere keepalive alone notices a
// black-holed database.
func userTimeout(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}
