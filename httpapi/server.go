// Package httpapi is RTM's internal HTTP listener: the probes (/healthz, /readyz), /metrics,
// optional pprof, and the internal REST API under /api/v1/internal.
package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sync/atomic"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Check is one readiness dependency: its name (as /readyz reports it) and a live ping.
type Check struct {
	Name string
	Ping func(ctx context.Context) error
}

// EngineAddrs tells whether a request's source address belongs to a game engine container RTM
// runs; *runtime.EngineAddrs satisfies it. IsEngine may wait for Docker, at most as long as its
// implementation bounds it and never past ctx.
type EngineAddrs interface {
	IsEngine(ctx context.Context, addr netip.Addr) bool
}

// Options configure the server.
type Options struct {
	Checks  []Check // in the order /readyz runs them
	Metrics http.Handler
	PProf   bool
	API     http.Handler // the REST API, mounted at /api/v1/internal/
	// Engines, when set, refuses every request (every route: probes, /metrics, pprof and the
	// API) whose source address belongs to an engine, before anything else looks at it. nil
	// refuses nothing; cmd/manager always sets it.
	Engines EngineAddrs
	Log     *slog.Logger
}

// NewHandler returns the listener's handler.
func NewHandler(o Options) http.Handler {
	mux := newMux(o)
	if o.Engines == nil {
		return mux
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return refuseEngines(mux, o.Engines, log)
}

// refuseEngines answers 403 forbidden, with the contract's envelope, to a request whose source
// address (the connection's, never a forwarding header; IPv4-mapped IPv6 unmapped) engines says
// is an engine's, or whose source address cannot be parsed (the listener is TCP, so that never
// happens in service); it passes every other request to next. Refusals are logged at warn, at
// most one line per second (the line counts the ones not logged), since a hostile engine may
// send many.
func refuseEngines(next http.Handler, engines EngineAddrs, log *slog.Logger) http.Handler {
	var lastLog, suppressed atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		// An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
		if err == nil && !engines.IsEngine(r.Context(), ap.Addr().Unmap()) {
			next.ServeHTTP(w, r)
			return
		}
		now, last := time.Now().UnixNano(), lastLog.Load()
		if now-last >= int64(time.Second) && lastLog.CompareAndSwap(last, now) {
			log.Warn("request from a game engine refused", "remote_addr", trunc(r.RemoteAddr),
				"method", trunc(r.Method), "path", trunc(r.URL.EscapedPath()), "not_logged_since", suppressed.Swap(0))
		} else {
			suppressed.Add(1)
		}
		WriteError(w, http.StatusForbidden, rtm.CodeForbidden,
			"requests from game engine containers are refused on every route")
	})
}

func newMux(o Options) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		for _, c := range o.Checks {
			if err := c.Ping(ctx); err != nil {
				WriteError(w, http.StatusServiceUnavailable, rtm.CodeServiceUnavailable, fmt.Sprintf("%s: %v", c.Name, err))
				return
			}
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	if o.PProf {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if o.API != nil {
		mux.Handle("/api/v1/internal/", o.API)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, rtm.CodeInvalidRequest, "no route "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// NewServer returns an http.Server with timeouts on every phase.
func NewServer(h http.Handler, writeTimeout time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}

// ErrorBody is the contract's error envelope.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of the envelope.
type ErrorDetail struct {
	Code    rtm.ErrorCode `json:"code"`
	Message string        `json:"message"`
}

// WriteJSON writes v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes the error envelope.
func WriteError(w http.ResponseWriter, status int, code rtm.ErrorCode, msg string) {
	WriteJSON(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: msg}})
}
