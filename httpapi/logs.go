package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	goruntime "runtime"
	"strconv"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Bounds of GET /runtimes/{game_id}/logs?tail=.
const (
	DefaultLogTail = 100
	MaxLogTail     = 10000
)

// APIVersion is the version of the REST API this package serves, the "v1" of BasePath.
const APIVersion = "v1"

// EngineLogs reads a game engine's output; *runtime.Docker satisfies it. Logs returns the last
// tail lines of the game's container's stdout and stderr as plain text (with follow, then what
// it writes until it stops or ctx ends; with timestamps, each line prefixed with its RFC 3339
// time). Its errors come before any output and wrap rtm.ErrNotFound (the game has no container
// of RTM's), rtm.ErrConflict (the container keeps no output to read) or rtm.ErrUnavailable
// (Docker cannot be reached).
type EngineLogs interface {
	Logs(ctx context.Context, gameID string, tail int, follow, timestamps bool) (io.ReadCloser, error)
}

// getLogs streams the output of the game's engine as text/plain. The query is checked first
// (400), then the game's record (404, 503), then the container (404 when there is none, 409 when
// its output cannot be read, 503 when Docker is down); from then on the answer is 200 and the
// output follows. With follow=true every chunk is flushed as it comes and the listener's write
// timeout is lifted: the stream ends when the container stops, the client goes away or the
// listener shuts down (Draining). A HEAD request never follows.
func (a *api) getLogs(w http.ResponseWriter, r *http.Request, c *call) {
	q := r.URL.Query()
	tail, ok := intParam(w, q, "tail", DefaultLogTail, 0, MaxLogTail)
	if !ok {
		return
	}
	follow, ok := boolParam(w, q, "follow")
	if !ok {
		return
	}
	timestamps, ok := boolParam(w, q, "timestamps")
	if !ok {
		return
	}
	if r.Method == http.MethodHead {
		follow = false
	}
	if _, err := a.store.Get(r.Context(), c.gameID); err != nil {
		a.storeFailed(w, c, err)
		return
	}
	if a.logs == nil {
		WriteError(w, http.StatusServiceUnavailable, rtm.CodeServiceUnavailable, "engine output cannot be read by this server")
		return
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if follow && a.draining != nil {
		go func() {
			select {
			case <-a.draining:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	rc, err := a.logs.Logs(ctx, c.gameID, tail, follow, timestamps)
	switch {
	case err == nil:
	case errors.Is(err, rtm.ErrNotFound):
		WriteError(w, http.StatusNotFound, rtm.CodeRuntimeNotFound, fmt.Sprintf("game %s has no container", c.gameID))
		return
	case errors.Is(err, rtm.ErrConflict):
		WriteError(w, http.StatusConflict, rtm.CodeConflict, fmt.Sprintf("the container of game %s keeps no output to read (its logging driver)", c.gameID))
		return
	case r.Context().Err() != nil:
		return // the client left; nobody reads an answer
	case errors.Is(err, rtm.ErrUnavailable):
		c.err = err
		WriteError(w, http.StatusServiceUnavailable, rtm.CodeServiceUnavailable, "docker is unavailable; retry later")
		return
	default:
		c.err = err
		WriteError(w, http.StatusInternalServerError, rtm.CodeInternalError, "internal error")
		return
	}
	defer rc.Close()

	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	ctl := http.NewResponseController(w)
	if follow {
		// A follow stream outlives the listener's write timeout, which bounds ordinary answers.
		_ = ctl.SetWriteDeadline(time.Time{})
	}
	w.WriteHeader(http.StatusOK)
	if follow {
		_ = ctl.Flush() // the client learns at once that the stream is open
	}
	buf := make([]byte, 32<<10)
	for {
		n, rerr := rc.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return // the client left
			}
			if follow {
				if ferr := ctl.Flush(); ferr != nil {
					return
				}
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) && ctx.Err() == nil {
				// The answer has begun: the stream just ends, and the request's log line says why.
				c.err = rerr
			}
			return
		}
	}
}

// VersionInfo is the body of GET /version.
type VersionInfo struct {
	// Version is the rtmanager binary's version (set at build time), "dev" when unset.
	Version string `json:"version"`
	// GoVersion is the Go release the binary was built with, e.g. go1.26.8.
	GoVersion string `json:"go_version"`
	// Platform is the binary's GOOS/GOARCH, e.g. linux/amd64.
	Platform string `json:"platform"`
	// API is the REST API's version, APIVersion.
	API string `json:"api"`
}

func (a *api) getVersion(w http.ResponseWriter, _ *http.Request, _ *call) {
	WriteJSON(w, http.StatusOK, VersionInfo{Version: a.version, GoVersion: goruntime.Version(),
		Platform: goruntime.GOOS + "/" + goruntime.GOARCH, API: APIVersion})
}

// intParam reads the integer query parameter name (from lo to hi, def when absent or empty); a
// bad value is answered with 400.
func intParam(w http.ResponseWriter, q url.Values, name string, def, lo, hi int) (int, bool) {
	s := q.Get(name)
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, fmt.Sprintf("%s must be an integer from %d to %d", name, lo, hi))
		return 0, false
	}
	return n, true
}

// boolParam reads the boolean query parameter name (true or false, also 1 and 0; false when
// absent or empty); a bad value is answered with 400.
func boolParam(w http.ResponseWriter, q url.Values, name string) (bool, bool) {
	s := q.Get(name)
	if s == "" {
		return false, true
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, fmt.Sprintf("%s must be true or false", name))
		return false, false
	}
	return b, true
}
