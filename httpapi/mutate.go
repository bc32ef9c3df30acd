package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/propagation"

	rtm "github.com/galaxy-platform/rtmanager"
)

// MaxBodyBytes bounds a request body; a larger one is 400 invalid_request (CONTRACT §6).
const MaxBodyBytes = 1 << 20

// Reading a pending mutation's answer: the first look after pollMin, then doubling to pollMax
// without Answers, to answerPoll with it (the commit wakes the call; the poll only finds answers
// other RTM processes committed).
const (
	pollMin = 25 * time.Millisecond
	pollMax = 200 * time.Millisecond
	// answerPoll is the slowest read of a pending answer when commits wake the call.
	answerPoll = time.Second
)

// StatusFor returns the HTTP status the API answers an error code with (CONTRACT §6). The start
// failures the reconciler reports (image_pull_failed, container_start_failed) are 422 like
// start_config_invalid: the request as made cannot be carried out. An unknown code is 500.
func StatusFor(code rtm.ErrorCode) int {
	switch code {
	case rtm.CodeInvalidRequest, rtm.CodeInvalidJob:
		return http.StatusBadRequest
	case rtm.CodeUnauthenticated:
		return http.StatusUnauthorized
	case rtm.CodeForbidden:
		return http.StatusForbidden
	case rtm.CodeRuntimeNotFound:
		return http.StatusNotFound
	case rtm.CodeConflict, rtm.CodeRuntimeRunning, rtm.CodePatchRolledBack:
		return http.StatusConflict
	case rtm.CodeImageRefNotSemver, rtm.CodeSemverPatchOnly, rtm.CodeStartConfigInvalid,
		rtm.CodeImagePullFailed, rtm.CodeContainerStartFailed:
		return http.StatusUnprocessableEntity
	case rtm.CodeServiceUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// writeCoded writes the envelope with the status StatusFor gives code.
func writeCoded(w http.ResponseWriter, code rtm.ErrorCode, msg string) {
	if code == "" {
		code = rtm.CodeInternalError
	}
	WriteError(w, StatusFor(code), code, msg)
}

// storeFailed answers a store error: not found is 404 runtime_not_found; anything else means the
// database could not do its part, 503 service_unavailable, with the cause kept for the log only.
func (a *api) storeFailed(w http.ResponseWriter, c *call, err error) {
	if errors.Is(err, rtm.ErrNotFound) {
		WriteError(w, http.StatusNotFound, rtm.CodeRuntimeNotFound, fmt.Sprintf("game %s has no runtime", c.gameID))
		return
	}
	c.err = err
	WriteError(w, http.StatusServiceUnavailable, rtm.CodeServiceUnavailable, "the runtime store is unavailable; retry later")
}

// request starts a REST request for c's game, carrying the request span's trace context so the
// reconcile that answers it joins the same trace.
func (a *api) request(r *http.Request, c *call, kind rtm.OpKind) rtm.Request {
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(r.Context(), carrier)
	return rtm.Request{Channel: rtm.ChannelREST, RequestID: c.id, GameID: c.gameID, Kind: kind,
		Source: c.caller.source(), TraceParent: carrier["traceparent"], ReceivedAt: time.Now().UTC()}
}

// current reads c's game record: nil when it has none. A store failure is answered (503) and
// reported as false.
func (a *api) current(w http.ResponseWriter, r *http.Request, c *call) (*rtm.Record, bool) {
	rec, err := a.store.Get(r.Context(), c.gameID)
	if errors.Is(err, rtm.ErrNotFound) {
		return nil, true
	}
	if err != nil {
		a.storeFailed(w, c, err)
		return nil, false
	}
	return rec, true
}

// submit hands req to the intake (validate, admit under the record's lock, record, enqueue),
// then answers: at once when admission answered (a refusal leaves no trace: see rtm.Intake),
// else after waiting for the reconciler's answer: 200 with the fresh record on success, the
// envelope on failure, 202 with the record as it stands when the wait times out or RTM begins to
// shut down. guard, when set, refuses on the record as it stands under the lock.
func (a *api) submit(w http.ResponseWriter, r *http.Request, c *call, req rtm.Request, guard rtm.Guard) {
	ctx := r.Context()
	sub, err := a.intake.Take(ctx, req, guard)
	if err != nil {
		a.storeFailed(w, c, err)
		return
	}
	if sub.Answer != nil {
		a.answer(w, r, c, *sub.Answer, sub.Record)
		return
	}
	ans, err := a.awaitAnswer(ctx, req.RequestID)
	if ans != nil {
		a.answer(w, r, c, *ans, nil)
		return
	}
	if ctx.Err() != nil {
		// The caller left; nobody reads this, and the store is not asked again for them.
		WriteJSON(w, http.StatusAccepted, sub.Record)
		return
	}
	rec, gerr := a.store.Get(ctx, req.GameID)
	if gerr != nil {
		a.storeFailed(w, c, errors.Join(err, gerr))
		return
	}
	w.Header().Set("Location", BasePath+"/runtimes/"+req.GameID)
	WriteJSON(w, http.StatusAccepted, rec)
}

// answer replies from a request's answer: success is 200 with rec (read afresh when nil), a
// failure the envelope with the answer's code.
func (a *api) answer(w http.ResponseWriter, r *http.Request, c *call, ans rtm.Answer, rec *rtm.Record) {
	if ans.Outcome != rtm.OutcomeSucceeded {
		writeCoded(w, ans.Code, ans.Message)
		return
	}
	if rec == nil {
		var err error
		if rec, err = a.store.Get(r.Context(), c.gameID); err != nil {
			a.storeFailed(w, c, err)
			return
		}
	}
	WriteJSON(w, http.StatusOK, rec)
}

// awaitAnswer waits for the request's answer until it comes, ctx ends, the wait timeout passes
// or the listener starts to drain (Draining: the caller gets 202 at once rather than a
// connection cut when the shutdown budget runs out; the request is recorded and will be
// answered); it returns nil and the last store error (if any) when no answer came. It reads the
// answer when the store reports the commit that answered it (Answers) and, for an answer
// committed by another RTM process or when no Answers is wired, every answerPoll (from pollMin,
// doubling). A failed read is retried: the request is recorded and will be answered whether or
// not this caller sees it.
func (a *api) awaitAnswer(ctx context.Context, requestID string) (*rtm.Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, a.wait)
	defer cancel()
	var woken <-chan struct{}
	poll := pollMax
	if a.answers != nil {
		var done func()
		woken, done = a.answers.wait(requestID) // before the first read: no commit is missed
		defer done()
		poll = answerPoll
	}
	delay := pollMin
	t := time.NewTimer(delay)
	defer t.Stop()
	var lastErr error
	for {
		select {
		case <-ctx.Done():
			return nil, lastErr
		case <-a.draining:
			return nil, lastErr
		case <-t.C:
			delay = min(2*delay, poll)
		case <-woken:
		}
		ans, err := a.store.RequestAnswer(ctx, rtm.ChannelREST, requestID)
		switch {
		case err == nil && ans != nil:
			return ans, nil
		case err != nil && ctx.Err() == nil:
			lastErr = err
		case err == nil:
			lastErr = nil
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(delay)
	}
}

// decodeBody reads a JSON object of at most MaxBodyBytes into dst, refusing other content types,
// unknown fields, malformed JSON and anything after the object; an empty body leaves dst as it is
// unless required. It answers every refusal with 400 invalid_request and then reports false.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any, required bool) bool {
	fail := func(msg string) bool {
		WriteError(w, http.StatusBadRequest, rtm.CodeInvalidRequest, msg)
		return false
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return fail("Content-Type must be application/json")
		}
	}
	tooLarge := fmt.Sprintf("request body is larger than %d bytes", MaxBodyBytes)
	if r.ContentLength > MaxBodyBytes {
		return fail(tooLarge)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		// Only white space may follow the object.
		if _, err = dec.Token(); err == io.EOF {
			return true
		} else if err == nil {
			return fail("request body holds more than one JSON value")
		}
	}
	var maxErr *http.MaxBytesError
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF) && !required:
		return true
	case errors.Is(err, io.EOF):
		return fail("request body is required")
	case errors.As(err, &maxErr):
		return fail(tooLarge)
	case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF):
		return fail("request body is not valid JSON")
	case errors.As(err, &typeErr):
		if typeErr.Field != "" {
			return fail(fmt.Sprintf("field %s has the wrong type", trunc(typeErr.Field)))
		}
		return fail("request body must be a JSON object")
	}
	// DisallowUnknownFields reports `json: unknown field "x"`; other decoder errors are alike
	// and name nothing secret.
	return fail("request body: " + trunc(err.Error()))
}
