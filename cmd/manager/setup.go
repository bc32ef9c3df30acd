package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/redis/go-redis/v9"

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

// manager is one RTM process as its start-up builds it: each step of startup fills in what the
// later steps and the workers use. Nothing else is wired anywhere.
type manager struct {
	cfg  config.Config
	log  *slog.Logger
	stop *shutdown

	tel     *telemetry.Telemetry
	metrics *telemetry.Metrics
	// answers wakes a REST mutation waiting for its answer when the commit that answers it is done.
	answers *httpapi.Answers
	// pub relays committed outbox rows at once once it exists; rows committed before (the boot
	// pass) wait in the outbox for its first poll.
	pub atomic.Pointer[publisher.Publisher]
	st  *store.Store
	co  *coord.Coord
	// rt is where games run (Docker or Kubernetes), set up by step 3 with what goes with it:
	// its readiness checks, the engines' addresses the listener refuses, the games' state and
	// what admission needs of it, and the engine prober.
	rt       gameRuntime
	checks   []httpapi.Check
	engines  httpapi.EngineAddrs
	dirs     controllers.StateDirs
	settings rtm.Settings
	prober   rtm.EngineProber
	// followEngines starts following the engines' addresses (EngineAddrs.Run); nil once started.
	followEngines func()
	cache         *runtime.Cache
	// informer keeps cache current: runtime events, and every full list goes through it.
	informer *runtime.Informer
	ctrl     *controllers.Controller
	// intake takes every request, from the job streams and REST alike.
	intake  *rtm.Intake
	srv     *http.Server
	srvDone chan error
}

// startup is the start-up sequence of the runbook, in its order; each step's failure is a
// *stepError naming it (exit 1). Telemetry is built first, for the others report through it; the
// exporter is reported started in its place in the sequence.
func (m *manager) startup() []func(context.Context) error {
	return []func(context.Context) error{
		m.setupTelemetry,
		m.setupPostgres,    // 1
		m.setupRedis,       // 2
		m.setupRuntime,     // 3
		m.reportTelemetry,  // 4
		m.setupReconciler,  // the reconciler and its controller
		m.setupListener,    // 5
		m.setupInitialPass, // 6
	}
}

func (m *manager) setupTelemetry(ctx context.Context) error {
	tel, err := telemetry.Setup(ctx, m.cfg.TelemetryExporter, version)
	if err != nil {
		return step("telemetry", err)
	}
	m.tel = tel
	m.stop.onClose(func(ctx context.Context) { _ = tel.Shutdown(ctx) })
	if m.metrics, err = telemetry.NewMetrics(tel.Meter("rtmanager")); err != nil {
		return step("telemetry", err)
	}
	return nil
}

// setupPostgres is step 1: migrations, the store, a ping. Every connection and call has a
// deadline, so a black-holed database fails it within about the connect timeout.
func (m *manager) setupPostgres(ctx context.Context) error {
	cfg := m.cfg
	timeouts := store.Timeouts{Connect: cfg.PostgresConnectTimeout, Operation: cfg.PostgresOperationTimeout,
		Statement: cfg.PostgresStatementTimeout, Lock: cfg.PostgresLockTimeout, MigrationLock: cfg.PostgresMigrationLockTimeout}
	if err := store.Migrate(ctx, cfg.PostgresDSN, timeouts); err != nil {
		return step("postgres migrations", err)
	}
	m.log.Info("migrations applied")
	m.answers = httpapi.NewAnswers()
	st, err := store.Open(ctx, cfg.PostgresDSN, store.Options{Timeouts: timeouts, MaxConns: int32(cfg.PostgresMaxConns),
		OnAnswered: m.answers.Notify,
		OnOutbox: func(rows []rtm.OutboxEntry) {
			m.metrics.Answered(context.Background(), rows)
			if p := m.pub.Load(); p != nil {
				p.Offer(rows)
			}
		}})
	if err != nil {
		return step("postgres", err)
	}
	m.st = st
	m.stop.onClose(func(context.Context) { st.Close() })
	if err := st.Ping(ctx); err != nil {
		return step("postgres ping", err)
	}
	m.log.Info("postgres ping ok")
	return nil
}

// setupRedis is step 2: the client, a ping, the instance heartbeat that leases depend on, and
// the gauges (they read the store and Redis).
func (m *manager) setupRedis(ctx context.Context) error {
	cfg := m.cfg
	rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, Password: cfg.RedisPassword,
		DialTimeout: 3 * time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second,
		PoolSize: cfg.RedisPoolSize, ContextTimeoutEnabled: true})
	m.stop.onClose(func(context.Context) { _ = rdb.Close() })
	m.co = coord.New(rdb, ownerID(), cfg.GameLeaseTTL, coord.WithStreamMaxLen(cfg.StreamRetention),
		coord.WithLeaseObserver(m.metrics))
	if err := m.co.Ping(ctx); err != nil {
		return step("redis ping", err)
	}
	m.log.Info("redis ping ok")
	hbCtx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	m.stop.onClose(func(context.Context) { stopHeartbeat() })
	if err := m.co.Heartbeat(hbCtx); err != nil {
		return step("redis", err)
	}
	if err := m.metrics.ObserveGauges(m.tel.Meter("rtmanager"), m.st, m.co,
		map[rtm.JobKind]string{rtm.StartJobs: cfg.StartJobsStream, rtm.StopJobs: cfg.StopJobsStream}); err != nil {
		return step("telemetry", err)
	}
	return nil
}

// setupRuntime is step 3: the runtime games run on.
func (m *manager) setupRuntime(ctx context.Context) error {
	if m.cfg.Runtime == config.RuntimeKubernetes {
		return m.setupKube(ctx)
	}
	return m.setupDocker(ctx)
}

// neighbourLimit reads the host's neighbour-table limit the prober checks its engines against:
// on Docker the engines sit on a bridge of this host; on Kubernetes they do not (nil).
func (m *manager) neighbourLimit() func() int {
	if m.cfg.Runtime == config.RuntimeKubernetes {
		return nil
	}
	return func() int { return probe.HostNeighbourLimit(probe.NeighbourThreshPath) }
}

// setupDocker is step 3 on Docker: the adapter, a ping, the network, and the engines' addresses
// the listener refuses (learnt before it opens, followed from then on).
func (m *manager) setupDocker(ctx context.Context) error {
	cfg := m.cfg
	dk, err := runtime.New(runtime.Options{Host: cfg.DockerHost, Network: cfg.DockerNetwork, Logger: m.log,
		Tracer: m.tel.Tracer("rtmanager/runtime"), Meter: m.tel.Meter("rtmanager")})
	if err != nil {
		return step("docker", err)
	}
	m.rt = dk
	m.checks = []httpapi.Check{{Name: "docker", Ping: dk.Ping}, {Name: "docker network", Ping: dk.CheckNetwork}}
	dirs := runtime.StateDirs{Root: cfg.GameStateRoot, Mode: os.FileMode(cfg.GameStateDirMode),
		UID: cfg.GameStateOwnerUID, GID: cfg.GameStateOwnerGID}
	m.dirs = dirs
	m.settings = rtm.Settings{EnginePort: cfg.EnginePort, StateRootJoin: dirs.Path}
	m.prober = probe.New(cfg.EnginePort, cfg.ProbeTarget == config.ProbeTargetContainerIP, cfg.ProbeTimeout)
	m.stop.onClose(func(context.Context) { _ = dk.Close() })
	if err := dk.Ping(ctx); err != nil {
		return step("docker ping", err)
	}
	m.log.Info("docker ping ok")
	if err := dk.CheckNetwork(ctx); err != nil {
		return step("docker network", err)
	}
	m.log.Info("docker network found", "network", m.cfg.DockerNetwork)
	engines := runtime.NewEngineAddrs(dk, runtime.EngineAddrsOptions{Logger: m.log})
	m.engines = engines
	// A refresh's calls are bounded tightly (a request may wait for one); a daemon slow for a
	// moment at start-up gets three tries before the start-up gives up.
	var b rtm.Backoff
	err = engines.Refresh(ctx)
	for try := 1; err != nil && try < 3 && rtm.Sleep(ctx, b.Next()); try++ {
		err = engines.Refresh(ctx)
	}
	if err != nil {
		return step("docker network", err)
	}
	// The snapshot is followed (network events, resyncs) from the end of the initial pass on,
	// so that the pass has the daemon to itself; until then an address the snapshot is unsure
	// of costs a request a refresh (EngineAddrs.IsEngine), as while the event stream is down.
	engCtx, stopEngines := context.WithCancel(context.WithoutCancel(ctx))
	engDone := make(chan struct{})
	m.followEngines = func() { go func() { defer close(engDone); _ = engines.Run(engCtx) }() }
	m.stop.onClose(func(ctx context.Context) {
		stopEngines()
		if m.followEngines != nil {
			return // never started
		}
		select {
		case <-engDone:
		case <-ctx.Done():
		}
	})
	return nil
}

// reportTelemetry is step 4: the exporter, set up first, is reported in its place.
func (m *manager) reportTelemetry(context.Context) error {
	m.log.Info("telemetry exporter started", "exporter", m.cfg.TelemetryExporter)
	return nil
}

// setupReconciler builds the reconciler and the controller that runs it.
func (m *manager) setupReconciler(context.Context) error {
	cfg := m.cfg
	m.cache = runtime.NewCache()
	m.informer = runtime.NewInformer(m.rt, m.rt, m.cache, m.log.With("worker", "dockerevents"))
	rec, err := controllers.New(m.st, m.rt, m.co, m.dirs, m.prober, controllers.Options{
		Network: cfg.DockerNetwork, EnginePort: cfg.EnginePort, EngineHost: m.settings.EngineHost, StateMount: cfg.EngineStateMount,
		StopTimeout: cfg.EngineStopTimeout, MemoryBytes: cfg.EngineMemoryBytes, NanoCPUs: cfg.EngineNanoCPUs,
		PidsLimit: cfg.EnginePidsLimit, User: cfg.EngineUser, ReadOnlyRoot: cfg.EngineReadOnlyRoot,
		PatchVerifyTimeout: cfg.PatchVerifyTimeout, ProbeInterval: cfg.ProbeInterval, ProbeThreshold: cfg.ProbeFailureThreshold,
		RetryAttempts: cfg.RetryAttempts, RetryWindow: cfg.RetryWindow,
		Cache: m.cache, Diagnose: diagnose(probe.NewLobby(cfg.LobbyInternalBaseURL, m.log)),
	}, m.log, m.tel.Tracer("rtmanager/controller"), m.tel.Meter("rtmanager"))
	if err != nil {
		return step("controller", err)
	}
	m.ctrl, err = controllers.NewController(rec, controllers.QueueOptions{Workers: cfg.ReconcileWorkers,
		Rate: cfg.ReconcileRate, Burst: cfg.ReconcileBurst, BackoffMin: cfg.ReconcileBackoffMin,
		BackoffMax: cfg.ReconcileBackoffMax, Buffer: cfg.ReconcileQueueBuffer},
		logr.FromSlogHandler(controllerLogHandler{m.log.Handler()}))
	if err != nil {
		return step("controller", err)
	}
	m.intake = &rtm.Intake{Store: m.st, Enqueue: m.ctrl.Enqueue, Settings: m.settings, Allowed: cfg.AllowedImageRepositories}
	return nil
}

// setupListener is step 5: the internal HTTP listener (probes, metrics, the REST API).
func (m *manager) setupListener(context.Context) error {
	cfg := m.cfg
	// When the listener starts to shut down, follow streams of engine output end and mutations
	// waiting for the reconciler are answered 202, so that the drain neither waits for them nor
	// cuts them off when the budget runs out.
	draining := make(chan struct{})
	var endStreams sync.Once
	api := httpapi.NewAPI(httpapi.APIOptions{Store: m.st, Intake: m.intake, Answers: m.answers,
		Allowed: cfg.AllowedImageRepositories, Token: cfg.InternalToken,
		WaitTimeout: cfg.RESTWaitTimeout, Log: m.log, Tracer: m.tel.Tracer("rtmanager/rest"), Meter: m.tel.Meter("rtmanager"),
		Logs: m.rt, Draining: draining, Version: version})
	handler := httpapi.NewHandler(httpapi.Options{
		Checks: append([]httpapi.Check{
			{Name: "postgres", Ping: m.st.Ping},
			{Name: "redis", Ping: m.co.Ping},
		}, m.checks...),
		Metrics: m.tel.Handler(), PProf: cfg.PProf, API: api, Engines: m.engines, Log: m.log,
	})
	ln, err := net.Listen("tcp", cfg.InternalHTTPAddr)
	if err != nil {
		return step("internal http listener", err)
	}
	m.srv = httpapi.NewServer(handler, cfg.RESTWaitTimeout+15*time.Second)
	m.srv.RegisterOnShutdown(func() { endStreams.Do(func() { close(draining) }) })
	m.srvDone = make(chan error, 1)
	go func() { m.srvDone <- m.srv.Serve(ln) }()
	m.log.Info("internal http listening", "addr", ln.Addr().String())
	m.log.Info("internal api protection", "addr", ln.Addr().String(), "token_set", cfg.InternalToken != "",
		"engine_refusal", true, "runtime", cfg.Runtime, "network", cfg.DockerNetwork)
	return nil
}

// setupInitialPass is step 6: the synchronous reconcile of every known game.
func (m *manager) setupInitialPass(ctx context.Context) error {
	ids, err := sources.AllGames(ctx, m.informer, m.st)
	if err != nil {
		_ = m.srv.Close()
		return step("reconciler initial pass", err)
	}
	failed := m.ctrl.InitialPass(ctx, ids)
	m.log.Info("reconciler initial pass completed", "games", len(ids), "retrying", failed)
	m.followEngines()
	m.followEngines = nil
	return nil
}

// runWorkers is step 7: the background workers, until ctx ends; manual carries SIGHUP's passes.
// The returned group is done when every worker has returned.
func (m *manager) runWorkers(ctx context.Context, manual <-chan struct{}) *sync.WaitGroup {
	cfg := m.cfg
	relay := publisher.New(publisher.Publisher{Outbox: m.st, Redis: m.co, Log: m.log, Observer: m.metrics,
		Names: map[string]string{
			rtm.StreamJobResults:          cfg.JobResultsStream,
			rtm.StreamHealthEvents:        cfg.HealthEventsStream,
			rtm.StreamNotificationIntents: cfg.NotificationIntentsStream,
		}})
	m.pub.Store(relay)
	jobs := func(kind rtm.JobKind, stream string) *sources.JobConsumer {
		return &sources.JobConsumer{Kind: kind, Stream: stream, Intake: m.intake, Store: m.st, Redis: m.co,
			Enqueue: m.ctrl.Enqueue, Log: m.log, Parallel: cfg.JobParallel,
			Tracer: m.tel.Tracer("rtmanager/jobs"), Observer: m.metrics, Results: m.st, Marks: m.co}
	}
	workers := []struct {
		name string
		run  func(context.Context) error
	}{
		{"controller", m.ctrl.Start},
		{"startjobs", jobs(rtm.StartJobs, cfg.StartJobsStream).Run},
		{"stopjobs", jobs(rtm.StopJobs, cfg.StopJobsStream).Run},
		{"dockerevents", (&sources.DockerEvents{Store: m.st, Enqueue: m.ctrl.Enqueue,
			Informer: m.informer}).Run},
		{"prober", (&probe.Prober{Interval: cfg.ProbeInterval, Threshold: cfg.ProbeFailureThreshold,
			Grace: cfg.ProbeInterval, Store: m.st, Docker: m.rt, Probe: m.prober, Cache: m.cache,
			Observer: m.metrics, Log: m.log, NeighbourLimit: m.neighbourLimit()}).Run},
		{"inspector", (&sources.InspectSweep{Interval: cfg.InspectInterval, Store: m.st, Docker: m.rt, Lister: m.informer,
			Enqueue: m.ctrl.Enqueue, Log: m.log}).Run},
		{"reconcile_ticker", (&sources.Ticker{Interval: cfg.ReconcileInterval, Docker: m.informer, Store: m.st,
			Enqueue: m.ctrl.Enqueue, Log: m.log, Trigger: manual}).Run},
		{"publisher", relay.Run},
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.run(ctx); err != nil && ctx.Err() == nil {
				m.log.Error("worker failed", "worker", w.name, "error", err)
			}
		}()
		if w.name != "controller" {
			m.log.Info("worker started", "worker", w.name)
		}
	}
	return &wg
}
