//go:build !unix

package probe

import (
	"errors"
	"net"
	"time"
)

// detach keeps every connection in Go's poller where sockets cannot be duplicated this way.
func detach(net.Conn) (int, bool) { return -1, false }

func rawRead(int, []byte, func() time.Time) (int, error)  { return 0, errors.ErrUnsupported }
func rawWrite(int, []byte, func() time.Time) (int, error) { return 0, errors.ErrUnsupported }
func rawClose(int) error                                  { return errors.ErrUnsupported }
