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
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Check is one readiness dependency: its name (as /readyz reports it) and a live ping.
type Check struct {
	Name string
	Ping func(ctx context.Context) error
}

// Options configure the server.
type Options struct {
	Checks  []Check // in the order /readyz runs them
	Metrics http.Handler
	PProf   bool
	API     http.Handler // the REST API, mounted at /api/v1/internal/
	Log     *slog.Logger
}

// NewHandler returns the listener's handler.
func NewHandler(o Options) http.Handler {
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
