package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	rtm "github.com/galaxy-platform/rtmanager"
)

// maxName is the longest Service name (a DNS-1035 label), and so of every object of a game.
const maxName = 63

// Name returns the name of a game's Pod, Service and state claim: galaxy-game-<id> in lower case
// (DNS names are case-insensitive, and game ids that differ only in case are refused), so that
// the contract's engine_endpoint http://galaxy-game-<id>:<port> resolves in the namespace. A game
// id that cannot be a DNS label as it is (an '_', a trailing '-', or longer than 51 characters)
// gets a name of its own: its letters, digits and dashes cut to 40 and ten hex digits of its
// SHA-256, always 63 characters or fewer; EngineHost gives it to the endpoint.
func Name(gameID string) string {
	lower := strings.ToLower(gameID)
	name := rtm.ContainerName(lower)
	if len(name) <= maxName && dnsLabel(lower) {
		return name
	}
	s := strings.Trim(strings.ReplaceAll(lower, "_", "-"), "-")
	if len(s) > 40 {
		s = strings.TrimRight(s[:40], "-")
	}
	sum := sha256.Sum256([]byte(gameID))
	if s == "" {
		return rtm.ContainerName(hex.EncodeToString(sum[:5]))
	}
	return rtm.ContainerName(s + "-" + hex.EncodeToString(sum[:5]))
}

// EngineHost is the host name of a game's engine in the namespace: its Service's name.
func EngineHost(gameID string) string {
	if n := Name(gameID); n != rtm.ContainerName(strings.ToLower(gameID)) {
		return n
	}
	return rtm.ContainerName(gameID)
}

// StateDir is what the record says of a game's state: its claim, as kubectl names it.
func StateDir(gameID string) string {
	return "persistentvolumeclaim/" + Name(gameID)
}

// dnsLabel reports whether s, after "galaxy-game-", makes a DNS-1035 label: lower-case letters,
// digits and '-', ending with a letter or digit.
func dnsLabel(s string) bool {
	if s == "" || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// labelValue reports whether s may be a label value (63 characters of [A-Za-z0-9_.-], beginning
// and ending with a letter or digit).
func labelValue(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return alnum(s[0]) && alnum(s[len(s)-1])
}

// classify joins an API error to its domain sentinel: not found, conflict (already exists, or a
// precondition or resource version that no longer holds), unavailable (the server cannot be
// reached, times out, throttles or fails internally). Other errors are returned as they are.
func classify(err error) error {
	var kind error
	switch {
	case err == nil:
		return nil
	case apierrors.IsNotFound(err):
		kind = rtm.ErrNotFound
	case apierrors.IsAlreadyExists(err), apierrors.IsConflict(err):
		kind = rtm.ErrConflict
	case apierrors.IsServerTimeout(err), apierrors.IsTimeout(err), apierrors.IsTooManyRequests(err),
		apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err), apierrors.IsUnexpectedServerError(err),
		unreachable(err):
		kind = rtm.ErrUnavailable
	default:
		return err
	}
	return fmt.Errorf("%w (%w)", err, kind)
}

// unreachable reports a transport failure or a deadline.
func unreachable(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) || strings.Contains(err.Error(), "connection refused") ||
		errors.Is(err, context.DeadlineExceeded)
}

// StateDirs is the games' state as the reconciler asks for it: a game's claim, which Create makes
// before the game's first Pod.
type StateDirs struct{}

// Ensure returns what the record says of the game's state (StateDir); the claim itself is
// created with the game's first Pod.
func (StateDirs) Ensure(gameID string) (string, error) { return StateDir(gameID), nil }
