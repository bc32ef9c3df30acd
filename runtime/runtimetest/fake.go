// Package runtimetest is an in-memory Docker world for the reconciler's tests: a fake container
// runtime and engine prober whose every call can fail, hang or succeed late on command, whose
// containers can die, vanish or appear by themselves, and which records every call it is asked
// to make (who made it, for which game, when it began and ended).
//
// One World is shared by every RTM "process" of a test; each process talks to it through its own
// *Fake (World.As), which tags the calls it makes. A *Fake implements controllers.ContainerRuntime
// and rtm.EngineProber, and the List and Events the Docker-events source and the
// periodic pass need, so it stands in for the Docker adapter wherever that is wired.
//
// The semantics follow the Docker adapter (package runtime), not the daemon alone: container names
// are unique (rtm.ContainerName), create gives a created container, start a running one, stop an
// exited one with an exit code, and Remove force-removes, killing a running container, as the
// adapter's ContainerRemove(Force: true) does (Options.StrictRemove makes it refuse with a
// conflict instead, as a daemon asked without force would). Errors have the adapter's kinds:
// unreachable wraps rtm.ErrUnavailable, missing wraps rtm.ErrNotFound, a taken name wraps
// rtm.ErrConflict, and coded refusals are *rtm.Error.
package runtimetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Kind names a runtime call.
type Kind string

// The calls a Fake answers.
const (
	Inspect     Kind = "inspect"
	EnsureImage Kind = "ensure_image"
	Create      Kind = "create"
	Start       Kind = "start"
	Stop        Kind = "stop"
	Remove      Kind = "remove"
	List        Kind = "list"
	Events      Kind = "events"
	Probe       Kind = "probe"
)

// Mutating reports whether a call of kind k changes a game's containers.
func (k Kind) Mutating() bool {
	switch k {
	case Create, Start, Stop, Remove:
		return true
	}
	return false
}

// Call is one recorded call.
type Call struct {
	Seq         int    // order in which calls began, from 1
	Caller      string // the tag of the Fake that made it
	Kind        Kind
	GameID      string // the game the call is about ("" for list and events)
	ContainerID string // the container it was about, when it names one (create: the one made)
	Image       string // ensure_image: the image
	Start, End  time.Time
	// Err is what the call returned; Effect reports whether it changed the world (a late reply
	// returns an error although Effect is true).
	Err    error
	Effect bool
	// Refused reports that the caller's context had already ended when the call was made: like
	// the SDK, the fake then does nothing.
	Refused bool
}

// Mode is how an injected fault behaves.
type Mode int

// The fault modes.
const (
	// Fail returns the fault's error at once, changing nothing.
	Fail Mode = iota
	// Hang blocks the call until the fault is released (the call then proceeds normally), its
	// Timeout passes (the call returns an error wrapping rtm.ErrUnavailable, as the adapter's
	// per-call timeout does), or the caller's context ends (the context's error).
	Hang
	// Late carries the call out, then returns the fault's error (a reply lost or timed out after
	// the daemon acted), after Delay when set.
	Late
)

// Fault is an injected failure. The zero values of its selectors match every call.
type Fault struct {
	Kind   Kind   // which call; "" any
	GameID string // which game; "" any
	Caller string // which Fake; "" any
	Image  string // ensure_image: which image; "" any
	// Skip lets the first Skip matching calls through before the fault applies.
	Skip int
	// Times is how many matching calls the fault applies to; 0 means every one (until cleared).
	Times int
	Mode  Mode
	// Err is the error returned (Fail, Late). Build it with Transient, Coded or Daemon; nil means
	// Transient("injected fault").
	Err     error
	Timeout time.Duration // Hang: 0 waits for Release or the context
	Delay   time.Duration // Late: how long the reply takes

	w       *World
	hits    int
	skipped int
	release chan struct{}
	once    *sync.Once
}

// Release lets every call hanging on f (and every later one) proceed normally.
func (f *Fault) Release() { f.once.Do(func() { close(f.release) }) }

// Hits reports how many calls f has applied to.
func (f *Fault) Hits() int {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return f.hits
}

// Clear removes f (and releases calls hanging on it).
func (f *Fault) Clear() {
	f.w.mu.Lock()
	for i, g := range f.w.faults {
		if g == f {
			f.w.faults = append(f.w.faults[:i], f.w.faults[i+1:]...)
			break
		}
	}
	f.w.mu.Unlock()
	f.Release()
}

// Transient returns an error wrapping rtm.ErrUnavailable: the daemon could not be reached.
func Transient(msg string) error { return fmt.Errorf("%s: %w", msg, rtm.ErrUnavailable) }

// Coded returns a coded refusal.
func Coded(code rtm.ErrorCode, msg string) error { return &rtm.Error{Code: code, Message: msg} }

// Daemon returns the daemon refusing a call with msg. A Fake turns it into what the adapter
// returns for that call: a *rtm.Error with CodeContainerStartFailed for create and start, with
// CodeImagePullFailed for ensure_image, and a plain error carrying the daemon's words for
// inspect, stop and remove (the adapter gives those no code).
func Daemon(msg string) error { return &DaemonError{Message: msg} }

// DaemonError is a daemon's refusal; see Daemon.
type DaemonError struct{ Message string }

func (e *DaemonError) Error() string { return "Error response from daemon: " + e.Message }

// ProbeAnswer is how an engine answers its probe.
type ProbeAnswer int

// The probe answers.
const (
	Healthy    ProbeAnswer = iota
	Unhealthy              // answers, not 2xx: wraps rtm.ErrUnhealthy
	NoAnswer               // connection refused
	ProbeHangs             // never answers: the call ends with the caller's context
)

// Options configure a World.
type Options struct {
	// Seed makes container ids reproducible.
	Seed uint64
	// StrictRemove refuses to remove a running container (wraps rtm.ErrConflict) instead of
	// killing it.
	StrictRemove bool
	// StopExitCode is the exit code of a container stopped by Stop (default 0: the engine exits
	// cleanly on SIGTERM).
	StopExitCode int
	// OnCall, when set, is called at the start of every call (before it acts), outside the
	// world's lock. Tests use it to check who may make a call at that instant.
	OnCall func(Call)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

type container struct {
	c      rtm.Container
	labels map[string]string
}

// World is the shared Docker daemon. Its methods script the world; its Fakes answer calls.
type World struct {
	opts Options

	mu         sync.Mutex
	rng        *rand.Rand
	images     map[string]bool // present locally
	pullable   map[string]bool // a pull would succeed
	containers map[string]*container
	byName     map[string]string
	ips        map[string]string // ip → container id
	faults     []*Fault
	calls      []Call
	subs       map[*sub]bool
	probeGame  map[string]ProbeAnswer
	probeImage map[string]ProbeAnswer
	exitImage  map[string]int // images whose engine exits at once with this code
	maxLive    map[string]int
	twoLive    []string // descriptions of moments with two live containers of a game
}

// NewWorld returns an empty world: no images, no containers, every engine healthy.
func NewWorld(opts Options) *World {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &World{opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		images: map[string]bool{}, pullable: map[string]bool{}, containers: map[string]*container{},
		byName: map[string]string{}, ips: map[string]string{}, subs: map[*sub]bool{},
		probeGame: map[string]ProbeAnswer{}, probeImage: map[string]ProbeAnswer{}, exitImage: map[string]int{},
		maxLive: map[string]int{}}
}

// As returns the world as seen by caller: every call it makes is recorded with that tag.
func (w *World) As(caller string) *Fake { return &Fake{w: w, caller: caller} }

// AddImages makes refs present locally.
func (w *World) AddImages(refs ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range refs {
		w.images[r] = true
	}
}

// AddPullable makes refs pullable from a registry (absent until EnsureImage pulls them).
func (w *World) AddPullable(refs ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range refs {
		w.pullable[r] = true
	}
}

// HasImage reports whether ref is present locally.
func (w *World) HasImage(ref string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.images[ref]
}

// SetProbe sets how the engines of gameID answer their probe.
func (w *World) SetProbe(gameID string, a ProbeAnswer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.probeGame[gameID] = a
}

// SetImageProbe sets how engines of image ref answer their probe, unless their game has its own
// answer (SetProbe).
func (w *World) SetImageProbe(ref string, a ProbeAnswer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.probeImage[ref] = a
}

// SetImageExits makes every engine of image ref exit with code as soon as it starts (start
// itself succeeds, as with Docker).
func (w *World) SetImageExits(ref string, code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.exitImage[ref] = code
}

// Inject adds a fault and returns it. Faults are tried in the order injected; the first that
// matches a call applies.
func (w *World) Inject(f Fault) *Fault {
	nf := f // copy: the caller's value stays a template
	nf.w, nf.release, nf.once = w, make(chan struct{}), new(sync.Once)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.faults = append(w.faults, &nf)
	return &nf
}

// ClearFaults removes every fault and releases every hanging call.
func (w *World) ClearFaults() {
	w.mu.Lock()
	fs := w.faults
	w.faults = nil
	w.mu.Unlock()
	for _, f := range fs {
		f.Release()
	}
}

// Calls returns a copy of every call recorded so far, in the order they began. A call still in
// flight has a zero End.
func (w *World) Calls() []Call {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Call(nil), w.calls...)
}

// Containers returns every container, owned or not, sorted by name.
func (w *World) Containers() []rtm.Container {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]rtm.Container, 0, len(w.containers))
	for _, c := range w.containers {
		out = append(out, c.c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Container returns the container named for gameID, if any.
func (w *World) Container(gameID string) (rtm.Container, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	id, ok := w.byName[rtm.ContainerName(gameID)]
	if !ok {
		return rtm.Container{}, false
	}
	return w.containers[id].c, true
}

// MaxLive returns the most containers labelled with gameID that ever ran at once.
func (w *World) MaxLive(gameID string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.maxLive[gameID]
}

// TwoLive describes every moment at which two containers of one game ran at once.
func (w *World) TwoLive() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.twoLive...)
}

// Die makes the running container of gameID exit by itself with code (OOM: killed for its memory
// limit, code 137). It reports whether a container was running.
func (w *World) Die(gameID string, code int, oom bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.named(gameID)
	if c == nil || !c.c.Running() {
		return false
	}
	if oom {
		code = 137
		w.emit(c, "oom", -1)
	}
	w.exit(c, code)
	c.c.OOMKilled = oom
	return true
}

// Vanish removes the container of gameID whatever its state, as docker rm -f by hand would. It
// reports whether there was one.
func (w *World) Vanish(gameID string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.named(gameID)
	if c == nil {
		return false
	}
	w.destroy(c)
	return true
}

// HandStart creates and starts a container for gameID as an operator's docker run would: named
// galaxy-game-<gameID>, labelled with the game id and image and, when owned, RTM's owner label
// (no generation label). It fails, wrapping rtm.ErrConflict, when the name is taken.
func (w *World) HandStart(gameID, image string, owned bool) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	labels := map[string]string{rtm.LabelGameID: gameID, rtm.LabelImageRef: image}
	if owned {
		labels[rtm.LabelOwner] = rtm.OwnerValue
	}
	c, err := w.create(rtm.ContainerName(gameID), image, labels)
	if err != nil {
		return "", err
	}
	w.start(c)
	return c.c.ID, nil
}

// BreakEvents ends every open event stream with an error wrapping rtm.ErrUnavailable, as a
// daemon restart does.
func (w *World) BreakEvents() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for s := range w.subs {
		w.endSub(s, Transient("docker event stream ended"))
	}
}

// Fake is one caller's connection to a World. It is safe for concurrent use.
type Fake struct {
	w      *World
	caller string
}

// World returns the world f talks to.
func (f *Fake) World() *World { return f.w }

// begin records the start of a call and finds the fault that applies to it.
func (f *Fake) begin(ctx context.Context, kind Kind, gameID, containerID, image string) (int, *Fault) {
	w := f.w
	w.mu.Lock()
	call := Call{Seq: len(w.calls) + 1, Caller: f.caller, Kind: kind, GameID: gameID, ContainerID: containerID,
		Image: image, Start: w.opts.Now(), Refused: ctx.Err() != nil}
	w.calls = append(w.calls, call)
	idx := len(w.calls) - 1
	var fault *Fault
	if !call.Refused {
		for _, ft := range w.faults {
			if (ft.Kind != "" && ft.Kind != kind) || (ft.GameID != "" && ft.GameID != gameID) ||
				(ft.Caller != "" && ft.Caller != f.caller) || (ft.Image != "" && ft.Image != image) || (ft.Times > 0 && ft.hits >= ft.Times) {
				continue
			}
			if ft.skipped < ft.Skip {
				ft.skipped++
				continue
			}
			ft.hits++
			fault = ft
			break
		}
	}
	w.mu.Unlock()
	if w.opts.OnCall != nil {
		w.opts.OnCall(call)
	}
	return idx, fault
}

func (f *Fake) end(idx int, containerID string, effect bool, err error) error {
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	c := &w.calls[idx]
	c.End, c.Err, c.Effect = w.opts.Now(), err, effect
	if containerID != "" {
		c.ContainerID = containerID
	}
	return err
}

// do runs one call: refused when ctx has ended, then the fault (if any) and act, which runs
// under the world's lock and returns the container it was about, whether it changed anything,
// and its error.
func (f *Fake) do(ctx context.Context, kind Kind, gameID, containerID, image string, act func() (string, bool, error)) error {
	idx, fault := f.begin(ctx, kind, gameID, containerID, image)
	if err := ctx.Err(); err != nil {
		return f.end(idx, "", false, fmt.Errorf("%s: %w", kind, err))
	}
	run := func() (string, bool, error) {
		f.w.mu.Lock()
		defer f.w.mu.Unlock()
		return act()
	}
	if fault == nil {
		id, eff, err := run()
		return f.end(idx, id, eff, err)
	}
	ferr := fault.Err
	if ferr == nil {
		ferr = Transient("injected fault")
	}
	ferr = f.shape(kind, gameID, containerID, image, ferr)
	switch fault.Mode {
	case Hang:
		var timeout <-chan time.Time
		if fault.Timeout > 0 {
			t := time.NewTimer(fault.Timeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-fault.release:
			id, eff, err := run()
			return f.end(idx, id, eff, err)
		case <-timeout:
			return f.end(idx, "", false, fmt.Errorf("%s: timed out after %s: %w", kind, fault.Timeout,
				errors.Join(context.DeadlineExceeded, rtm.ErrUnavailable)))
		case <-ctx.Done():
			return f.end(idx, "", false, fmt.Errorf("%s: %w", kind, ctx.Err()))
		}
	case Late:
		id, eff, err := run()
		if err == nil {
			err = ferr
		}
		if fault.Delay > 0 {
			t := time.NewTimer(fault.Delay)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		return f.end(idx, id, eff, err)
	}
	return f.end(idx, "", false, ferr)
}

// shape turns a DaemonError into what the adapter returns for kind.
func (f *Fake) shape(kind Kind, gameID, containerID, image string, err error) error {
	var de *DaemonError
	if !errors.As(err, &de) {
		return err
	}
	ref := containerID
	if ref == "" {
		ref = rtm.ContainerName(gameID)
	}
	switch kind {
	case Create:
		return &rtm.Error{Code: rtm.CodeContainerStartFailed,
			Message: fmt.Sprintf("creating container %s: %s", rtm.ContainerName(gameID), de.Message), Err: de}
	case Start:
		return &rtm.Error{Code: rtm.CodeContainerStartFailed,
			Message: fmt.Sprintf("starting container %s: %s", short(ref), de.Message), Err: de}
	case EnsureImage:
		return &rtm.Error{Code: rtm.CodeImagePullFailed, Message: fmt.Sprintf("pulling %s: %s", image, de.Message), Err: de}
	case Stop:
		return fmt.Errorf("stopping container %s: %w", ref, de)
	case Remove:
		return fmt.Errorf("removing container %s: %w", ref, de)
	case Inspect:
		return fmt.Errorf("inspecting container %s: %w", ref, de)
	case List:
		return fmt.Errorf("listing containers: %w", de)
	case Probe:
		return fmt.Errorf("probing %s: %w", rtm.ContainerName(gameID), de)
	}
	return de
}

func short(id string) string {
	if len(id) == 64 {
		return id[:12]
	}
	return id
}

// Inspect returns the container named for gameID, owned or not, with every inspection field. A
// missing one wraps rtm.ErrNotFound.
func (f *Fake) Inspect(ctx context.Context, gameID string) (rtm.Container, error) {
	var out rtm.Container
	err := f.do(ctx, Inspect, gameID, "", "", func() (string, bool, error) {
		c := f.w.named(gameID)
		if c == nil {
			return "", false, fmt.Errorf("inspecting container %s: No such container: %s: %w",
				rtm.ContainerName(gameID), rtm.ContainerName(gameID), rtm.ErrNotFound)
		}
		out = c.c
		return c.c.ID, false, nil
	})
	if err != nil {
		return rtm.Container{}, err
	}
	return out, nil
}

// EnsureImage succeeds for an image present locally; pulls a pullable one (it is then present);
// any other is a *rtm.Error with CodeImagePullFailed, as a failed pull is.
func (f *Fake) EnsureImage(ctx context.Context, ref string) error {
	return f.do(ctx, EnsureImage, "", "", ref, func() (string, bool, error) {
		switch {
		case f.w.images[ref]:
			return "", false, nil
		case f.w.pullable[ref]:
			f.w.images[ref] = true
			return "", true, nil
		}
		return "", false, &rtm.Error{Code: rtm.CodeImagePullFailed,
			Message: fmt.Sprintf("pulling %s: manifest for %s not found: manifest unknown", ref, ref)}
	})
}

// Create creates the container of spec (created, not started) with RTM's labels and returns its
// id. A taken name wraps rtm.ErrConflict; an image not present locally is a *rtm.Error with
// CodeImagePullFailed.
func (f *Fake) Create(ctx context.Context, spec rtm.ContainerSpec) (string, error) {
	var id string
	err := f.do(ctx, Create, spec.GameID, "", spec.ImageRef, func() (string, bool, error) {
		if !f.w.images[spec.ImageRef] {
			return "", false, &rtm.Error{Code: rtm.CodeImagePullFailed,
				Message: fmt.Sprintf("image %s is not present on the docker host", spec.ImageRef)}
		}
		c, err := f.w.create(rtm.ContainerName(spec.GameID), spec.ImageRef, map[string]string{
			rtm.LabelOwner: rtm.OwnerValue, rtm.LabelGameID: spec.GameID, rtm.LabelImageRef: spec.ImageRef,
			rtm.LabelGeneration: strconv.FormatInt(spec.Generation, 10)})
		if err != nil {
			return "", false, err
		}
		id = c.c.ID
		return id, true, nil
	})
	if err != nil {
		// A late reply loses the id, as a lost reply would.
		return "", err
	}
	return id, nil
}

// Start starts a created or exited container; a running one is left alone. A missing one wraps
// rtm.ErrNotFound.
func (f *Fake) Start(ctx context.Context, id string) error {
	return f.do(ctx, Start, f.gameOf(id), id, "", func() (string, bool, error) {
		c := f.w.containers[id]
		if c == nil {
			return "", false, fmt.Errorf("starting container %s: No such container: %w", id, rtm.ErrNotFound)
		}
		if c.c.Running() {
			return id, false, nil
		}
		f.w.start(c)
		return id, true, nil
	})
}

// Stop stops a running container (exit code Options.StopExitCode); a stopped one is left alone.
// A missing one wraps rtm.ErrNotFound.
func (f *Fake) Stop(ctx context.Context, id string, _ time.Duration) error {
	return f.do(ctx, Stop, f.gameOf(id), id, "", func() (string, bool, error) {
		c := f.w.containers[id]
		if c == nil {
			return "", false, fmt.Errorf("stopping container %s: No such container: %w", id, rtm.ErrNotFound)
		}
		if !c.c.Running() {
			return id, false, nil
		}
		f.w.emit(c, "kill", -1)
		f.w.exit(c, f.w.opts.StopExitCode)
		f.w.emit(c, "stop", -1)
		return id, true, nil
	})
}

// Remove removes a container, killing it first when it runs (unless Options.StrictRemove, when
// that wraps rtm.ErrConflict). A missing one wraps rtm.ErrNotFound.
func (f *Fake) Remove(ctx context.Context, id string) error {
	return f.do(ctx, Remove, f.gameOf(id), id, "", func() (string, bool, error) {
		c := f.w.containers[id]
		if c == nil {
			return "", false, fmt.Errorf("removing container %s: No such container: %w", id, rtm.ErrNotFound)
		}
		if c.c.Running() && f.w.opts.StrictRemove {
			return "", false, fmt.Errorf("removing container %s: You cannot remove a running container %s. Stop the container before attempting removal: %w",
				id, id, rtm.ErrConflict)
		}
		f.w.destroy(c)
		return id, true, nil
	})
}

// List returns every owned container, running or not, with the fields a list gives (health,
// from the status line, but no OOM flag, IP or start and finish times).
func (f *Fake) List(ctx context.Context) ([]rtm.Container, error) {
	var out []rtm.Container
	err := f.do(ctx, List, "", "", "", func() (string, bool, error) {
		for _, c := range f.w.containers {
			if !c.c.Owned {
				continue
			}
			s := c.c
			s.OOMKilled, s.IP, s.StartedAt, s.FinishedAt = false, "", time.Time{}, time.Time{}
			out = append(out, s)
		}
		return "", false, nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Probe answers as the engine reached at c's address would: by c.IP when set (whichever
// container holds that address now, as on a real network), else by the endpoint's container
// name. Nobody there, or an engine not running, refuses the connection.
func (f *Fake) Probe(ctx context.Context, c rtm.Container, endpoint string) error {
	var answer ProbeAnswer
	err := f.do(ctx, Probe, c.GameID, c.ID, "", func() (string, bool, error) {
		var target *container
		if c.IP != "" {
			target = f.w.containers[f.w.ips[c.IP]]
		} else {
			name := strings.TrimPrefix(endpoint, "http://")
			name, _, _ = strings.Cut(name, ":")
			target = f.w.containers[f.w.byName[name]]
		}
		if target == nil || !target.c.Running() {
			return "", false, fmt.Errorf("probing %s: connect: connection refused", rtm.ContainerName(c.GameID))
		}
		answer = f.w.answerOf(target.c)
		return target.c.ID, false, nil
	})
	if err != nil {
		return err
	}
	switch answer {
	case Unhealthy:
		return fmt.Errorf("probing %s: status 503: %w", rtm.ContainerName(c.GameID), rtm.ErrUnhealthy)
	case NoAnswer:
		return fmt.Errorf("probing %s: connect: connection refused", rtm.ContainerName(c.GameID))
	case ProbeHangs:
		<-ctx.Done()
		return fmt.Errorf("probing %s: %w", rtm.ContainerName(c.GameID), ctx.Err())
	}
	return nil
}

// ProbeAnswerOf returns how the engine of container c answers its probe now (SetProbe,
// SetImageProbe, else Healthy).
func (w *World) ProbeAnswerOf(c rtm.Container) ProbeAnswer {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.answerOf(c)
}

// answerOf is ProbeAnswerOf with the world's lock held.
func (w *World) answerOf(c rtm.Container) ProbeAnswer {
	if a, ok := w.probeGame[c.GameID]; ok {
		return a
	}
	if a, ok := w.probeImage[c.ImageRef]; ok {
		return a
	}
	return Healthy
}

type sub struct {
	ch    chan rtm.DockerEvent
	errc  chan error
	ended bool
}

// Events streams the events of owned containers until ctx ends (the error channel then yields
// ctx's error) or the stream breaks (BreakEvents, or a subscriber that fell more than 256 events
// behind: an error wrapping rtm.ErrUnavailable). The error channel yields exactly once.
func (f *Fake) Events(ctx context.Context) (<-chan rtm.DockerEvent, <-chan error) {
	s := &sub{ch: make(chan rtm.DockerEvent, 256), errc: make(chan error, 1)}
	err := f.do(ctx, Events, "", "", "", func() (string, bool, error) {
		f.w.subs[s] = true
		return "", false, nil
	})
	if err != nil {
		s.errc <- err
		return s.ch, s.errc
	}
	context.AfterFunc(ctx, func() {
		f.w.mu.Lock()
		defer f.w.mu.Unlock()
		f.w.endSub(s, ctx.Err())
	})
	return s.ch, s.errc
}

// endSub ends a subscription; the world's lock is held.
func (w *World) endSub(s *sub, err error) {
	if s.ended {
		return
	}
	s.ended = true
	delete(w.subs, s)
	s.errc <- err
}

// emit sends an event of an owned container to every subscriber; the world's lock is held.
func (w *World) emit(c *container, action string, exitCode int) {
	if !c.c.Owned {
		return
	}
	ev := rtm.DockerEvent{GameID: c.c.GameID, ContainerID: c.c.ID, Action: action, ExitCode: exitCode, Time: w.opts.Now()}
	for s := range w.subs {
		select {
		case s.ch <- ev:
		default:
			w.endSub(s, Transient("docker event stream fell behind"))
		}
	}
}

// named returns the container named for gameID; the world's lock is held.
func (w *World) named(gameID string) *container {
	id, ok := w.byName[rtm.ContainerName(gameID)]
	if !ok {
		return nil
	}
	return w.containers[id]
}

func (f *Fake) gameOf(id string) string {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	if c := f.w.containers[id]; c != nil {
		return c.c.GameID
	}
	return ""
}

// create makes a created container; the world's lock is held.
func (w *World) create(name, image string, labels map[string]string) (*container, error) {
	if _, taken := w.byName[name]; taken {
		return nil, fmt.Errorf("creating container %s: Conflict. The container name \"/%s\" is already in use: %w",
			name, name, rtm.ErrConflict)
	}
	var b [32]byte
	for i := range b {
		b[i] = byte(w.rng.UintN(256))
	}
	id := fmt.Sprintf("%x", b)
	c := &container{labels: labels, c: rtm.Container{ID: id, Name: name, ImageRef: image, State: rtm.StateCreated,
		Created: w.opts.Now().UTC(), GameID: labels[rtm.LabelGameID], Owned: labels[rtm.LabelOwner] == rtm.OwnerValue}}
	if ref := labels[rtm.LabelImageRef]; ref != "" {
		c.c.ImageRef = ref
	}
	if g, err := strconv.ParseInt(labels[rtm.LabelGeneration], 10, 64); err == nil {
		c.c.Generation = g
	}
	w.containers[id] = c
	w.byName[name] = id
	w.emit(c, "create", -1)
	return c, nil
}

// start runs c with the lowest free address; the world's lock is held.
func (w *World) start(c *container) {
	for i := 2; ; i++ {
		ip := fmt.Sprintf("10.99.%d.%d", i/250, i%250+2)
		if _, used := w.ips[ip]; !used {
			w.ips[ip] = c.c.ID
			c.c.IP = ip
			break
		}
	}
	c.c.State, c.c.ExitCode, c.c.OOMKilled, c.c.StartedAt, c.c.FinishedAt = rtm.StateRunning, 0, false, w.opts.Now().UTC(), time.Time{}
	w.emit(c, "start", -1)
	w.countLive(c.c.GameID)
	if code, ok := w.exitImage[c.c.ImageRef]; ok {
		w.exit(c, code)
	}
}

// exit ends a running c with code; the world's lock is held.
func (w *World) exit(c *container, code int) {
	delete(w.ips, c.c.IP)
	c.c.IP = ""
	c.c.State, c.c.ExitCode, c.c.FinishedAt = rtm.StateExited, code, w.opts.Now().UTC()
	w.emit(c, "die", code)
}

// destroy removes c, killing it first when it runs; the world's lock is held.
func (w *World) destroy(c *container) {
	if c.c.Running() {
		w.emit(c, "kill", -1)
		w.exit(c, 137)
	}
	delete(w.containers, c.c.ID)
	delete(w.byName, c.c.Name)
	w.emit(c, "destroy", -1)
}

// countLive notes how many containers of gameID run now; the world's lock is held.
func (w *World) countLive(gameID string) {
	if gameID == "" {
		return
	}
	var ids []string
	for _, c := range w.containers {
		if c.c.GameID == gameID && c.c.Running() {
			ids = append(ids, short(c.c.ID))
		}
	}
	if len(ids) > w.maxLive[gameID] {
		w.maxLive[gameID] = len(ids)
	}
	if len(ids) > 1 {
		sort.Strings(ids)
		w.twoLive = append(w.twoLive, fmt.Sprintf("game %s runs %s at once", gameID, strings.Join(ids, " and ")))
	}
}

// Interleavings returns, for every game, the pairs of mutating calls by different callers whose
// time spans overlap (a process acting on a game while another one did): each as "a / b". Calls
// that changed nothing (refused, failed before acting) are left out.
func Interleavings(calls []Call) []string {
	byGame := map[string][]Call{}
	for _, c := range calls {
		if c.Kind.Mutating() && c.Effect && c.GameID != "" {
			byGame[c.GameID] = append(byGame[c.GameID], c)
		}
	}
	var out []string
	for _, cs := range byGame {
		for i := range cs {
			for j := i + 1; j < len(cs); j++ {
				a, b := cs[i], cs[j]
				if a.Caller == b.Caller {
					continue
				}
				aEnd, bEnd := a.End, b.End
				if aEnd.IsZero() {
					aEnd = time.Now()
				}
				if bEnd.IsZero() {
					bEnd = time.Now()
				}
				if a.Start.Before(bEnd) && b.Start.Before(aEnd) {
					out = append(out, fmt.Sprintf("%s / %s", a, b))
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// String describes a call for failure messages.
func (c Call) String() string {
	s := fmt.Sprintf("#%d %s %s game=%s", c.Seq, c.Caller, c.Kind, c.GameID)
	if c.ContainerID != "" {
		s += " container=" + short(c.ContainerID)
	}
	if c.Err != nil {
		s += " err=" + c.Err.Error()
	}
	return s
}

// Mismatch compares a settled runtime record with the world and returns how they disagree, or ""
// when the record says what the world shows: a running record names the running container and
// its image; a stopped or exited one names the container, which does not run; a removed one has
// no container; a failed one may leave anything (what failed may be the call that would have
// changed it). A container without RTM's owner label counts as none, as the reconciler sees it.
// A settled record in a passing status (starting, stopping) is a mismatch.
func (w *World) Mismatch(rec *rtm.Record) string {
	c, found := w.Container(rec.GameID)
	if found && !c.Owned {
		found = false
	}
	desc := "no container"
	if found {
		desc = fmt.Sprintf("container %s %s of %s", short(c.ID), c.State, c.ImageRef)
	}
	bad := func(want string) string {
		return fmt.Sprintf("record of %s says %s (container %s, image %s) but the runtime shows %s; want %s",
			rec.GameID, rec.Status, short(rec.CurrentContainerID), rec.CurrentImageRef, desc, want)
	}
	switch rec.Status {
	case rtm.StatusRunning:
		if !found || !c.Running() || c.ID != rec.CurrentContainerID || c.ImageRef != rec.CurrentImageRef {
			return bad("the recorded container running the recorded image")
		}
	case rtm.StatusStopped, rtm.StatusExited:
		if !found || c.Running() || c.ID != rec.CurrentContainerID {
			return bad("the recorded container, not running")
		}
	case rtm.StatusRemoved:
		if found {
			return bad("no container")
		}
	case rtm.StatusFailed:
	default:
		return bad("a settled status")
	}
	return ""
}
