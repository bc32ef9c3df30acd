// Command rtmanager is Runtime Manager: it runs one Docker container per Galaxy game, driven by
// Lobby's job streams and the operators' REST API, reconciling desired state in PostgreSQL
// with what Docker shows. Configuration comes from the environment (see docs/examples.md).
//
// main only wires: it reads config, builds the adapters, the controller and its sources, serves
// the listener and runs until SIGINT or SIGTERM; a SIGHUP runs a full reconcile pass.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/redis/go-redis/v9"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/probe"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// Exit codes: 2 for bad configuration, 1 for a failed dependency at start-up.
const (
	exitConfig = 2
	exitStart  = 1
)

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("rtmanager", version)
		return
	}
	os.Exit(run())
}

func run() int {
	// Until the configuration is loaded, lines go out in the format asked for (JSON when that is
	// not a known format), at info.
	early := newLogger(config.Config{LogFormat: os.Getenv("RTMANAGER_LOG_FORMAT"), LogLevel: "info"})
	unknown := config.Unknown(os.Environ())
	for _, u := range unknown {
		early.Warn("unknown configuration variable", "variable", u.Name, "closest", u.Closest)
	}
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		log := early
		var ce *config.Error
		if errors.As(err, &ce) {
			log.Error("invalid configuration", "variable", ce.Var, "reason", ce.Reason)
		} else {
			log.Error("invalid configuration", "error", err)
		}
		return exitConfig
	}
	if cfg.StrictEnv && len(unknown) > 0 {
		early.Error("invalid configuration", "variable", unknown[0].Name,
			"reason", "unknown variable (RTMANAGER_STRICT_ENV=true); closest known name: "+unknown[0].Closest)
		return exitConfig
	}
	log := newLogger(cfg)
	ctrllog.SetLogger(logr.FromSlogHandler(controllerLogHandler{log.Handler()}))
	redis.SetLogger(redisLogger{log})
	log.Info("starting rtmanager", "version", version, "config", cfg)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, log); err != nil {
		if step := stepOf(err); step != "" {
			log.Error("start-up failed", "step", step, "error", err)
		}
		return exitStart
	}
	return 0
}

// stepError names the start-up step that failed.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func step(name string, err error) error {
	if err == nil {
		return nil
	}
	return &stepError{step: name, err: err}
}

func stepOf(err error) string {
	var se *stepError
	if errors.As(err, &se) {
		return se.step
	}
	return ""
}

// serve runs the start-up sequence of the runbook (setup.go: one named step each), then the
// workers until ctx ends, then shuts down. It returns an error when a start-up step failed (a
// *stepError) or when the listener failed while running; a signal-driven shutdown returns nil.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	// SIGHUP asks for a manual reconcile pass (docs/runbook.md); caught from the start, so that
	// it never kills the process, and one that comes during start-up runs a pass once it is up.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// Stopping, after a signal or a failed start-up step, is one budget (see shutdown).
	stop := newShutdown(cfg.ShutdownTimeout)
	defer stop.close(log)

	m := &manager{cfg: cfg, log: log, stop: stop}
	for _, step := range m.startup() {
		if err := step(ctx); err != nil {
			return err
		}
	}
	wctx, cancelWorkers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWorkers()
	wg := m.runWorkers(wctx, manualPasses(ctx, hup))

	var failure error
	select {
	case <-ctx.Done():
	case err := <-m.srvDone:
		failure = fmt.Errorf("internal http listener failed: %w", err)
		log.Error("internal http listener failed", "error", err)
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String(), "margin", shutdownMargin.String())
	stop.drain(m.srv, cancelWorkers, wg, log)
	return failure
}

// ownerID identifies this process in the leases it holds.
func ownerID() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}

// manualPasses turns the signals received on sig into the reconcile ticker's manual-pass
// triggers until ctx ends; signals that come while a pass is still waiting to start are merged
// into it.
func manualPasses(ctx context.Context, sig <-chan os.Signal) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}

// diagnose is the reconciler's per-start diagnostic: Lobby's lookup, or none.
func diagnose(l *probe.Lobby) func(context.Context, string) {
	if l == nil {
		return nil
	}
	return l.Diagnose
}
