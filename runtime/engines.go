package runtime

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Defaults applied by NewEngineAddrs to zero EngineAddrsOptions fields.
const (
	DefaultEngineRefreshTimeout = time.Second
	DefaultEngineResync         = time.Minute
	// maxEngineBackoff bounds the wait between refresh attempts while Docker keeps failing.
	maxEngineBackoff = 30 * time.Second
)

// EngineAddrsOptions configure an EngineAddrs. Zero durations take the defaults above.
type EngineAddrsOptions struct {
	// RefreshTimeout bounds each of a refresh's two Docker calls (a network inspection and a
	// container list); a request waiting for a refresh waits at most twice this long.
	RefreshTimeout time.Duration
	// Resync is how often Run refreshes even when no network event arrived.
	Resync time.Duration
	// Logger receives a warning when refreshes start failing and a line when they recover; nil
	// discards.
	Logger *slog.Logger
}

// EngineAddrs knows the addresses the engine containers RTM runs (the containers labelled
// com.galaxy.owner=rtmanager attached to the configured network) have on that network, so that
// the internal HTTP listener can refuse requests coming from them. It is safe for concurrent use.
//
// It keeps a snapshot of every endpoint on the network (engine or not) with its addresses, plus
// the network's subnets and gateways, taken with one network inspection and one list of the
// owned containers. Run keeps the snapshot current: it follows the daemon's connect and
// disconnect events for the network, refreshes after each, and refreshes every Resync. A
// snapshot is trusted while the event stream is connected and no event arrived since the
// snapshot began; an address inside the network that the trusted snapshot does not know (an
// engine whose connect event is still on its way) makes IsEngine refresh before answering.
type EngineAddrs struct {
	d    *Docker
	opts EngineAddrsOptions
	log  *slog.Logger

	mu      sync.Mutex
	snap    addrSnapshot
	loaded  bool   // a refresh has succeeded at least once
	changes uint64 // network events seen; a snapshot is trusted only while equal to its seq
	live    bool   // Run's event stream is connected
	started uint64 // refreshes begun, in order; at most one runs at a time
	done    uint64 // the number of the last refresh that ended
	lastErr error  // how it ended
	flight  *refreshFlight
	failing bool
	backoff time.Duration
	nextTry time.Time // while failing, IsEngine does not call Docker before this
}

// addrSnapshot is what one refresh saw.
type addrSnapshot struct {
	// addrs maps every address a container has on the network to whether that container is an
	// engine (owned) or not.
	addrs    map[netip.Addr]bool
	subnets  []netip.Prefix
	gateways []netip.Addr
	seq      uint64 // EngineAddrs.changes when the refresh began
}

// refreshFlight is the refresh in progress; done is closed when it ends, after err is set.
type refreshFlight struct {
	n    uint64
	done chan struct{}
	err  error
}

// NewEngineAddrs returns an EngineAddrs for d's network with an empty snapshot: until the first
// successful refresh every address but loopback is treated as an engine. Call Refresh once
// before serving and Run for the process's life.
func NewEngineAddrs(d *Docker, opts EngineAddrsOptions) *EngineAddrs {
	opts.RefreshTimeout = positiveOr(opts.RefreshTimeout, DefaultEngineRefreshTimeout)
	opts.Resync = positiveOr(opts.Resync, DefaultEngineResync)
	opts.Logger = cmp.Or(opts.Logger, slog.New(slog.DiscardHandler))
	return &EngineAddrs{d: d, opts: opts, log: opts.Logger.With("component", "engine_addrs")}
}

// IsEngine reports whether addr (a request's source address) belongs to an engine container, in
// which case the listener refuses the request. The answer, by address:
//
//   - loopback: false, at once (the host itself);
//   - link-local (169.254.0.0/16, fe80::/10): true, at once: such a source cannot be attributed
//     to a container, and an engine can reach the host's link-local address on the bridge;
//   - a gateway of the network: false, at once (how the host reaches the network, e.g. when RTM
//     itself runs in a container on it);
//   - an address of an engine in the snapshot: true, at once;
//   - outside the network's subnets and not on the network: false, at once;
//   - an address of another container on the network, with a trusted snapshot: false, at once;
//   - anything else inside the network (an unknown address, or an untrusted snapshot): IsEngine
//     waits for a refresh that began after it was called (joining one in flight), then answers
//     from it: true for an engine and for an address still unknown, false for another container.
//
// When Docker cannot be reached the last snapshot answers (fail closed for addresses inside
// the network it does not know), and after a failed refresh IsEngine calls Docker again only
// after a backoff (1 s doubling to 30 s, while Run keeps retrying), so an outage costs a request
// at most twice RefreshTimeout and most requests nothing. When ctx ends before the refresh, the
// answer is the snapshot's.
func (e *EngineAddrs) IsEngine(ctx context.Context, addr netip.Addr) bool {
	addr = addr.Unmap()
	switch {
	case !addr.IsValid():
		return true
	case addr.IsLoopback():
		return false
	case addr.IsLinkLocalUnicast():
		return true
	}
	e.mu.Lock()
	engine, sure := e.lookupLocked(addr)
	if sure || !e.refreshDueLocked(time.Now()) {
		e.mu.Unlock()
		return engine
	}
	need := e.started + 1
	e.mu.Unlock()

	_ = e.refreshSince(ctx, need) // a failure is logged by the refresh and answered from the snapshot
	e.mu.Lock()
	defer e.mu.Unlock()
	engine, _ = e.lookupLocked(addr)
	return engine
}

// lookupLocked answers from the snapshot; sure is false when the answer needs a refresh first.
func (e *EngineAddrs) lookupLocked(addr netip.Addr) (engine, sure bool) {
	if !e.loaded {
		return true, false
	}
	s := &e.snap
	if slices.Contains(s.gateways, addr) {
		return false, true
	}
	owned, attached := s.addrs[addr]
	switch {
	case owned:
		return true, true
	case attached:
		return false, e.live && s.seq == e.changes
	case !slices.ContainsFunc(s.subnets, func(p netip.Prefix) bool { return p.Contains(addr) }):
		return false, true
	}
	return true, false
}

// refreshDueLocked reports whether IsEngine may call Docker now: always, unless the last refresh
// failed and its backoff has not passed.
func (e *EngineAddrs) refreshDueLocked(now time.Time) bool {
	return !e.failing || !now.Before(e.nextTry)
}

// Refresh takes a new snapshot now (or waits for the refresh in flight to end and takes another,
// so that the snapshot it leaves began after the call). It returns the refresh's error: a
// failure wraps rtm.ErrUnavailable when the daemon cannot be reached, and the previous
// snapshot stays in use.
func (e *EngineAddrs) Refresh(ctx context.Context) error {
	e.mu.Lock()
	need := e.started + 1
	e.mu.Unlock()
	return e.refreshSince(ctx, need)
}

// refreshSince returns once refresh number need (or a later one) has ended, running it itself
// when none is in flight. Waiters share a refresh; its Docker calls run under RefreshTimeout
// each, detached from any one waiter's cancellation. When ctx ends first it returns ctx's error.
func (e *EngineAddrs) refreshSince(ctx context.Context, need uint64) error {
	e.mu.Lock()
	for {
		if f := e.flight; f != nil {
			e.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if f.n >= need {
				return f.err
			}
			e.mu.Lock()
			continue
		}
		if e.done >= need {
			err := e.lastErr
			e.mu.Unlock()
			return err
		}
		e.started++
		f := &refreshFlight{n: e.started, done: make(chan struct{})}
		e.flight = f
		seq := e.changes
		e.mu.Unlock()

		snap, err := e.load(context.WithoutCancel(ctx))
		snap.seq = seq

		e.mu.Lock()
		e.endLocked(f, snap, err)
		e.mu.Unlock()
		close(f.done)
		return err
	}
}

// endLocked installs a successful refresh, or starts or extends the backoff after a failure.
func (e *EngineAddrs) endLocked(f *refreshFlight, snap addrSnapshot, err error) {
	f.err, e.lastErr = err, err
	e.flight, e.done = nil, f.n
	now := time.Now()
	if err != nil {
		if !e.failing {
			e.log.Warn("engine address refresh failed; answering from the last snapshot", "error", err)
			e.backoff = time.Second
		} else {
			e.backoff = min(2*e.backoff, maxEngineBackoff)
		}
		e.failing, e.nextTry = true, now.Add(e.backoff)
		return
	}
	if e.failing {
		e.log.Info("engine address refresh recovered")
	}
	e.snap, e.loaded, e.failing, e.backoff = snap, true, false, 0
}

// load inspects the network (its subnets, gateways and endpoints), then lists the owned
// containers. The order matters: every endpoint the inspection shows belongs to a container
// created before the list, so an engine is never taken for another container. The network's
// endpoints, unlike a container list, show an address as soon as the connect event is sent.
// Each call is bounded by RefreshTimeout; ctx must not be cancelled by anyone but the refresh's
// owner, so that a timeout is told apart (as ErrUnavailable) from a caller going away.
func (e *EngineAddrs) load(ctx context.Context) (addrSnapshot, error) {
	d := e.d
	name := d.opts.Network
	c := d.begin(ctx, "network", e.opts.RefreshTimeout, attrNetwork.String(name))
	nw, err := d.cli.NetworkInspect(c.ctx, name, network.InspectOptions{})
	if err != nil {
		return addrSnapshot{}, c.end(fmt.Errorf("inspecting network %s: %w", name, classify(ctx, err)))
	}
	_ = c.end(nil)

	c = d.begin(ctx, "list", e.opts.RefreshTimeout, attrNetwork.String(name))
	list, err := d.cli.ContainerList(c.ctx, container.ListOptions{
		// Only this network's: an owned container elsewhere has no address here, and other RTMs'
		// engines (a thousand on a shared host) would make every refresh slower for nothing.
		All: true, Filters: filters.NewArgs(filters.Arg("label", rtm.LabelOwner+"="+rtm.OwnerValue),
			filters.Arg("network", name)),
	})
	if err != nil {
		return addrSnapshot{}, c.end(fmt.Errorf("listing owned containers: %w", classify(ctx, err)))
	}
	_ = c.end(nil)
	owned := make(map[string]bool, len(list))
	for _, s := range list {
		owned[s.ID] = true
	}

	snap := addrSnapshot{addrs: map[netip.Addr]bool{}}
	for id, ep := range nw.Containers {
		for _, a := range []string{ep.IPv4Address, ep.IPv6Address} {
			if p, err := netip.ParsePrefix(a); err == nil {
				ip := p.Addr().Unmap()
				snap.addrs[ip] = snap.addrs[ip] || owned[id]
			}
		}
	}
	for _, cfg := range nw.IPAM.Config {
		p, err := netip.ParsePrefix(cfg.Subnet)
		if err != nil {
			continue
		}
		p = p.Masked()
		snap.subnets = append(snap.subnets, p)
		gw, err := netip.ParseAddr(strings.SplitN(cfg.Gateway, "/", 2)[0])
		if err != nil {
			gw = p.Addr().Next() // the daemon's default gateway: the subnet's first address
		}
		snap.gateways = append(snap.gateways, gw.Unmap())
	}
	return snap, nil
}

// Run keeps the snapshot current until ctx ends, then returns nil: it follows the daemon's
// network events for the configured network, marks the snapshot untrusted and refreshes after
// each connect or disconnect (a burst costs one refresh), and refreshes every Resync. When the
// event stream breaks, snapshots are untrusted (every unknown or non-engine address inside the
// network then costs IsEngine a refresh) until it is reconnected, after a backoff of 1 s doubling
// to 30 s. Refresh failures are handled as IsEngine describes.
func (e *EngineAddrs) Run(ctx context.Context) error {
	backoff := time.Second
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		evs, errs, err := e.subscribe(sctx)
		if err == nil {
			backoff = time.Second
			err = e.follow(ctx, evs, errs)
		}
		cancel()
		e.mu.Lock()
		e.live = false
		e.mu.Unlock()
		if ctx.Err() != nil {
			break
		}
		e.log.Debug("network event stream ended; reconnecting", "error", err, "after", backoff.String())
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxEngineBackoff)
	}
	return nil
}

// follow marks the stream live, refreshes, then handles events and the resync ticker until the
// stream or ctx ends; it returns the stream's error.
func (e *EngineAddrs) follow(ctx context.Context, evs <-chan events.Message, errs <-chan error) error {
	e.mu.Lock()
	e.live = true
	e.changes++ // snapshots taken before the stream was connected cannot be trusted
	e.mu.Unlock()
	_ = e.Refresh(ctx)
	tick := time.NewTicker(e.opts.Resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			if err == nil {
				err = errors.New("stream closed")
			}
			return &kindError{kind: rtm.ErrUnavailable, err: err}
		case m := <-evs:
			if !e.relevant(m) {
				continue
			}
			// Take the rest of a burst (a mass start) before refreshing once.
			for more := true; more; {
				select {
				case <-evs:
				default:
					more = false
				}
			}
			e.mu.Lock()
			e.changes++
			e.mu.Unlock()
			_ = e.Refresh(ctx)
		case <-tick.C:
			_ = e.Refresh(ctx)
		}
	}
}

// relevant reports whether a network event may change who has which address on the network.
func (e *EngineAddrs) relevant(m events.Message) bool {
	if m.Type != events.NetworkEventType {
		return false
	}
	if n := m.Actor.Attributes["name"]; n != "" && n != e.d.opts.Network {
		return false
	}
	switch m.Action {
	case events.ActionConnect, events.ActionDisconnect, events.ActionDestroy, events.ActionCreate:
		return true
	}
	return false
}

// subscribe opens the daemon's network event stream for the configured network. Connecting is
// bounded by CallTimeout (the SDK blocks until the daemon answers).
func (e *EngineAddrs) subscribe(ctx context.Context) (<-chan events.Message, <-chan error, error) {
	d := e.d
	c := d.begin(ctx, "events", 0, attrNetwork.String(d.opts.Network))
	evs, errs, timedOut := d.connectEvents(c,
		filters.Arg("type", string(events.NetworkEventType)),
		filters.Arg("network", d.opts.Network),
	)
	select {
	case err := <-errs:
		if timedOut() {
			err = fmt.Errorf("timed out after %s", d.opts.CallTimeout)
		}
		err = fmt.Errorf("connecting to docker network events: %w", &kindError{kind: rtm.ErrUnavailable, err: err})
		return nil, nil, c.end(err)
	default:
		c.finish(nil)
	}
	return evs, errs, nil
}
