package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/telemetry"
)

// newLogger returns the process logger: JSON or text on stderr at the configured level, with
// trace and span ids on lines logged inside a traced operation.
func newLogger(cfg config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, opts)
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	return slog.New(telemetry.LogHandler{Handler: h})
}

// controllerLogHandler is the handler behind controller-runtime's logr logger. A shutdown cancels
// the reconciles in flight, and controller-runtime logs each of them as "Reconciler error" at
// ERROR with a context.Canceled error (logr puts it under "err"): such a line is logged at debug
// instead, so that a normal stop logs no error. Every other line passes unchanged.
type controllerLogHandler struct{ slog.Handler }

func (h controllerLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError && cancelled(r) {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return h.Handler.Handle(ctx, r)
}

func (h controllerLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return controllerLogHandler{h.Handler.WithAttrs(as)}
}

func (h controllerLogHandler) WithGroup(name string) slog.Handler {
	return controllerLogHandler{h.Handler.WithGroup(name)}
}

// cancelled reports whether r carries an error (under "err", as logr logs it) that is, or wraps,
// context.Canceled.
func cancelled(r slog.Record) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "err" {
			return true
		}
		if err, ok := a.Value.Any().(error); ok && errors.Is(err, context.Canceled) {
			found = true
		}
		return false
	})
	return found
}

// redisLogger routes go-redis's own lines (pool and connection troubles it does not return as
// errors) into slog, at warn: "redis client" with the line as detail.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client", "detail", fmt.Sprintf(format, v...))
}
