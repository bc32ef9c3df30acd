package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/store"
)

// HealthStore is what the prober and inspector read and write.
type HealthStore interface {
	RunningGames(ctx context.Context) ([]store.RunningGame, error)
	RecordHealth(ctx context.Context, events []rtm.HealthEvent) error
	RecordProbes(ctx context.Context, results []rtm.ProbeResult) error
}

// Inspector inspects one game's container.
type Inspector interface {
	Inspect(ctx context.Context, gameID string) (rtm.Container, error)
}

// EngineProber checks one engine's /healthz.
type EngineProber interface {
	Probe(ctx context.Context, c rtm.Container, endpoint string) error
}

// ProbeObserver is told each probe's result, for telemetry.
type ProbeObserver interface {
	ProbeResult(ctx context.Context, ok bool)
}

// Prober is the prober worker: every Interval it probes each running engine at bounded
// concurrency, so one hanging engine never delays the others. Threshold consecutive failures
// yield one probe_failed; the first success after that one probe_recovered. A container gets
// Grace after it is first seen before failures count.
type Prober struct {
	Interval    time.Duration
	Threshold   int
	Grace       time.Duration
	Concurrency int
	Store       HealthStore
	Docker      Inspector
	Probe       EngineProber
	Observer    ProbeObserver
	Log         *slog.Logger

	mu    sync.Mutex
	state map[string]*probeState // by game id
}

type probeState struct {
	container string
	seen      time.Time
	c         rtm.Container // carries the IP on the network
	failures  int
	reported  bool
}

// Run probes until ctx ends.
func (p *Prober) Run(ctx context.Context) error {
	if p.Concurrency <= 0 {
		p.Concurrency = 64
	}
	p.state = map[string]*probeState{}
	every(ctx, p.Interval, p.round, p.Log, "prober", "probe round failed")
	return nil
}

// every runs fn each interval until ctx ends, logging its failures (unless ctx ended).
func every(ctx context.Context, interval time.Duration, fn func(context.Context) error, log *slog.Logger, worker, msg string) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				log.Warn(msg, "worker", worker, "error", err)
			}
		}
	}
}

func (p *Prober) round(ctx context.Context) error {
	games, err := p.Store.RunningGames(ctx)
	if err != nil {
		return err
	}
	live := make(map[string]bool, len(games))
	for _, g := range games {
		live[g.GameID] = true
	}
	p.mu.Lock()
	for id := range p.state {
		if !live[id] {
			delete(p.state, id)
		}
	}
	p.mu.Unlock()

	var (
		wg      sync.WaitGroup
		sem     = make(chan struct{}, p.Concurrency)
		mu      sync.Mutex
		results []rtm.ProbeResult
		events  []rtm.HealthEvent
	)
	for _, g := range games {
		wg.Add(1)
		sem <- struct{}{}
		go func(g store.RunningGame) {
			defer func() { <-sem; wg.Done() }()
			res, ev := p.probeOne(ctx, g)
			if res == nil {
				return
			}
			mu.Lock()
			results = append(results, *res)
			if ev != nil {
				events = append(events, *ev)
			}
			mu.Unlock()
		}(g)
	}
	wg.Wait()
	if err := p.Store.RecordProbes(ctx, results); err != nil {
		return err
	}
	if err := p.Store.RecordHealth(ctx, events); err != nil {
		// Not published: undo the transitions so the next round reports them again.
		p.mu.Lock()
		for _, ev := range events {
			if st := p.state[ev.GameID]; st != nil {
				st.reported = ev.Type != rtm.EventProbeFailed
			}
		}
		p.mu.Unlock()
		return err
	}
	for _, ev := range events {
		p.Log.Info("probe state changed", "worker", "prober", "game_id", ev.GameID, "event_type", string(ev.Type))
	}
	return nil
}

func (p *Prober) probeOne(ctx context.Context, g store.RunningGame) (*rtm.ProbeResult, *rtm.HealthEvent) {
	p.mu.Lock()
	st := p.state[g.GameID]
	if st == nil || st.container != g.ContainerID {
		st = &probeState{container: g.ContainerID, seen: time.Now()}
		p.state[g.GameID] = st
	}
	c := st.c
	p.mu.Unlock()
	if c.ID != g.ContainerID {
		ic, err := p.Docker.Inspect(ctx, g.GameID)
		if err != nil || ic.ID != g.ContainerID {
			return nil, nil // the reconciler will catch up with this game
		}
		c = ic
	}
	err := p.Probe.Probe(ctx, c, g.Endpoint)
	if ctx.Err() != nil {
		return nil, nil
	}
	if p.Observer != nil {
		p.Observer.ProbeResult(ctx, err == nil)
	}
	now := time.Now().UTC()
	p.mu.Lock()
	defer p.mu.Unlock()
	st.c = c
	var ev *rtm.HealthEvent
	if err == nil {
		st.failures = 0
		if st.reported {
			st.reported = false
			ev = &rtm.HealthEvent{GameID: g.GameID, Type: rtm.EventProbeRecovered, ContainerID: g.ContainerID,
				Message: "the engine answers its probe again", ObservedAt: now}
		}
	} else if now.Sub(st.seen) >= p.Grace {
		st.failures++
		if st.failures >= p.Threshold && !st.reported {
			st.reported = true
			ev = &rtm.HealthEvent{GameID: g.GameID, Type: rtm.EventProbeFailed, ContainerID: g.ContainerID, ObservedAt: now,
				Message: fmt.Sprintf("%d consecutive probes failed: %v", st.failures, err)}
		}
	}
	return &rtm.ProbeResult{GameID: g.GameID, OK: err == nil, Failures: st.failures, At: now}, ev
}

// InspectSweep is the inspector worker: every Interval it inspects each running game's
// container; Docker health unhealthy or a paused, restarting or dead state yields one
// inspect_unhealthy per transition, and the game is enqueued.
type InspectSweep struct {
	Interval    time.Duration
	Concurrency int
	Store       HealthStore
	Docker      Inspector
	Enqueue     func(gameID string)
	Log         *slog.Logger

	bad map[string]string // game id → container reported unhealthy
}

// Run sweeps until ctx ends.
func (s *InspectSweep) Run(ctx context.Context) error {
	if s.Concurrency <= 0 {
		s.Concurrency = 8
	}
	s.bad = map[string]string{}
	every(ctx, s.Interval, s.sweep, s.Log, "inspector", "inspect sweep failed")
	return nil
}

func (s *InspectSweep) sweep(ctx context.Context) error {
	games, err := s.Store.RunningGames(ctx)
	if err != nil {
		return err
	}
	type seen struct {
		g   store.RunningGame
		c   rtm.Container
		err error
	}
	out := make([]seen, len(games))
	var wg sync.WaitGroup
	sem := make(chan struct{}, s.Concurrency)
	for i, g := range games {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := s.Docker.Inspect(ctx, g.GameID)
			out[i] = seen{g: g, c: c, err: err}
		}()
	}
	wg.Wait()
	var events []rtm.HealthEvent
	live := map[string]bool{}
	for _, o := range out {
		live[o.g.GameID] = true
		if errors.Is(o.err, rtm.ErrNotFound) || o.err == nil && o.c.ID != o.g.ContainerID {
			s.Enqueue(o.g.GameID) // gone or replaced: the reconciler decides
			continue
		}
		if o.err != nil {
			continue
		}
		why := unhealthy(o.c)
		if why == "" {
			delete(s.bad, o.g.GameID)
			continue
		}
		if s.bad[o.g.GameID] == o.c.ID {
			continue
		}
		s.bad[o.g.GameID] = o.c.ID
		events = append(events, rtm.HealthEvent{GameID: o.g.GameID, Type: rtm.EventInspectUnhealthy, ContainerID: o.c.ID,
			DockerState: string(o.c.State), Message: why, ObservedAt: time.Now().UTC()})
		s.Enqueue(o.g.GameID)
	}
	for id := range s.bad {
		if !live[id] {
			delete(s.bad, id)
		}
	}
	if err := s.Store.RecordHealth(ctx, events); err != nil {
		for _, ev := range events {
			delete(s.bad, ev.GameID) // not reported: report it again next sweep
		}
		return err
	}
	for _, ev := range events {
		s.Log.Info("inspection found engine unhealthy", "worker", "inspector", "game_id", ev.GameID, "reason", ev.Message)
	}
	return nil
}

func unhealthy(c rtm.Container) string {
	switch {
	case c.Health == "unhealthy":
		return "docker reports the container unhealthy"
	case c.State == rtm.StatePaused || c.State == rtm.StateRestarting || c.State == rtm.StateDead:
		return fmt.Sprintf("docker reports the container %s", c.State)
	}
	return ""
}
