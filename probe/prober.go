package probe

import (
	"context"
	"log/slog"
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// ProbeStore is what the prober reads and writes.
type ProbeStore interface {
	RunningGames(ctx context.Context) ([]rtm.RunningGame, error)
	CommitProbeRound(ctx context.Context, threshold int, outcomes []rtm.ProbeOutcome) ([]rtm.HealthEvent, error)
}

// ProbeObserver is told each probe's result, for telemetry.
type ProbeObserver interface {
	ProbeResult(ctx context.Context, ok bool)
}

// Containers is what the prober knows of containers without asking the runtime: the informer's
// cache, which runtime events and list calls keep current.
type Containers interface {
	// LifeMark returns a mark that changes whenever an event arrives for gameID's container or
	// events may have been missed; ok is false while events may be being missed (the events
	// stream is down), when no mark can be trusted.
	LifeMark(gameID string) (mark uint64, ok bool)
	// Lookup returns the cache's word on gameID's container; known is false when it has none to
	// trust (unsynced, or an event arrived since the last list or inspection).
	Lookup(gameID string) (c rtm.Container, found, known bool, exitedAt time.Time)
}

// Inspector inspects one game's container.
type Inspector interface {
	Inspect(ctx context.Context, gameID string) (rtm.Container, error)
}

// Prober is the prober worker: every Interval it probes each running engine at bounded
// concurrency, so one hanging engine never delays the others, and hands the round's outcomes to
// the store, which decides the transitions on the committed probe state (Threshold consecutive
// failures yield one probe_failed, the first success after it one probe_recovered) in the
// transaction that records them: a round whose commit fails loses nothing, the next round
// decides again. A container gets Grace after it is first seen before failures count.
//
// The engine's address comes from Cache when it knows the record's container running with an
// address (the list calls that fill it carry the address, so a host at rest sees no inspection
// from the prober), else from an inspection of the container; either is kept while Cache's life
// mark says the container's life has not changed (no event for it since, events stream up).
// Without Cache every round inspects. A probe during which the mark moved is not recorded: it
// may have reached an address the container no longer has.
type Prober struct {
	Interval    time.Duration
	Threshold   int
	Grace       time.Duration
	Concurrency int
	Store       ProbeStore
	Docker      Inspector
	Probe       rtm.EngineProber
	Cache       Containers // may be nil
	Observer    ProbeObserver
	Log         *slog.Logger
	// NeighbourLimit returns the host's soft limit on neighbour (ARP) entries,
	// net.ipv4.neigh.default.gc_thresh2, when the engines sit on a bridge of this host (see
	// HostNeighbourLimit); it is asked every round, so a limit raised while RTM runs counts at
	// once. Nil, or 0, skips the check. With more running engines than that, the kernel evicts
	// entries the probes need and healthy engines are reported probe_failed, so the prober warns
	// once when the running engines first exceed it and says when they no longer do.
	NeighbourLimit func() int

	mu    sync.Mutex
	state map[string]*probeState // by game id
	over  bool                   // the last round had more engines than the neighbour limit
}

// probeState is what the prober keeps of a game between rounds: not its failures (the store
// keeps those) but when it first saw the container and where the engine was found.
type probeState struct {
	container string
	seen      time.Time
	c         rtm.Container // the lookup or inspection that gave the address (IP on the network)
	mark      uint64        // the life mark it began at
	marked    bool          // mark is trustworthy (LifeMark said ok)
}

// Run probes until ctx ends.
func (p *Prober) Run(ctx context.Context) error {
	if p.Concurrency <= 0 {
		p.Concurrency = 64
	}
	p.state = map[string]*probeState{}
	rtm.EveryRunningRound(ctx, p.Interval, p.Store.RunningGames, p.round, p.Log, "prober", "probe round failed")
	return nil
}

// idleCloser is an EngineProber that keeps connections between probes (HTTP does).
type idleCloser interface {
	CloseIdle(before time.Time) int
}

// sender is an EngineProber that can write a probe now and read its answer later (HTTP can, on
// a kept connection).
type sender interface {
	Send(c rtm.Container, endpoint string) (*Sent, bool)
}

// round probes games in two steps. First, one after another, it writes the request of every
// engine whose address it knows and whose connection is kept; then, in the same order, it reads
// the answers that have arrived, and hands the rest (answers not there yet, first probes,
// addresses to inspect, connections the engine closed) to goroutines, Concurrency at a time. At
// rest every engine is in the first group and its answer has arrived by the time it is read: a
// round of 1,000 engines is 1,000 writes and 1,000 reads in one goroutine.
func (p *Prober) round(ctx context.Context, games []rtm.RunningGame) error {
	start := time.Now()
	p.mu.Lock()
	if p.state == nil {
		p.state = map[string]*probeState{}
	}
	rtm.ForgetStopped(p.state, games)
	p.mu.Unlock()
	p.checkNeighbours(len(games))

	type probe struct {
		g    rtm.RunningGame
		t    target
		sent *Sent // nil: probe the whole way
	}
	snd, _ := p.Probe.(sender)
	probes := make([]probe, len(games))
	for i, g := range games {
		probes[i].g = g
		if t, ok := p.target(g); ok && snd != nil {
			probes[i].t = t
			probes[i].sent, _ = snd.Send(t.c, g.Endpoint)
		}
	}
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, max(p.Concurrency, 1))
		mu       sync.Mutex
		outcomes []rtm.ProbeOutcome
	)
	finish := func(pr probe) {
		var (
			o  rtm.ProbeOutcome
			ok bool
		)
		if pr.sent != nil {
			o, ok = p.outcome(ctx, pr.g, pr.t, pr.sent.Wait(ctx))
		} else {
			o, ok = p.probeOne(ctx, pr.g)
		}
		if ok {
			mu.Lock()
			outcomes = append(outcomes, o)
			mu.Unlock()
		}
	}
	for _, pr := range probes {
		if pr.sent != nil && pr.sent.Ready() {
			finish(pr) // the answer is there: read it here rather than in a goroutine of its own
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			finish(pr)
		}()
	}
	wg.Wait()
	if ic, ok := p.Probe.(idleCloser); ok {
		ic.CloseIdle(start) // the engines this round did not probe are gone or moved
	}
	events, err := p.Store.CommitProbeRound(ctx, p.Threshold, outcomes)
	if err != nil {
		return err
	}
	for _, ev := range events {
		p.Log.Info("probe state changed", "worker", "prober", "game_id", ev.GameID, "event_type", string(ev.Type),
			"container_id", ev.ContainerID)
	}
	return nil
}

// checkNeighbours logs when the number of running engines crosses the neighbour limit.
func (p *Prober) checkNeighbours(engines int) {
	limit := 0
	if p.NeighbourLimit != nil {
		limit = p.NeighbourLimit()
	}
	over := limit > 0 && engines > limit
	switch {
	case over && !p.over:
		p.Log.Warn("more running engines than the host's neighbour table keeps: probes may fail on healthy engines; "+
			"raise net.ipv4.neigh.default.gc_thresh1/2/3 (docs/workers.md, a host with many engines)",
			"worker", "prober", "engines", engines, "gc_thresh2", limit)
	case !over && p.over:
		p.Log.Info("running engines back within the host's neighbour table", "worker", "prober",
			"engines", engines, "gc_thresh2", limit)
	}
	p.over = over
}

// lifeMark is Cache.LifeMark, not ok without Cache.
func (p *Prober) lifeMark(gameID string) (uint64, bool) {
	if p.Cache == nil {
		return 0, false
	}
	return p.Cache.LifeMark(gameID)
}

// cached returns Cache's entry for g when it is g's container, running, with an address, read
// after a trustworthy mark (so that a later event moves the mark past it).
func (p *Prober) cached(g rtm.RunningGame, marked bool) (rtm.Container, bool) {
	if p.Cache == nil || !marked {
		return rtm.Container{}, false
	}
	c, found, known, _ := p.Cache.Lookup(g.GameID)
	if !known || !found || c.ID != g.ContainerID || !c.Running() || c.IP == "" {
		return rtm.Container{}, false
	}
	return c, true
}

// target is where a game's engine is to be probed, and the life mark that address was read at.
type target struct {
	st     *probeState
	c      rtm.Container // with the address
	mark   uint64
	marked bool
}

// target returns where g's engine is; ok is false when that is not known without inspecting
// the container (t then holds the rest).
func (p *Prober) target(g rtm.RunningGame) (t target, ok bool) {
	t.mark, t.marked = p.lifeMark(g.GameID)
	p.mu.Lock()
	t.st = p.state[g.GameID]
	if t.st == nil || t.st.container != g.ContainerID {
		t.st = &probeState{container: g.ContainerID, seen: time.Now()}
		p.state[g.GameID] = t.st
	}
	if t.marked && t.st.marked && t.st.mark == t.mark {
		t.c = t.st.c // else the container may have started again since
	}
	p.mu.Unlock()
	if t.c.ID == g.ContainerID {
		return t, true
	}
	c, ok := p.cached(g, t.marked)
	if !ok {
		return t, false
	}
	p.remember(t, c)
	t.c = c
	return t, true
}

// remember keeps c as the address of t's container, read at t's mark.
func (p *Prober) remember(t target, c rtm.Container) {
	p.mu.Lock()
	t.st.c, t.st.mark, t.st.marked = c, t.mark, t.marked
	p.mu.Unlock()
}

// probeOne probes one game's engine the whole way: it inspects the container when its address
// is not known, and probes it.
func (p *Prober) probeOne(ctx context.Context, g rtm.RunningGame) (rtm.ProbeOutcome, bool) {
	t, ok := p.target(g)
	if !ok {
		c, err := p.Docker.Inspect(ctx, g.GameID)
		if err != nil || c.ID != g.ContainerID {
			return rtm.ProbeOutcome{}, false // the reconciler will catch up with this game
		}
		p.remember(t, c)
		t.c = c
	}
	return p.outcome(ctx, g, t, p.Probe.Probe(ctx, t.c, g.Endpoint))
}

// outcome is what a probe of g's engine at t that ended with err is to be recorded as; ok is
// false when there is nothing to record (the round was cancelled, or the container's life changed
// during the probe: it may have reached an address the container no longer has).
func (p *Prober) outcome(ctx context.Context, g rtm.RunningGame, t target, err error) (rtm.ProbeOutcome, bool) {
	if ctx.Err() != nil {
		return rtm.ProbeOutcome{}, false
	}
	if after, ok := p.lifeMark(g.GameID); t.marked && (!ok || after != t.mark) {
		return rtm.ProbeOutcome{}, false
	}
	if p.Observer != nil {
		p.Observer.ProbeResult(ctx, err == nil)
	}
	now := time.Now().UTC()
	o := rtm.ProbeOutcome{GameID: g.GameID, ContainerID: g.ContainerID, OK: err == nil, At: now}
	if err != nil {
		o.Error = err.Error()
		p.mu.Lock()
		o.Grace = now.Sub(t.st.seen) < p.Grace
		p.mu.Unlock()
	}
	return o, true
}
