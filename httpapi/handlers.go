package httpapi

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Paging bounds of the list routes.
const (
	DefaultListLimit       = 100
	DefaultOperationsLimit = 50
	MaxLimit               = 500
)

// RuntimeList is the body of GET /runtimes: one page of records ordered by game id.
type RuntimeList struct {
	Runtimes []rtm.Record `json:"runtimes"`
	// NextCursor, when set, fetches the next page as ?cursor=; it is absent on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// OperationList is the body of GET /runtimes/{game_id}/operations, newest first.
type OperationList struct {
	Operations []rtm.Operation `json:"operations"`
}

// Health is the body of GET /runtimes/{game_id}/health: the game's health snapshot, or status
// unknown with null updated_at when nothing has been observed yet.
type Health struct {
	GameID                   string              `json:"game_id"`
	Status                   rtm.HealthStatus    `json:"status"`
	LastEventType            rtm.HealthEventType `json:"last_event_type"`
	ConsecutiveProbeFailures int                 `json:"consecutive_probe_failures"`
	LastProbeAt              *time.Time          `json:"last_probe_at"`
	ExitCode                 *int                `json:"exit_code"`
	OOMKilled                bool                `json:"oom_killed"`
	DockerState              string              `json:"docker_state"`
	UpdatedAt                *time.Time          `json:"updated_at"`
}

func (a *api) listRuntimes(w http.ResponseWriter, r *http.Request, c *call) {
	q := r.URL.Query()
	var f rtm.ListFilter
	if s := q.Get("status"); s != "" {
		if !rtm.Status(s).Known() {
			WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, fmt.Sprintf("status %q is not one of %s", trunc(s), rtm.StatusNames()))
			return
		}
		f.Status = rtm.Status(s)
	}
	limit, ok := limitParam(w, q, DefaultListLimit)
	if !ok {
		return
	}
	if cur := q.Get("cursor"); cur != "" {
		after, err := decodeCursor(cur)
		if err != nil {
			WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, "cursor is not one this API returned")
			return
		}
		f.After = after
	}
	f.Limit = limit + 1 // one more than asked tells whether another page exists
	recs, err := a.store.List(r.Context(), f)
	if err != nil {
		a.storeFailed(w, c, err)
		return
	}
	out := RuntimeList{Runtimes: recs}
	if out.Runtimes == nil {
		out.Runtimes = []rtm.Record{}
	}
	if len(recs) > limit {
		out.Runtimes = recs[:limit]
		out.NextCursor = encodeCursor(recs[limit-1].GameID)
	}
	WriteJSON(w, http.StatusOK, out)
}

func (a *api) getRuntime(w http.ResponseWriter, r *http.Request, c *call) {
	rec, err := a.store.Get(r.Context(), c.gameID)
	if err != nil {
		a.storeFailed(w, c, err)
		return
	}
	WriteJSON(w, http.StatusOK, rec)
}

// listOperations answers 404 only when the game has neither operations nor a record: a request
// refused for an unknown game leaves an operation row an operator may want to see.
func (a *api) listOperations(w http.ResponseWriter, r *http.Request, c *call) {
	limit, ok := limitParam(w, r.URL.Query(), DefaultOperationsLimit)
	if !ok {
		return
	}
	ops, err := a.store.Operations(r.Context(), c.gameID, limit)
	if err != nil {
		a.storeFailed(w, c, err)
		return
	}
	if len(ops) == 0 {
		if _, err := a.store.Get(r.Context(), c.gameID); err != nil {
			a.storeFailed(w, c, err)
			return
		}
		ops = []rtm.Operation{}
	}
	WriteJSON(w, http.StatusOK, OperationList{Operations: ops})
}

func (a *api) getHealth(w http.ResponseWriter, r *http.Request, c *call) {
	if _, err := a.store.Get(r.Context(), c.gameID); err != nil {
		a.storeFailed(w, c, err)
		return
	}
	h, err := a.store.Health(r.Context(), c.gameID)
	if errors.Is(err, rtm.ErrNotFound) {
		WriteJSON(w, http.StatusOK, Health{GameID: c.gameID, Status: rtm.HealthUnknown})
		return
	}
	if err != nil {
		a.storeFailed(w, c, err)
		return
	}
	updated := h.UpdatedAt
	WriteJSON(w, http.StatusOK, Health{GameID: h.GameID, Status: h.Status, LastEventType: h.LastEventType,
		ConsecutiveProbeFailures: h.ConsecutiveProbeFailures, LastProbeAt: h.LastProbeAt, ExitCode: h.ExitCode,
		OOMKilled: h.OOMKilled, DockerState: h.DockerState, UpdatedAt: &updated})
}

// ImageBody is the body of start and patch.
type ImageBody struct {
	ImageRef string `json:"image_ref"`
}

// imageRef reads the ImageBody of start and patch; a body without image_ref is answered with 400.
func imageRef(w http.ResponseWriter, r *http.Request) (string, bool) {
	var body ImageBody
	if !decodeBody(w, r, &body, true) {
		return "", false
	}
	if body.ImageRef == "" {
		WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, "image_ref is required")
		return "", false
	}
	return body.ImageRef, true
}

// StopBody is the body of stop; an empty body is {}.
type StopBody struct {
	// Reason is kept with the request; "unspecified" when absent, as for stop jobs.
	Reason string `json:"reason"`
}

func (a *api) start(w http.ResponseWriter, r *http.Request, c *call) {
	ref, ok := imageRef(w, r)
	if !ok {
		return
	}
	req := a.request(r, c, rtm.OpStart)
	req.ImageRef = ref // validated by the intake
	a.submit(w, r, c, req, nil)
}

func (a *api) stop(w http.ResponseWriter, r *http.Request, c *call) {
	var body StopBody
	if !decodeBody(w, r, &body, false) {
		return
	}
	if len(body.Reason) > rtm.MaxFieldBytes {
		WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, fmt.Sprintf("reason is longer than %d bytes", rtm.MaxFieldBytes))
		return
	}
	// JSON may carry \u0000, which PostgreSQL text cannot hold: refuse it here, as the client's
	// error, rather than fail to record it (a 503).
	if strings.ContainsRune(body.Reason, 0) {
		WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, "reason must not contain NUL characters")
		return
	}
	req := a.request(r, c, rtm.OpStop)
	req.Reason = body.Reason
	if req.Reason == "" {
		req.Reason = "unspecified"
	}
	a.submit(w, r, c, req, nil)
}

func (a *api) restart(w http.ResponseWriter, r *http.Request, c *call) {
	var body struct{}
	if !decodeBody(w, r, &body, false) {
		return
	}
	a.submit(w, r, c, a.request(r, c, rtm.OpRestart), nil)
}

// patch validates the new image against the image the game runs (semver, same major and minor,
// allow-list) before recording anything; the record is read again under the submission's lock,
// and a game whose image changed in between is refused with conflict rather than patched from an
// image that was not checked.
func (a *api) patch(w http.ResponseWriter, r *http.Request, c *call) {
	ref, ok := imageRef(w, r)
	if !ok {
		return
	}
	rec, ok := a.current(w, r, c)
	if !ok {
		return
	}
	if rec == nil {
		WriteError(w, http.StatusNotFound, rtm.CodeRuntimeNotFound, fmt.Sprintf("game %s has no runtime", c.gameID))
		return
	}
	current := imageOf(rec)
	next, err := rtm.CheckPatch(current, ref, a.allowed)
	if err != nil {
		writeCoded(w, rtm.CodeOf(err, rtm.CodeImageRefNotSemver), rtm.MessageOf(err))
		return
	}
	req := a.request(r, c, rtm.OpPatch)
	req.ImageRef, req.OldImageRef = next.Ref, current
	a.submit(w, r, c, req, func(rec *rtm.Record) *rtm.Answer {
		if rec != nil && imageOf(rec) != current {
			return &rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeConflict,
				Message: fmt.Sprintf("the image of game %s changed while the patch was checked; retry", c.gameID)}
		}
		return nil
	})
}

func (a *api) cleanup(w http.ResponseWriter, r *http.Request, c *call) {
	a.submit(w, r, c, a.request(r, c, rtm.OpCleanupContainer), nil)
}

// imageOf is the image a patch replaces: the one running, else the one asked for.
func imageOf(rec *rtm.Record) string {
	if rec.CurrentImageRef != "" {
		return rec.CurrentImageRef
	}
	return rec.DesiredImageRef
}

// limitParam reads ?limit= (1 to MaxLimit, def when absent); a bad value is answered with 400.
func limitParam(w http.ResponseWriter, q url.Values, def int) (int, bool) {
	s := q.Get("limit")
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxLimit {
		WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, fmt.Sprintf("limit must be an integer from 1 to %d", MaxLimit))
		return 0, false
	}
	return n, true
}

// The cursor is the last game id of the page, base64url-encoded: opaque to callers, so that
// its form may change without breaking them.
func encodeCursor(gameID string) string { return base64.RawURLEncoding.EncodeToString([]byte(gameID)) }

func decodeCursor(s string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return "", err
	}
	if err := rtm.ValidateGameID(string(b)); err != nil {
		return "", err
	}
	return string(b), nil
}
