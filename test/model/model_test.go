// Package model is RTM's randomized model test, in the spirit of FoundationDB's simulation and
// TigerBeetle's VOPR. Each schedule, drawn from a seed, runs several RTM "processes" (each its own
// reconciler, controller queue, lease owner and enqueue sources) against one real PostgreSQL and
// Redis and one fake Docker world (runtime/runtimetest), while it submits start and stop jobs and
// REST mutations, makes containers die, vanish and appear, injects runtime faults, takes leases
// away and restarts processes. Once the schedule has settled it checks the invariants of issue 15:
// every request answered exactly once with a code its channel allows; never two live containers
// for a game; the record equals what the runtime shows; one health event per transition; no
// mutating runtime call by a process whose lease had ended.
//
// It prints its base seed; a failing schedule prints its own. Replay one with
//
//	go test ./test/model/ -run TestModel -seed=N      (or RTM_MODEL_SEED=N)
//
// and run more with -schedules=N (or RTM_MODEL_SCHEDULES=N; make model SCHEDULES=N). A replay
// draws the same schedule; the goroutines' interleaving is the machine's.
package model

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/probe"
	"github.com/galaxy-platform/rtmanager/runtime"
	"github.com/galaxy-platform/rtmanager/runtime/runtimetest"
	"github.com/galaxy-platform/rtmanager/sources"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

var (
	seedFlag      = flag.Uint64("seed", envUint("RTM_MODEL_SEED", 0), "replay the schedule of this seed only")
	schedulesFlag = flag.Int("schedules", int(envUint("RTM_MODEL_SCHEDULES", 0)), "how many schedules to run (default 300, 200 under -race, a fifth with -short)")
	parallelFlag  = flag.Int("model.parallel", 4, "schedules run at once")
	stealFlag     = flag.Bool("model.steal", false, "also let leases expire behind their holder's back (a holder cut off from Redis that has not noticed)")
	verboseFlag   = flag.Bool("model.verbose", false, "print every schedule's steps")
)

func envUint(name string, def uint64) uint64 {
	if v, err := strconv.ParseUint(os.Getenv(name), 10, 64); err == nil {
		return v
	}
	return def
}

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// The images of the model: A is present, B must be pulled, C is present but its engine answers
// its probe unhealthy, D exists nowhere.
// progressEvery is how often, in schedules, a run prints how far it is.
const progressEvery = 500

const (
	imgA = "galaxy/game:1.4.1"
	imgB = "galaxy/game:1.4.2"
	imgC = "galaxy/game:1.4.3"
	imgD = "galaxy/game:1.4.9"
)

var images = []string{imgA, imgB, imgC, imgD}

// harness is what every schedule shares: one database, one Redis.
type harness struct {
	st   *store.Store
	pool *pgxpool.Pool
	rdb  *redis.Client
}

func TestModel(t *testing.T) {
	st, dsn := env.MustStoreWith(t, store.Options{MaxConns: 60})
	h := &harness{st: st, pool: testenv.MustPool(t, dsn), rdb: env.MustRedis(t)}

	var seeds []uint64
	if *seedFlag != 0 {
		seeds = []uint64{*seedFlag}
	} else {
		n := *schedulesFlag
		if n <= 0 {
			n = defaultSchedules
			if testing.Short() {
				n = defaultSchedules / 5
			}
		}
		base := uint64(time.Now().UnixNano()) % 1e12
		t.Logf("model: %d schedules from seed %d (replay one with -seed=N)", n, base)
		fmt.Printf("model: %d schedules from seed %d\n", n, base)
		for i := range n {
			seeds = append(seeds, base+uint64(i))
		}
	}
	start := time.Now()
	var (
		mu       sync.Mutex
		failed   int
		done     int
		wg       sync.WaitGroup
		next     = make(chan uint64)
		parallel = max(*parallelFlag, 1)
	)
	for range min(parallel, len(seeds)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seed := range next {
				s := newSchedule(h, seed)
				violations := s.run()
				mu.Lock()
				done++
				if len(violations) > 0 {
					failed++
				}
				if done%progressEvery == 0 {
					// Long runs (make model SCHEDULES=10000 takes about an hour) say how far they are.
					fmt.Printf("model: %d/%d schedules, %d with violations, %s\n",
						done, len(seeds), failed, time.Since(start).Round(time.Second))
				}
				if len(violations) > 0 {
					t.Errorf("seed %d: %d violations (replay: go test ./test/model/ -run TestModel -seed=%d -v):\n  %s\nsteps:\n%s\nlog (tail):\n%s",
						seed, len(violations), seed, strings.Join(violations, "\n  "), s.steps.String(), tail(s.logs.String(), 60))
				} else if *verboseFlag {
					t.Logf("seed %d: ok\nsteps:\n%s", seed, s.steps.String())
				}
				mu.Unlock()
			}
		}()
	}
	for _, s := range seeds {
		next <- s
	}
	close(next)
	wg.Wait()
	t.Logf("model: %d schedules, %d with violations, in %s", len(seeds), failed, time.Since(start).Round(time.Millisecond))
}

// schedule is one seed's run.
type schedule struct {
	h      *harness
	seed   uint64
	rng    *rand.Rand
	world  *runtimetest.World
	games  []string
	prefix string
	book   *leaseBook
	procs  []*process
	reqs   int
	mark   int64 // the outbox's last id before the schedule began

	logs  testenv.SyncBuffer
	steps strings.Builder
	log   *slog.Logger

	mu         sync.Mutex
	violations []string
}

func newSchedule(h *harness, seed uint64) *schedule {
	s := &schedule{h: h, seed: seed, rng: rand.New(rand.NewPCG(seed, seed*0x9e3779b97f4a7c15+1)),
		prefix: fmt.Sprintf("m%x-", seed)}
	s.log = slog.New(slog.NewTextHandler(&s.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s.book = &leaseBook{holder: map[string]holding{}, last: map[string]string{}, violate: s.violate}
	s.world = runtimetest.NewWorld(runtimetest.Options{Seed: seed, OnCall: s.book.check})
	s.world.AddImages(imgA, imgC)
	s.world.AddPullable(imgB)
	s.world.SetImageProbe(imgC, runtimetest.Unhealthy)
	for i := range 2 + s.rng.IntN(2) {
		s.games = append(s.games, fmt.Sprintf("%sg%d", s.prefix, i))
	}
	return s
}

func (s *schedule) violate(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, fmt.Sprintf(format, args...))
}

func (s *schedule) step(format string, args ...any) {
	fmt.Fprintf(&s.steps, "  "+format+"\n", args...)
}

// run plays the schedule, lets it settle and checks the invariants; it returns the violations.
func (s *schedule) run() []string {
	ctx := context.Background()
	if err := s.h.pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM outbox`).Scan(&s.mark); err != nil {
		return []string{"reading the outbox: " + err.Error()}
	}
	for i := range 2 + s.rng.IntN(2) {
		s.procs = append(s.procs, s.startProcess(i, 0))
	}
	defer func() {
		for _, p := range s.procs {
			p.stop()
		}
	}()
	for range 20 + s.rng.IntN(25) {
		s.act(ctx)
		pause(time.Duration(s.rng.IntN(12)) * time.Millisecond)
	}
	s.settle(ctx)
	for _, p := range s.procs {
		p.stop()
	}
	s.check(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.violations
}

func pause(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	<-t.C
}

// act draws and performs one step.
func (s *schedule) act(ctx context.Context) {
	g := s.games[s.rng.IntN(len(s.games))]
	p := s.procs[s.rng.IntN(len(s.procs))]
	switch n := s.rng.IntN(100); {
	case n < 22:
		img := images[s.rng.IntN(len(images))]
		s.step("start job %s %s via %s", g, img, p.name)
		s.submit(ctx, p, rtm.Request{Channel: rtm.ChannelStartJobs, Source: rtm.SourceStartJobs, Kind: rtm.OpStart, GameID: g, ImageRef: img}, nil)
	case n < 38:
		s.step("stop job %s via %s", g, p.name)
		s.submit(ctx, p, rtm.Request{Channel: rtm.ChannelStopJobs, Source: rtm.SourceStopJobs, Kind: rtm.OpStop, GameID: g, Reason: "finished"}, nil)
	case n < 44:
		s.step("REST restart %s via %s", g, p.name)
		s.rest(ctx, p, rtm.Request{Kind: rtm.OpRestart, GameID: g})
	case n < 51:
		s.step("REST patch %s via %s", g, p.name)
		s.rest(ctx, p, rtm.Request{Kind: rtm.OpPatch, GameID: g})
	case n < 56:
		s.step("REST cleanup %s via %s", g, p.name)
		s.rest(ctx, p, rtm.Request{Kind: rtm.OpCleanupContainer, GameID: g})
	case n < 61:
		code := []int{0, 1, 2, 139}[s.rng.IntN(4)]
		s.step("world: %s dies with %d: %v", g, code, s.world.Die(g, code, false))
	case n < 64:
		s.step("world: %s killed for memory: %v", g, s.world.Die(g, 0, true))
	case n < 68:
		s.step("world: %s vanishes: %v", g, s.world.Vanish(g))
	case n < 71:
		img := images[s.rng.IntN(3)]
		owned := s.rng.IntN(4) > 0
		_, err := s.world.HandStart(g, img, owned)
		s.step("world: %s started by hand with %s (owned %v): %v", g, img, owned, err)
	case n < 73:
		s.step("world: docker events stream breaks")
		s.world.BreakEvents()
	case n < 78:
		a := []runtimetest.ProbeAnswer{runtimetest.Healthy, runtimetest.Unhealthy, runtimetest.NoAnswer}[s.rng.IntN(3)]
		s.step("world: %s answers its probe %d", g, a)
		s.world.SetProbe(g, a)
	case n < 88:
		s.fault(g)
	case n < 96:
		s.loseLease()
	default:
		i := slices.Index(s.procs, p)
		s.step("restart process %s", p.name)
		p.stop()
		s.procs[i] = s.startProcess(i, p.incarnation+1)
	}
}

var faultKinds = []runtimetest.Kind{runtimetest.Inspect, runtimetest.EnsureImage, runtimetest.Create, runtimetest.Start,
	runtimetest.Stop, runtimetest.Remove, runtimetest.Probe, runtimetest.List}

func (s *schedule) fault(g string) {
	f := runtimetest.Fault{Kind: faultKinds[s.rng.IntN(len(faultKinds))], Times: 1 + s.rng.IntN(3)}
	if f.Kind != runtimetest.EnsureImage && f.Kind != runtimetest.List && s.rng.IntN(3) > 0 {
		f.GameID = g
	}
	what := ""
	switch s.rng.IntN(6) {
	case 0:
		f.Err, what = runtimetest.Transient("connection refused"), "fails transiently"
	case 1:
		f.Err, what = runtimetest.Daemon("injected daemon refusal"), "is refused by the daemon"
	case 2:
		f.Times, f.Err, what = 0, runtimetest.Daemon("injected daemon refusal"), "is refused by the daemon until the schedule settles"
	case 3:
		f.Mode, f.Timeout, what = runtimetest.Hang, time.Duration(5+s.rng.IntN(40))*time.Millisecond, "hangs until its call timeout"
	case 4:
		f.Mode, f.Times, what = runtimetest.Hang, 1, "hangs until the schedule settles or the caller gives up"
	default:
		f.Mode, f.Err, what = runtimetest.Late, runtimetest.Transient("context deadline exceeded"), "succeeds but its reply is lost"
	}
	times := "every time"
	if f.Times > 0 {
		times = fmt.Sprintf("%d times", f.Times)
	}
	s.step("fault: %s of %q %s, %s", f.Kind, f.GameID, what, times)
	s.world.Inject(f)
}

// loseLease arms a lease loss in one process: the next lease it takes is lost a moment later
// (while the reconcile that took it is likely acting). Its context ends, as when the holder finds
// the lease lost, and the key goes, as when it expires, so another process may take it. With
// -model.steal the key may instead go behind the holder's back (a holder cut off from Redis that
// has not noticed yet).
func (s *schedule) loseLease() {
	p := s.procs[s.rng.IntN(len(s.procs))]
	after := time.Duration(s.rng.IntN(8)) * time.Millisecond
	steal := *stealFlag && s.rng.IntN(2) == 0
	if steal {
		s.step("the next lease %s takes expires behind its back after %s", p.name, after)
	} else {
		s.step("the next lease %s takes is lost after %s", p.name, after)
	}
	p.leaser.arm(after, steal)
}

// submit hands a request to p's intake, as p's job consumer or API would: validated, admitted
// under the record's lock, recorded, its game enqueued on p.
func (s *schedule) submit(ctx context.Context, p *process, req rtm.Request, guard rtm.Guard) {
	s.reqs++
	req.RequestID = fmt.Sprintf("%sr%d", s.prefix, s.reqs)
	req.ReceivedAt = time.Now().UTC()
	in := &rtm.Intake{Store: s.h.st, Enqueue: p.enqueue, Allowed: []string{"galaxy/game"},
		Settings: rtm.Settings{EnginePort: 8080, StateRootJoin: stateDirs{}.join}}
	// A store that cannot answer now (a lock timeout on a loaded machine) is retried, as the job
	// consumer retries its entry; anything else is a violation.
	sub, err := in.Take(ctx, req, guard)
	var b rtm.Backoff
	for tries := 1; errors.Is(err, rtm.ErrUnavailable) && tries < 5 && rtm.Sleep(ctx, b.Next()); tries++ {
		s.step("  → %s not recorded yet, retried: %v", req.RequestID, err)
		sub, err = in.Take(ctx, req, guard)
	}
	if err != nil {
		s.violate("recording %s %s: %v", req.Kind, req.RequestID, err)
		return
	}
	switch {
	case sub.Duplicate:
		s.step("  → %s duplicate", req.RequestID)
	case sub.Discarded:
		s.step("  → %s refused at once, nothing recorded: %s", req.RequestID, sub.Answer.Code)
	case sub.Answer != nil:
		s.step("  → %s answered at once: %s %s", req.RequestID, sub.Answer.Outcome, sub.Answer.Code)
	default:
		s.step("  → %s recorded (generation %d)", req.RequestID, sub.Request.Generation)
	}
}

// rest submits a REST mutation as the API does: a patch picks another image than the game's and
// is guarded against a change of image while it was checked; a refusal leaves nothing recorded.
func (s *schedule) rest(ctx context.Context, p *process, req rtm.Request) {
	req.Channel, req.Source = rtm.ChannelREST, rtm.SourceAdminREST
	var guard rtm.Guard
	if req.Kind == rtm.OpPatch {
		rec, err := s.h.st.Get(ctx, req.GameID)
		if err != nil {
			s.step("  → refused: %v", err) // 404 (or 503): nothing recorded
			return
		}
		current := rec.CurrentImageRef
		if current == "" {
			current = rec.DesiredImageRef
		}
		req.ImageRef, req.OldImageRef = images[s.rng.IntN(len(images))], current
		if req.ImageRef == current {
			s.step("  → not sent: %s already runs %s", req.GameID, current)
			return
		}
		guard = func(rec *rtm.Record) *rtm.Answer {
			now := rec.CurrentImageRef
			if now == "" {
				now = rec.DesiredImageRef
			}
			if now != current {
				return &rtm.Answer{Outcome: rtm.OutcomeFailed, Code: rtm.CodeConflict, Message: "the image changed while the patch was checked"}
			}
			return nil
		}
	}
	s.submit(ctx, p, req, guard)
}

// settle clears the faults, enqueues every game on every process and waits until every request
// is answered and every record says what the runtime shows, for long enough that the probers
// have seen the engines as they now are.
func (s *schedule) settle(ctx context.Context) {
	s.step("settle")
	s.world.ClearFaults()
	enqueueAll := func() {
		for _, p := range s.procs {
			for _, g := range s.games {
				p.enqueue(g)
			}
		}
	}
	enqueueAll()
	deadline := time.Now().Add(10 * time.Second)
	var stableSince time.Time
	var why []string
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for range tick.C {
		why = s.unsettled(ctx)
		switch {
		case len(why) > 0:
			stableSince = time.Time{}
		case stableSince.IsZero():
			stableSince = time.Now()
			enqueueAll() // everything once more: a converged game must stay as it is
		case time.Since(stableSince) > 400*time.Millisecond:
			return
		}
		if time.Now().After(deadline) {
			s.violate("did not settle within 10s: %s", strings.Join(why, "; "))
			return
		}
	}
}

// unsettled lists what is not settled yet: unanswered requests, records that are not settled or
// disagree with the runtime, owned containers without a record.
func (s *schedule) unsettled(ctx context.Context) []string {
	var why []string
	rows, err := s.h.pool.Query(ctx, `SELECT request_id, op_kind FROM requests WHERE game_id = ANY($1) AND answered_at IS NULL`, s.games)
	if err != nil {
		return []string{err.Error()}
	}
	for rows.Next() {
		var id, kind string
		if err := rows.Scan(&id, &kind); err != nil {
			return []string{err.Error()}
		}
		why = append(why, fmt.Sprintf("%s %s unanswered", kind, id))
	}
	rows.Close()
	for _, g := range s.games {
		rec, err := s.h.st.Get(ctx, g)
		if err != nil {
			if c, ok := s.world.Container(g); ok && c.Owned {
				why = append(why, fmt.Sprintf("container %s of %s has no record", c.ID[:12], g))
			}
			continue
		}
		if !rec.Settled() {
			why = append(why, fmt.Sprintf("record of %s not settled (generation %d, observed %d)", g, rec.Generation, rec.ObservedGeneration))
		} else if m := s.world.Mismatch(rec); m != "" {
			why = append(why, m)
		}
	}
	if len(why) == 0 {
		// The prober needs its grace and threshold rounds to see an engine as it answers now: on
		// a loaded machine that can outlast the quiet period, so settling waits for it, and a
		// transition that is really lost shows as a schedule that does not settle.
		_, state := s.healthProblems(ctx)
		why = append(why, state...)
	}
	return why
}

// check checks the invariants that are read once everything has stopped.
func (s *schedule) check(ctx context.Context) {
	for _, l := range s.world.TwoLive() {
		s.violate("two live containers: %s", l)
	}
	for _, l := range runtimetest.Interleavings(s.world.Calls()) {
		s.violate("mutating calls of two processes interleave: %s", l)
	}
	s.checkAnswers(ctx)
	s.checkHealth(ctx)
}

// Codes a job result may carry (CONTRACT §5) and a REST mutation may carry (§6), besides success.
// A stop or cleanup whose Docker work never succeeds is answered internal_error (the daemon
// refused it) or service_unavailable (it could not be reached): the contract names no stop
// failure code, and these are its spellings of those two (docs/workers.md §3, retry policy).
var (
	jobCodes  = []rtm.ErrorCode{rtm.CodeImagePullFailed, rtm.CodeContainerStartFailed, rtm.CodeStartConfigInvalid, rtm.CodeConflict, rtm.CodeRuntimeNotFound, rtm.CodeInvalidJob}
	restCodes = []rtm.ErrorCode{rtm.CodeImagePullFailed, rtm.CodeContainerStartFailed, rtm.CodeStartConfigInvalid, rtm.CodeConflict, rtm.CodeRuntimeNotFound, rtm.CodeRuntimeRunning}
	stopCodes = []rtm.ErrorCode{rtm.CodeInternalError, rtm.CodeServiceUnavailable}
)

// checkAnswers: every request answered, once (one operation row, and for a job one job result),
// with a code its channel allows.
func (s *schedule) checkAnswers(ctx context.Context) {
	rows, err := s.h.pool.Query(ctx, `SELECT r.channel, r.request_id, r.op_kind, r.answered_at IS NOT NULL, r.outcome, r.error_code, r.error_message,
			(SELECT count(*) FROM operation_log o WHERE o.game_id = r.game_id AND o.request_id = r.request_id AND o.op_kind = r.op_kind),
			(SELECT count(*) FROM outbox b WHERE b.id > $2 AND b.stream = 'job_results' AND b.fields[2] = r.request_id)
		FROM requests r WHERE r.game_id = ANY($1) ORDER BY r.request_id`, s.games, s.mark)
	if err != nil {
		s.violate("reading requests: %v", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var ch, id, kind, outcome, code, msg string
		var answered bool
		var ops, results int
		if err := rows.Scan(&ch, &id, &kind, &answered, &outcome, &code, &msg, &ops, &results); err != nil {
			s.violate("reading requests: %v", err)
			return
		}
		what := fmt.Sprintf("%s %s on %s", kind, id, ch)
		wantResults := 1
		if rtm.Channel(ch) == rtm.ChannelREST {
			wantResults = 0
		}
		switch {
		case !answered:
			s.violate("%s was never answered", what)
		case ops != 1 || results != wantResults:
			s.violate("%s answered %d times (%d job results)", what, ops, results)
		}
		if outcome != string(rtm.OutcomeFailed) {
			continue
		}
		c := rtm.ErrorCode(code)
		allowed := slices.Contains(jobCodes, c)
		if rtm.Channel(ch) == rtm.ChannelREST {
			allowed = slices.Contains(restCodes, c) || rtm.OpKind(kind) == rtm.OpPatch && c == rtm.CodePatchRolledBack
		}
		if k := rtm.OpKind(kind); (k == rtm.OpStop || k == rtm.OpCleanupContainer) && slices.Contains(stopCodes, c) {
			allowed = true
		}
		if !allowed {
			s.violate("%s answered %s (%s): a code its channel may not get", what, code, msg)
		}
	}
	if err := rows.Err(); err != nil {
		s.violate("reading requests: %v", err)
	}
}

// checkHealth: one health event per transition (healthProblems), and the last probe event of each
// running engine says how it answers now (settle waited for it).
func (s *schedule) checkHealth(ctx context.Context) {
	sequence, state := s.healthProblems(ctx)
	for _, p := range append(sequence, state...) {
		s.violate("%s", p)
	}
}

// healthProblems reads the schedule's health events. sequence lists breaches of one event per
// transition: an exit, OOM or disappearance published twice for a container, probe_failed and
// probe_recovered not alternating (a start begins afresh). state lists running engines whose last
// probe event does not say how they answer now: while the prober is still counting rounds that is
// not settled yet; once settled it is a lost transition.
func (s *schedule) healthProblems(ctx context.Context) (sequence, state []string) {
	problem := func(to *[]string, format string, args ...any) { *to = append(*to, fmt.Sprintf(format, args...)) }
	rows, err := s.h.pool.Query(ctx, `SELECT fields FROM outbox WHERE id > $1 AND stream = 'health_events' AND fields[2] = ANY($2) ORDER BY id`,
		s.mark, s.games)
	if err != nil {
		problem(&sequence, "reading health events: %v", err)
		return sequence, state
	}
	defer rows.Close()
	type probeState struct {
		failed    bool
		container string
	}
	probes := map[string]*probeState{}
	seen := map[string]bool{}
	for rows.Next() {
		var fields []string
		if err := rows.Scan(&fields); err != nil {
			problem(&sequence, "reading health events: %v", err)
			return sequence, state
		}
		f := map[string]string{}
		for i := 0; i+1 < len(fields); i += 2 {
			f[fields[i]] = fields[i+1]
		}
		g, typ, cid := f["game_id"], rtm.HealthEventType(f["event_type"]), f["container_id"]
		st := probes[g]
		if st == nil {
			st = &probeState{}
			probes[g] = st
		}
		switch typ {
		case rtm.EventContainerStarted:
			st.failed, st.container = false, cid
		case rtm.EventContainerExited, rtm.EventContainerOOM, rtm.EventContainerDisappeared:
			key := string(typ) + "/" + cid
			if seen[key] {
				problem(&sequence, "%s of %s (container %.12s) published twice", typ, g, cid)
			}
			seen[key] = true
		case rtm.EventProbeFailed:
			if st.failed {
				problem(&sequence, "probe_failed of %s (container %.12s) published twice with no recovery between", g, cid)
			}
			st.failed = true
		case rtm.EventProbeRecovered:
			if !st.failed {
				problem(&sequence, "probe_recovered of %s (container %.12s) with no probe_failed before it", g, cid)
			}
			st.failed = false
		}
	}
	if err := rows.Err(); err != nil {
		problem(&sequence, "reading health events: %v", err)
	}
	for _, g := range s.games {
		rec, err := s.h.st.Get(ctx, g)
		if err != nil || rec.Status != rtm.StatusRunning {
			continue
		}
		c, ok := s.world.Container(g)
		if !ok || !c.Running() {
			continue
		}
		healthy := s.world.ProbeAnswerOf(c) == runtimetest.Healthy
		failed := probes[g] != nil && probes[g].failed
		switch {
		case healthy && failed:
			problem(&state, "%s answers its probe again but its last probe event is probe_failed (a lost probe_recovered)", g)
		case !healthy && !failed && probes[g] != nil && probes[g].container == c.ID:
			problem(&state, "%s fails its probe but no probe_failed was published for container %.12s", g, c.ID)
		}
	}
	return sequence, state
}

// process is one RTM process: reconciler, controller, lease owner, enqueue sources.
type process struct {
	name        string
	incarnation int
	leaser      *trackedLeaser
	ctrl        *controllers.Controller
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	stopOnce    sync.Once
	alive       bool
}

func (s *schedule) startProcess(slot, incarnation int) *process {
	p := &process{name: fmt.Sprintf("%sp%d.%d", s.prefix, slot, incarnation), incarnation: incarnation}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	co := coord.New(s.h.rdb, p.name, 2*time.Second)
	if err := co.Heartbeat(ctx); err != nil {
		s.violate("starting %s: %v", p.name, err)
	}
	p.leaser = &trackedLeaser{inner: co, rdb: s.h.rdb, owner: p.name, log: s.log.With("process", p.name), book: s.book, held: map[string]taking{},
		latest: map[string]uint64{}}
	fake := s.world.As(p.name)
	cache := runtime.NewCache()
	log := s.log.With("process", p.name)
	opts := controllers.Options{Network: "galaxy-model", EnginePort: 8080, StateMount: "/var/lib/galaxy-game",
		StopTimeout: time.Second, PatchVerifyTimeout: 300 * time.Millisecond, ProbeInterval: 20 * time.Millisecond,
		ProbeThreshold: 2, LeaseRetry: 20 * time.Millisecond, Cache: cache}
	opts.RetryAttempts, opts.RetryWindow = 3, 200*time.Millisecond
	rec, err := controllers.New(s.h.st, fake, p.leaser, stateDirs{}, fake, opts, log, nil, nil)
	if err != nil {
		s.violate("starting %s: %v", p.name, err)
		cancel()
		return p
	}
	ctrl, err := controllers.NewController(rec, controllers.QueueOptions{Workers: 2}, logr.Discard())
	if err != nil {
		s.violate("starting %s: %v", p.name, err)
		cancel()
		return p
	}
	p.ctrl, p.alive = ctrl, true
	scoped := scopedStore{Store: s.h.st, prefix: s.prefix}
	informer := runtime.NewInformer(fake, fake, cache, log)
	workers := []func(context.Context) error{
		(&sources.DockerEvents{Informer: informer, Store: scoped, Enqueue: ctrl.Enqueue}).Run,
		(&sources.Ticker{Interval: 150 * time.Millisecond, Docker: informer, Store: scoped, Enqueue: ctrl.Enqueue, Log: log}).Run,
		(&probe.Prober{Interval: 60 * time.Millisecond, Threshold: 2, Grace: 60 * time.Millisecond, Store: scoped,
			Docker: fake, Probe: fake, Log: log}).Run,
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		// The boot pass, then the workers, as cmd/manager does.
		if ids, err := sources.AllGames(ctx, informer, scoped); err == nil {
			ctrl.InitialPass(ctx, ids)
		}
		for _, w := range workers {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				_ = w(ctx)
			}()
		}
		_ = ctrl.Start(ctx)
	}()
	return p
}

func (p *process) enqueue(gameID string) {
	if p.alive {
		p.ctrl.Enqueue(gameID)
	}
}

// stop ends the process and waits for every goroutine it started.
func (p *process) stop() {
	p.stopOnce.Do(func() {
		p.alive = false
		p.cancel()
		p.wg.Wait()
	})
}

// leaseBook knows, for every game, which process took its lease last and has not lost or
// released it: the only process that may make a mutating runtime call for the game. Each taking
// is its own entry: a late notice that an earlier one ended leaves a later one alone.
type leaseBook struct {
	mu      sync.Mutex
	holder  map[string]holding
	last    map[string]string // game id → the process that held its lease last
	seq     uint64
	violate func(string, ...any)
	// history is every taking of each game's lease, for the violation's message.
	history map[string][]*bookEntry
	locks   map[string]*sync.Mutex // see gameLock
}

// bookEntry is one taking of a lease: who, when it began and ended, and how it ended.
type bookEntry struct {
	owner      string
	token      uint64
	began, end time.Time
	how        string
}

func (e *bookEntry) String() string {
	end := "held"
	if !e.end.IsZero() {
		end = fmt.Sprintf("ended %s (%s)", e.end.Format("15:04:05.000000"), e.how)
	}
	return fmt.Sprintf("%s#%d taken %s, %s", e.owner, e.token, e.began.Format("15:04:05.000000"), end)
}

type holding struct {
	owner string
	token uint64
}

// acquired books gameID's lease as taken by owner and returns the taking's token.
func (b *leaseBook) acquired(gameID, owner string) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	b.holder[gameID] = holding{owner: owner, token: b.seq}
	b.last[gameID] = owner
	if b.history == nil {
		b.history = map[string][]*bookEntry{}
	}
	b.history[gameID] = append(b.history[gameID], &bookEntry{owner: owner, token: b.seq, began: time.Now()})
	return b.seq
}

// ended books the end of the taking token, unless a later taking replaced it.
func (b *leaseBook) ended(gameID string, token uint64, how string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.holder[gameID].token == token {
		delete(b.holder, gameID)
	}
	for _, e := range b.history[gameID] {
		if e.token == token && e.end.IsZero() {
			e.end, e.how = time.Now(), how
		}
	}
}

// story is the lease's history of gameID, for a violation's message.
func (b *leaseBook) story(gameID string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, e := range b.history[gameID] {
		out = append(out, e.String())
	}
	return strings.Join(out, "; ")
}

// check is the world's OnCall: a mutating call (one whose caller's context is live) while
// another process holds the game's lease by the book, or by a process that was not its last
// holder, is a violation.
func (b *leaseBook) check(c runtimetest.Call) {
	if !c.Kind.Mutating() || c.Refused || c.GameID == "" || c.Caller == "" {
		return
	}
	b.mu.Lock()
	holder, last := b.holder[c.GameID].owner, b.last[c.GameID]
	b.mu.Unlock()
	// A call whose lease check passed just before the lease was taken away may land while
	// nobody holds the lease (the window docs/workers.md §4 describes: the holder checks
	// synchronously before each call, and nobody else can take the lease before its margin has
	// passed). What must never happen is a call while another process holds it.
	switch {
	case holder != "" && holder != c.Caller:
		b.violate("%s made a mutating call while %s held the lease: %s at %s; lease: %s", c.Caller, holder, c,
			time.Now().Format("15:04:05.000000"), b.story(c.GameID))
	case holder == "" && last != c.Caller:
		b.violate("%s made a mutating call without having held the lease: %s at %s; lease: %s", c.Caller, c,
			time.Now().Format("15:04:05.000000"), b.story(c.GameID))
	}
}

// trackedLeaser wraps a process's coord.Coord: it books every lease taken and ended, and can take
// a held lease away (revoke).
type trackedLeaser struct {
	inner controllers.Leaser
	rdb   *redis.Client
	owner string
	book  *leaseBook
	mu    sync.Mutex
	log   *slog.Logger
	held  map[string]taking
	trap  *leaseTrap
	// latest is the token of the last taking of each game by this process.
	latest map[string]uint64
}

func (l *trackedLeaser) Acquire(ctx context.Context, gameID string) (context.Context, func(), error) {
	// The takings of a game by every process, and the expiries of earlier ones, are serialised
	// with their booking: the book's order is the order in which Redis granted the lease (a taking
	// booked late would otherwise pass for the last one), and an expiry due to a revoked taking
	// deletes the key only while no later taking of this process holds it.
	gm := l.book.gameLock(gameID)
	gm.Lock()
	lctx, release, err := l.inner.Acquire(ctx, gameID)
	if err != nil {
		gm.Unlock()
		return lctx, release, err
	}
	wctx, cancel := context.WithCancel(lctx)
	token := l.book.acquired(gameID, l.owner)
	l.mu.Lock()
	l.latest[gameID] = token
	l.mu.Unlock()
	gm.Unlock()
	l.mu.Lock()
	l.held[gameID] = taking{cancel: cancel, token: token}
	trap := l.trap
	l.trap = nil
	l.mu.Unlock()
	if trap != nil {
		time.AfterFunc(trap.after, func() {
			if trap.steal {
				l.log.Info("model: lease expires behind its holder's back", "game_id", gameID)
				l.expire(gameID, token)
				return
			}
			l.log.Info("model: lease lost", "game_id", gameID)
			l.revoke(gameID, token)
		})
	}
	context.AfterFunc(wctx, func() { l.book.ended(gameID, token, fmt.Sprintf("context: %v", context.Cause(lctx))) })
	return leaseCtx{wctx, lctx}, func() {
		l.mu.Lock()
		if l.held[gameID].token == token {
			delete(l.held, gameID)
		}
		l.mu.Unlock()
		l.book.ended(gameID, token, "released")
		cancel()
		release()
	}, nil
}

// arm makes the next lease taken be lost (or, with steal, expire unnoticed) after a delay.
func (l *trackedLeaser) arm(after time.Duration, steal bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.trap = &leaseTrap{after: after, steal: steal}
}

type leaseTrap struct {
	after time.Duration
	steal bool
}

// revoke makes the holder lose the taking token of gameID's lease (unless it already ended):
// its context ends, then the key goes.
func (l *trackedLeaser) revoke(gameID string, token uint64) {
	l.mu.Lock()
	t, ok := l.held[gameID]
	l.mu.Unlock()
	if !ok || t.token != token {
		return
	}
	t.cancel()
	l.book.ended(gameID, token, "revoked")
	// Another process may take the lease only after the margin the real lease keeps between its
	// holder's deadline and the key's expiry (1.25 s at the least, docs/workers.md §4): a call
	// whose check passed just before the loss lands within it. A shorter margin keeps schedules
	// fast while still leaving the holder's last call far behind on a loaded machine.
	time.AfterFunc(revokeMargin, func() { l.expire(gameID, token) })
}

// revokeMargin is how long after a revoked holder's loss its lease key goes.
const revokeMargin = 300 * time.Millisecond

// expireScript deletes a lease key that still names its holder.
var expireScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)

// expire deletes gameID's lease key, as the expiry of the taking token would: only if the key
// still names this holder (it may have been released and taken by another) and this holder has
// not taken it again since (the key would then be the later taking's). Another process may take
// it from now on.
func (l *trackedLeaser) expire(gameID string, token uint64) {
	gm := l.book.gameLock(gameID)
	gm.Lock()
	defer gm.Unlock()
	l.mu.Lock()
	later := l.latest[gameID] != token
	l.mu.Unlock()
	if later {
		return
	}
	_ = expireScript.Run(context.Background(), l.rdb, []string{"rtmanager:game_lease:" + gameID}, l.owner).Err()
}

// gameLock returns the mutex that serialises every process's takings and expiries of gameID's
// lease.
func (b *leaseBook) gameLock(gameID string) *sync.Mutex {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.locks == nil {
		b.locks = map[string]*sync.Mutex{}
	}
	m, ok := b.locks[gameID]
	if !ok {
		m = &sync.Mutex{}
		b.locks[gameID] = m
	}
	return m
}

type taking struct {
	cancel context.CancelFunc
	token  uint64
}

// scopedStore is the shared store as one schedule's sources see it: only its own games.
type scopedStore struct {
	*store.Store
	prefix string
}

func (s scopedStore) ActiveGameIDs(ctx context.Context) ([]string, error) {
	ids, err := s.Store.ActiveGameIDs(ctx)
	if err != nil {
		return nil, err
	}
	out := ids[:0]
	for _, id := range ids {
		if strings.HasPrefix(id, s.prefix) {
			out = append(out, id)
		}
	}
	return out, nil
}

func (s scopedStore) RunningGames(ctx context.Context) ([]rtm.RunningGame, error) {
	gs, err := s.Store.RunningGames(ctx)
	if err != nil {
		return nil, err
	}
	out := gs[:0]
	for _, g := range gs {
		if strings.HasPrefix(g.GameID, s.prefix) {
			out = append(out, g)
		}
	}
	return out, nil
}

type stateDirs struct{}

func (stateDirs) join(gameID string) string              { return "/srv/galaxy/games/" + gameID }
func (d stateDirs) Ensure(gameID string) (string, error) { return d.join(gameID), nil }

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// leaseCtx is the wrapped lease context with the lease's own synchronous Err: a context derived
// from coord's lease learns of its end through a goroutine, later than the lease itself.
type leaseCtx struct {
	context.Context
	lease context.Context
}

func (c leaseCtx) Err() error {
	if err := c.lease.Err(); err != nil {
		return err
	}
	return c.Context.Err()
}
