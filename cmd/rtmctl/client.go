package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// The internal REST API (CONTRACT §6).
const (
	apiBase         = "/api/v1/internal"
	callerHeader    = "X-Galaxy-Caller"
	requestIDHeader = "X-Request-Id"
	// maxBody bounds what rtmctl reads of an answer; a full page of 500 records is far smaller.
	maxBody = 64 << 20
)

// apiError is an answer of the REST API outside 2xx: the contract's error envelope, or what
// stood in for it when the body was not one (code "http_<status>").
type apiError struct {
	Status    int
	Code      string
	Message   string
	RequestID string
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// client calls the internal REST API of one RTM.
type client struct {
	server string // as the operator gave it, for messages
	base   string // scheme://host[:port][/prefix] without a trailing slash
	caller string
	token  string
	http   *http.Client
}

// response is a 2xx answer.
type response struct {
	status    int
	body      []byte
	requestID string
}

// client returns the API client the global flags describe; a bad --server is a usage error.
func (a *app) client() (*client, error) {
	server := strings.TrimSpace(a.server)
	raw := server
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, usagef("--server must be an http(s) URL such as %s, got %q", defaultServer, server)
	}
	base := strings.TrimSuffix(strings.TrimRight(u.String(), "/"), apiBase)
	token := a.token
	if token == "" {
		token = a.getenv(envToken)
	}
	return &client{server: server, base: base, caller: a.caller, token: token,
		http: &http.Client{Timeout: a.timeout}}, nil
}

// do sends one request to path (under apiBase) and returns the 2xx answer. Every other outcome is
// a *failure: an *apiError for an error answer, or the reason the server could not be reached.
func (c *client) do(ctx context.Context, method, path string, query url.Values, body any) (*response, error) {
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.transportFailure(ctx, method, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, c.transportFailure(ctx, method, err)
	}
	rid := resp.Header.Get(requestIDHeader)
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return &response{status: resp.StatusCode, body: b, requestID: rid}, nil
	}
	return nil, &failure{err: decodeAPIError(resp.StatusCode, b, rid)}
}

// newRequest builds a request to path (under apiBase) with the caller, token and, for a body,
// its JSON.
func (c *client) newRequest(ctx context.Context, method, path string, query url.Values, body any) (*http.Request, error) {
	target := c.base + apiBase + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding the request body: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, failf("building the request: %v", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "rtmctl/"+versionString())
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.caller != "" {
		req.Header.Set(callerHeader, c.caller)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// stream sends a GET to path and returns the body of a 2xx answer, open, for the caller to read
// and close. The answer's headers must come within the client's timeout; the body is read
// without a deadline when follow is set (a stream that may rightly last hours), else within the
// same timeout, counted from the request. Errors are those of do.
func (c *client) stream(ctx context.Context, path string, query url.Values, follow bool) (io.ReadCloser, error) {
	sctx, cancel := context.WithCancel(ctx)
	req, err := c.newRequest(sctx, http.MethodGet, path, query, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Accept", "text/plain, application/json")
	var timedOut atomic.Bool
	timer := time.AfterFunc(c.http.Timeout, func() { timedOut.Store(true); cancel() })
	hc := *c.http
	hc.Timeout = 0 // the timer above bounds what must be bounded
	resp, err := hc.Do(req)
	if err == nil && follow && !timer.Stop() {
		resp.Body.Close()
		err = context.DeadlineExceeded
	}
	if err != nil {
		timer.Stop()
		cancel()
		if timedOut.Load() && ctx.Err() == nil {
			err = context.DeadlineExceeded
		}
		return nil, c.transportFailure(ctx, http.MethodGet, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		defer cancel()
		defer timer.Stop()
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		return nil, &failure{err: decodeAPIError(resp.StatusCode, b, resp.Header.Get(requestIDHeader))}
	}
	return &streamBody{ReadCloser: resp.Body, stop: func() { timer.Stop(); cancel() }}, nil
}

// streamBody is an answer's body that ends its request's context when closed.
type streamBody struct {
	io.ReadCloser
	stop func()
}

func (b *streamBody) Close() error {
	err := b.ReadCloser.Close()
	b.stop()
	return err
}

// decodeAPIError reads the contract's envelope; anything else (a proxy's page, a server that is
// not RTM) becomes code http_<status> with the start of the body as message.
func decodeAPIError(status int, body []byte, requestID string) *apiError {
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error != nil && env.Error.Code != "" {
		return &apiError{Status: status, Code: env.Error.Code, Message: env.Error.Message, RequestID: requestID}
	}
	msg := strings.Join(strings.Fields(string(body)), " ")
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &apiError{Status: status, Code: fmt.Sprintf("http_%d", status), Message: msg, RequestID: requestID}
}

// transportFailure explains why no answer came: interrupted, timed out or unreachable. A
// mutation that got no answer may still be carried out, and the hint says so.
func (c *client) transportFailure(ctx context.Context, method string, err error) error {
	var hints []string
	if method != http.MethodGet {
		hints = append(hints, "the request may still be carried out: check with rtmctl get runtime / rtmctl ops")
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case ctx.Err() != nil:
		return &failure{err: errors.New("interrupted"), hints: hints}
	case isTimeout(err):
		return &failure{err: fmt.Errorf("timeout: no answer from RTM at %s within %s (--timeout)", c.server, c.http.Timeout), hints: hints}
	}
	hints = append(hints, "is rtmanager running there? set the address with --server or "+envServer)
	return &failure{err: fmt.Errorf("cannot reach RTM at %s: %v", c.server, err), hints: hints}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &t) && t.Timeout()
}

// hintsFor suggests what to do about an API error.
func (c *client) hintsFor(e *apiError, gameID string) []string {
	var hs []string
	switch e.Code {
	case "unauthenticated":
		if c.token == "" {
			hs = append(hs, "this RTM requires a token: pass --token or set "+envToken)
		} else {
			hs = append(hs, "the token was refused: check --token / "+envToken)
		}
	case "forbidden":
		hs = append(hs, fmt.Sprintf("mutations need --caller admin or gm (sent %q)", c.caller))
	case "runtime_running":
		hs = append(hs, "stop it first: rtmctl stop "+gameID)
	case "patch_rolled_back":
		hs = append(hs, "the previous image runs again; see rtmctl ops "+gameID+" and rtmctl health "+gameID)
	case "service_unavailable":
		hs = append(hs, "RTM or one of its dependencies is down: curl "+c.base+"/readyz names which")
	}
	return hs
}

// asAPIError finds the failure and the API's error answer in err; false when err is not an
// error answer of the API.
func asAPIError(err error, ae **apiError, f **failure) bool {
	return errors.As(err, f) && errors.As(err, ae)
}
