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
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/redis/go-redis/v9"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/config"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/httpapi"
	"github.com/galaxy-platform/rtmanager/probe"
	"github.com/galaxy-platform/rtmanager/publisher"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/sources"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/telemetry"
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

// serve runs the start-up sequence of the runbook, then the workers until ctx ends, then shuts
// down. It returns an error when a start-up step failed (a *stepError) or when the listener
// failed while running; a signal-driven shutdown returns nil.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	// SIGHUP asks for a manual reconcile pass (docs/runbook.md); caught from the start, so that
	// it never kills the process, and one that comes during start-up runs a pass once it is up.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// Stopping, after a signal or a failed start-up step, is one budget (see shutdown).
	stop := newShutdown(cfg.ShutdownTimeout)
	defer stop.close(log)

	// 4 comes first in construction only: the store, the coordination and the Docker adapter
	// report their counts, spans and latencies through it; the exporter is reported started in
	// its place in the sequence.
	tel, err := telemetry.Setup(ctx, cfg.TelemetryExporter, version)
	if err != nil {
		return step("telemetry", err)
	}
	stop.onClose(func(ctx context.Context) { _ = tel.Shutdown(ctx) })
	metrics, err := telemetry.NewMetrics(tel.Meter("rtmanager"))
	if err != nil {
		return step("telemetry", err)
	}

	// 1. PostgreSQL and migrations. Every connection and call has a deadline, so a black-holed
	// database fails these steps within about the connect timeout.
	timeouts := store.Timeouts{Connect: cfg.PostgresConnectTimeout, Operation: cfg.PostgresOperationTimeout,
		Statement: cfg.PostgresStatementTimeout, Lock: cfg.PostgresLockTimeout, MigrationLock: cfg.PostgresMigrationLockTimeout}
	if err := store.Migrate(ctx, cfg.PostgresDSN, timeouts); err != nil {
		return step("postgres migrations", err)
	}
	log.Info("migrations applied")
	// Rows committed before the publisher exists (the boot pass) wait in the outbox for its
	// first poll.
	var pub atomic.Pointer[publisher.Publisher]
	// A REST mutation waiting for its answer wakes when the commit that answers it is done.
	answers := httpapi.NewAnswers()
	st, err := store.Open(ctx, cfg.PostgresDSN, store.Options{Timeouts: timeouts, MaxConns: int32(cfg.PostgresMaxConns), OnAnswered: answers.Notify, OnOutbox: func(rows []rtm.OutboxEntry) {
		metrics.Answered(context.Background(), rows)
		if p := pub.Load(); p != nil {
			p.Offer(rows)
		}
	}})
	if err != nil {
		return step("postgres", err)
	}
	stop.onClose(func(context.Context) { st.Close() })
	if err := st.Ping(ctx); err != nil {
		return step("postgres ping", err)
	}
	log.Info("postgres ping ok")

	// 2. Redis.
	rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, Password: cfg.RedisPassword,
		DialTimeout: 3 * time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second, PoolSize: cfg.RedisPoolSize,
		ContextTimeoutEnabled: true})
	stop.onClose(func(context.Context) { _ = rdb.Close() })
	co := coord.New(rdb, ownerID(), cfg.GameLeaseTTL, coord.WithStreamMaxLen(cfg.StreamRetention),
		coord.WithLeaseObserver(metrics))
	if err := co.Ping(ctx); err != nil {
		return step("redis ping", err)
	}
	log.Info("redis ping ok")
	hbCtx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHeartbeat()
	if err := co.Heartbeat(hbCtx); err != nil {
		return step("redis", err)
	}

	if err := metrics.ObserveGauges(tel.Meter("rtmanager"), st, co,
		map[rtm.JobKind]string{rtm.StartJobs: cfg.StartJobsStream, rtm.StopJobs: cfg.StopJobsStream}); err != nil {
		return step("telemetry", err)
	}

	// 3. Docker and its network.
	dk, err := runtime.New(runtime.Options{Host: cfg.DockerHost, Network: cfg.DockerNetwork, Logger: log,
		Tracer: tel.Tracer("rtmanager/runtime"), Meter: tel.Meter("rtmanager")})
	if err != nil {
		return step("docker", err)
	}
	stop.onClose(func(context.Context) { _ = dk.Close() })
	if err := dk.Ping(ctx); err != nil {
		return step("docker ping", err)
	}
	log.Info("docker ping ok")
	if err := dk.CheckNetwork(ctx); err != nil {
		return step("docker network", err)
	}
	log.Info("docker network found", "network", cfg.DockerNetwork)
	// The listener refuses requests from engine containers; it learns their addresses before it
	// opens and follows the network from then on.
	engines := runtime.NewEngineAddrs(dk, runtime.EngineAddrsOptions{Logger: log})
	if err := engines.Refresh(ctx); err != nil {
		return step("docker network", err)
	}
	engCtx, stopEngines := context.WithCancel(context.WithoutCancel(ctx))
	engDone := make(chan struct{})
	go func() { defer close(engDone); _ = engines.Run(engCtx) }()
	stop.onClose(func(ctx context.Context) {
		stopEngines()
		select {
		case <-engDone:
		case <-ctx.Done():
		}
	})

	// 4. Telemetry.
	log.Info("telemetry exporter started", "exporter", cfg.TelemetryExporter)

	// The reconciler and its controller.
	prober := probe.New(cfg.EnginePort, cfg.ProbeTarget == config.ProbeTargetContainerIP, cfg.ProbeTimeout)
	dirs := runtime.StateDirs{Root: cfg.GameStateRoot, Mode: os.FileMode(cfg.GameStateDirMode),
		UID: cfg.GameStateOwnerUID, GID: cfg.GameStateOwnerGID}
	cache := runtime.NewCache()
	rec, err := controllers.New(st, dk, co, dirs, prober, controllers.Options{
		Network: cfg.DockerNetwork, EnginePort: cfg.EnginePort, StateMount: cfg.EngineStateMount,
		StopTimeout: cfg.EngineStopTimeout, MemoryBytes: cfg.EngineMemoryBytes, NanoCPUs: cfg.EngineNanoCPUs,
		PidsLimit: cfg.EnginePidsLimit, User: cfg.EngineUser, ReadOnlyRoot: cfg.EngineReadOnlyRoot,
		PatchVerifyTimeout: cfg.PatchVerifyTimeout, ProbeInterval: cfg.ProbeInterval, ProbeThreshold: cfg.ProbeFailureThreshold,
		RetryAttempts: cfg.RetryAttempts, RetryWindow: cfg.RetryWindow,
		Cache: cache, Diagnose: diagnose(probe.NewLobby(cfg.LobbyInternalBaseURL, log)),
	}, log, tel.Tracer("rtmanager/controller"), tel.Meter("rtmanager"))
	if err != nil {
		return step("controller", err)
	}
	ctrl, err := controllers.NewController(rec, controllers.QueueOptions{Workers: cfg.ReconcileWorkers,
		Rate: cfg.ReconcileRate, Burst: cfg.ReconcileBurst, BackoffMin: cfg.ReconcileBackoffMin,
		BackoffMax: cfg.ReconcileBackoffMax, Buffer: cfg.ReconcileQueueBuffer}, logr.FromSlogHandler(controllerLogHandler{log.Handler()}))
	if err != nil {
		return step("controller", err)
	}
	settings := rtm.Settings{EnginePort: cfg.EnginePort, StateRootJoin: func(id string) string {
		return filepath.Join(cfg.GameStateRoot, id)
	}}

	// 5. Internal HTTP listener.
	api := httpapi.NewAPI(httpapi.APIOptions{Store: st, Answers: answers, Enqueue: ctrl.Enqueue, Settings: settings,
		Allowed: cfg.AllowedImageRepositories, Token: cfg.InternalToken, WaitTimeout: cfg.RESTWaitTimeout,
		Log: log, Tracer: tel.Tracer("rtmanager/rest"), Meter: tel.Meter("rtmanager")})
	handler := httpapi.NewHandler(httpapi.Options{
		Checks: []httpapi.Check{
			{Name: "postgres", Ping: st.Ping},
			{Name: "redis", Ping: co.Ping},
			{Name: "docker", Ping: dk.Ping},
			{Name: "docker network", Ping: dk.CheckNetwork},
		},
		Metrics: tel.Handler(), PProf: cfg.PProf, API: api, Engines: engines, Log: log,
	})
	ln, err := net.Listen("tcp", cfg.InternalHTTPAddr)
	if err != nil {
		return step("internal http listener", err)
	}
	srv := httpapi.NewServer(handler, cfg.RESTWaitTimeout+15*time.Second)
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	log.Info("internal http listening", "addr", ln.Addr().String())
	log.Info("internal api protection", "addr", ln.Addr().String(), "token_set", cfg.InternalToken != "",
		"engine_refusal", true, "network", cfg.DockerNetwork)

	// 6. The synchronous initial pass.
	ids, err := sources.AllGames(ctx, dk, st, cache)
	if err != nil {
		_ = srv.Close()
		return step("reconciler initial pass", err)
	}
	failed := ctrl.InitialPass(ctx, ids)
	log.Info("reconciler initial pass completed", "games", len(ids), "retrying", failed)

	// 7. Background workers.
	relay := publisher.New(publisher.Publisher{Outbox: st, Redis: co, Log: log, Observer: metrics,
		Names: map[string]string{
			rtm.StreamJobResults:          cfg.JobResultsStream,
			rtm.StreamHealthEvents:        cfg.HealthEventsStream,
			rtm.StreamNotificationIntents: cfg.NotificationIntentsStream,
		}})
	pub.Store(relay)
	workers := []struct {
		name string
		run  func(context.Context) error
	}{
		{"controller", ctrl.Start},
		{"startjobs", (&sources.JobConsumer{Kind: rtm.StartJobs, Stream: cfg.StartJobsStream, Store: st, Redis: co,
			Enqueue: ctrl.Enqueue, Allowed: cfg.AllowedImageRepositories, Settings: settings, Log: log,
			Tracer: tel.Tracer("rtmanager/jobs"), Observer: metrics, Results: st, Marks: co}).Run},
		{"stopjobs", (&sources.JobConsumer{Kind: rtm.StopJobs, Stream: cfg.StopJobsStream, Store: st, Redis: co,
			Enqueue: ctrl.Enqueue, Allowed: cfg.AllowedImageRepositories, Settings: settings, Log: log,
			Tracer: tel.Tracer("rtmanager/jobs"), Observer: metrics, Results: st, Marks: co}).Run},
		{"dockerevents", (&sources.DockerEvents{Docker: dk, Lister: dk, Store: st, Cache: cache, Enqueue: ctrl.Enqueue, Log: log}).Run},
		{"prober", (&probe.Prober{Interval: cfg.ProbeInterval, Threshold: cfg.ProbeFailureThreshold,
			Grace: cfg.ProbeInterval, Store: st, Docker: dk, Probe: prober, Marks: cache, Observer: metrics, Log: log}).Run},
		{"inspector", (&sources.InspectSweep{Interval: cfg.InspectInterval, Store: st, Docker: dk, Lister: dk,
			Enqueue: ctrl.Enqueue, Log: log}).Run},
		{"reconcile_ticker", (&sources.Ticker{Interval: cfg.ReconcileInterval, Docker: dk, Store: st,
			Cache: cache, Enqueue: ctrl.Enqueue, Log: log, Trigger: manualPasses(ctx, hup)}).Run},
		{"publisher", relay.Run},
	}
	wctx, cancelWorkers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWorkers()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.run(wctx); err != nil && wctx.Err() == nil {
				log.Error("worker failed", "worker", w.name, "error", err)
			}
		}()
		if w.name != "controller" {
			log.Info("worker started", "worker", w.name)
		}
	}

	var failure error
	select {
	case <-ctx.Done():
	case err := <-srvDone:
		failure = fmt.Errorf("internal http listener failed: %w", err)
		log.Error("internal http listener failed", "error", err)
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String(), "margin", shutdownMargin.String())
	stop.drain(srv, cancelWorkers, &wg, log)
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
