package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	rtm "github.com/galaxy-platform/rtmanager"
)

// StateDirs creates per-game state directories under one root. Every path is resolved through an
// os.Root opened on the root, so neither a symlinked game dir nor ".." can escape it.
type StateDirs struct {
	Root string
	Mode fs.FileMode
	UID  int
	GID  int
}

// Path returns the host path of gameID's state dir: the one rule for it, which admission records
// in a game's desired state and Ensure creates. It checks nothing; Ensure refuses an invalid id.
func (s StateDirs) Path(gameID string) string {
	return filepath.Join(s.Root, gameID)
}

// Ensure returns the host path of gameID's state dir, creating it with the configured mode and
// owner when missing. It is never deleted by RTM. A game id that is not valid, a path that exists
// but is not a plain directory (a symlink, a file), or a root that cannot be used fails with
// start_config_invalid.
func (s StateDirs) Ensure(gameID string) (string, error) {
	if err := rtm.ValidateGameID(gameID); err != nil {
		return "", rtm.Errorf(rtm.CodeStartConfigInvalid, "%s", rtm.MessageOf(err))
	}
	if err := os.MkdirAll(s.Root, 0o750); err != nil {
		return "", &rtm.Error{Code: rtm.CodeStartConfigInvalid, Message: "the game state root cannot be created", Err: err}
	}
	root, err := os.OpenRoot(s.Root)
	if err != nil {
		return "", &rtm.Error{Code: rtm.CodeStartConfigInvalid, Message: "the game state root cannot be opened", Err: err}
	}
	defer root.Close()
	path := s.Path(gameID)
	fi, err := root.Lstat(gameID)
	switch {
	case err == nil && fi.Mode()&fs.ModeSymlink != 0:
		return "", rtm.Errorf(rtm.CodeStartConfigInvalid, "the state dir of %s is a symlink; refusing to follow it", gameID)
	case err == nil && !fi.IsDir():
		return "", rtm.Errorf(rtm.CodeStartConfigInvalid, "the state dir of %s exists and is not a directory", gameID)
	case err == nil:
		return path, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", &rtm.Error{Code: rtm.CodeStartConfigInvalid, Message: fmt.Sprintf("the state dir of %s cannot be read", gameID), Err: err}
	}
	if err := root.Mkdir(gameID, s.Mode); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", &rtm.Error{Code: rtm.CodeStartConfigInvalid, Message: fmt.Sprintf("the state dir of %s cannot be created", gameID), Err: err}
	}
	// Mkdir is subject to the umask; the contract wants the configured mode exactly.
	if err := root.Chmod(gameID, s.Mode); err != nil {
		return "", &rtm.Error{Code: rtm.CodeStartConfigInvalid, Message: fmt.Sprintf("the state dir of %s cannot be given its mode", gameID), Err: err}
	}
	if err := root.Lchown(gameID, s.UID, s.GID); err != nil {
		return "", &rtm.Error{Code: rtm.CodeStartConfigInvalid, Message: fmt.Sprintf("the state dir of %s cannot be given its owner", gameID), Err: err}
	}
	return path, nil
}
