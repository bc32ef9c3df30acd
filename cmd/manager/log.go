package main

import (
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
