package controllers_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/controllers"
	"github.com/galaxy-platform/rtmanager/coord"
	"github.com/galaxy-platform/rtmanager/runtime/runtimetest"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// The images of the fault table: imgA is present, imgB must be pulled, imgC is present but its
// engine answers its probe unhealthy (a patch to it rolls back).
const (
	imgA = "galaxy/game:1.4.1"
	imgB = "galaxy/game:1.4.2"
	imgC = "galaxy/game:1.4.3"
)

// daemonWords is what the daemon says when it refuses a call forever; a request failed because
// of it must carry these words in its answer.
const daemonWords = "the daemon refuses this call for the test"

// faultEnv is what every row of the fault table shares: one database, one Redis.
type faultEnv struct {
	st   *store.Store
	pool *pgxpool.Pool
	rdb  *redis.Client
	seq  atomic.Int64
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	st, dsn := env.MustStoreWith(t, store.Options{MaxConns: 40})
	return &faultEnv{st: st, pool: testenv.MustPool(t, dsn), rdb: env.MustRedis(t)}
}

// faultGame is one row's game: its own fake Docker world and reconciler on the shared stores.
type faultGame struct {
	t     *testing.T
	fe    *faultEnv
	world *runtimetest.World
	rec   *controllers.GameReconciler
	id    string
}

type stateDirs struct{}

func (stateDirs) Ensure(gameID string) (string, error) { return "/srv/galaxy/games/" + gameID, nil }

func (fe *faultEnv) game(t *testing.T, name string) *faultGame {
	t.Helper()
	return fe.gameOn(t, name, func(f *runtimetest.Fake) controllers.ContainerRuntime { return f })
}

// gameOn is game with the reconciler driving rt(the world's fake) instead of the fake itself.
func (fe *faultEnv) gameOn(t *testing.T, name string, rt func(*runtimetest.Fake) controllers.ContainerRuntime) *faultGame {
	t.Helper()
	n := fe.seq.Add(1)
	w := runtimetest.NewWorld(runtimetest.Options{Seed: uint64(n)})
	w.AddImages(imgA, imgC)
	w.AddPullable(imgB)
	w.SetImageProbe(imgC, runtimetest.Unhealthy)
	owner := fmt.Sprintf("faults-%d", n)
	leases := coord.New(fe.rdb, owner, 10*time.Second)
	hctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	if err := leases.Heartbeat(hctx); err != nil {
		t.Fatal(err)
	}
	opts := controllers.Options{Network: "galaxy-test", EnginePort: 8080, StateMount: "/var/lib/galaxy-game",
		StopTimeout: time.Second, PatchVerifyTimeout: 400 * time.Millisecond, ProbeInterval: 20 * time.Millisecond,
		ProbeThreshold: 2, LeaseRetry: 10 * time.Millisecond}
	// A small budget per request: a failure that never clears is answered within a second.
	opts.RetryAttempts, opts.RetryWindow = 3, 300*time.Millisecond
	log := slog.New(slog.DiscardHandler)
	rec, err := controllers.New(fe.st, rt(w.As(owner)), leases, stateDirs{}, w.As(owner), opts, log, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &faultGame{t: t, fe: fe, world: w, rec: rec, id: fmt.Sprintf("f%d-%s", n, name)}
}

// job submits a start (image set) or stop job with the job consumer's admission.
func (g *faultGame) job(kind rtm.OpKind, image string) rtm.Request {
	req := rtm.Request{GameID: g.id, Kind: kind, ImageRef: image, RequestID: fmt.Sprintf("%s-%s-%d", g.id, kind, time.Now().UnixNano())}
	switch kind {
	case rtm.OpStart:
		req.Channel, req.Source = rtm.ChannelStartJobs, rtm.SourceStartJobs
	default:
		req.Channel, req.Source, req.Reason = rtm.ChannelStopJobs, rtm.SourceStopJobs, "finished"
	}
	return g.submit(req)
}

// rest submits a REST mutation with the API's admission.
func (g *faultGame) rest(kind rtm.OpKind, image, old string) rtm.Request {
	return g.submit(rtm.Request{Channel: rtm.ChannelREST, Source: rtm.SourceAdminREST, GameID: g.id, Kind: kind,
		ImageRef: image, OldImageRef: old, RequestID: fmt.Sprintf("%s-%s-%d", g.id, kind, time.Now().UnixNano())})
}

func (g *faultGame) submit(req rtm.Request) rtm.Request {
	g.t.Helper()
	req.ReceivedAt = time.Now().UTC()
	settings := rtm.Settings{EnginePort: 8080, StateRootJoin: func(id string) string { return "/srv/galaxy/games/" + id }}
	sub, err := g.fe.st.Submit(context.Background(), req, func(rec *rtm.Record, busy bool) rtm.Admission {
		return rtm.Admit(rec, req, busy, settings)
	})
	if err != nil {
		g.t.Fatal(err)
	}
	if sub.Answer != nil {
		g.t.Fatalf("%s %s answered at once: %+v", req.Kind, req.RequestID, *sub.Answer)
	}
	return sub.Request
}

// settle drives Reconcile as the controller would (errors and requeues retried after a short
// pause) until it asks for nothing more; it returns the last error when that does not happen
// within the bound.
func (g *faultGame) settle() error {
	ctx := context.Background()
	deadline := time.Now().Add(4 * time.Second)
	pause := time.NewTimer(0)
	defer pause.Stop()
	<-pause.C
	var last error
	for time.Now().Before(deadline) {
		res, err := g.rec.Reconcile(ctx, g.id)
		switch {
		case err == nil && res.RequeueAfter == 0:
			return nil
		case err != nil:
			last = err
			pause.Reset(5 * time.Millisecond)
		default:
			last = fmt.Errorf("requeued after %s", res.RequeueAfter)
			pause.Reset(min(res.RequeueAfter, 50*time.Millisecond))
		}
		<-pause.C
	}
	return fmt.Errorf("did not settle within 4s: %w", last)
}

func (g *faultGame) mustSettle() {
	g.t.Helper()
	if err := g.settle(); err != nil {
		g.t.Fatal(err)
	}
}

func (g *faultGame) record() *rtm.Record {
	g.t.Helper()
	rec, err := g.fe.st.Get(context.Background(), g.id)
	if err != nil {
		g.t.Fatal(err)
	}
	return rec
}

// faultAction is one thing the reconciler does: setup brings the game to where the action starts
// (without faults), request asks for the action; the last request returned is the action's own.
type faultAction struct {
	name    string
	setup   func(g *faultGame)
	request func(g *faultGame) []rtm.Request
	patch   bool // a REST patch: patch_rolled_back is an answer it may get
}

func running(g *faultGame) {
	g.job(rtm.OpStart, imgA)
	g.mustSettle()
}

func stopped(g *faultGame) {
	running(g)
	g.job(rtm.OpStop, "")
	g.mustSettle()
}

var faultActions = []faultAction{
	{name: "create", request: func(g *faultGame) []rtm.Request { return []rtm.Request{g.job(rtm.OpStart, imgB)} }},
	{name: "start existing", setup: stopped,
		request: func(g *faultGame) []rtm.Request { return []rtm.Request{g.job(rtm.OpStart, imgA)} }},
	{name: "restart", setup: running,
		request: func(g *faultGame) []rtm.Request { return []rtm.Request{g.rest(rtm.OpRestart, "", "")} }},
	{name: "patch", setup: running, patch: true,
		request: func(g *faultGame) []rtm.Request { return []rtm.Request{g.rest(rtm.OpPatch, imgB, imgA)} }},
	{name: "patch rollback", setup: running, patch: true,
		request: func(g *faultGame) []rtm.Request { return []rtm.Request{g.rest(rtm.OpPatch, imgC, imgA)} }},
	{name: "stop", setup: running,
		request: func(g *faultGame) []rtm.Request { return []rtm.Request{g.job(rtm.OpStop, "")} }},
	{name: "cleanup", setup: stopped,
		request: func(g *faultGame) []rtm.Request { return []rtm.Request{g.rest(rtm.OpCleanupContainer, "", "")} }},
	// Lobby's stop then start of another image, both admitted before the reconciler looks: the
	// start replaces the container as a start (imgC's probe would fail a patch's verification).
	{name: "start of another image behind a stop", setup: running,
		request: func(g *faultGame) []rtm.Request {
			return []rtm.Request{g.job(rtm.OpStop, ""), g.job(rtm.OpStart, imgC)}
		}},
}

// faultMode is how a failure point fails.
type faultMode struct {
	name    string
	forever bool
	fault   func(p failPoint) runtimetest.Fault
}

var faultModes = []faultMode{
	{name: "transient", fault: func(p failPoint) runtimetest.Fault {
		return runtimetest.Fault{Kind: p.kind, Skip: p.nth, Times: 1, Err: runtimetest.Transient("connection refused")}
	}},
	{name: "hangs", fault: func(p failPoint) runtimetest.Fault {
		return runtimetest.Fault{Kind: p.kind, Skip: p.nth, Times: 1, Mode: runtimetest.Hang, Timeout: 30 * time.Millisecond}
	}},
	{name: "succeeds late", fault: func(p failPoint) runtimetest.Fault {
		return runtimetest.Fault{Kind: p.kind, Skip: p.nth, Times: 1, Mode: runtimetest.Late, Delay: 5 * time.Millisecond,
			Err: runtimetest.Transient("context deadline exceeded")}
	}},
	{name: "refused forever", forever: true, fault: func(p failPoint) runtimetest.Fault {
		return runtimetest.Fault{Kind: p.kind, Skip: p.nth, Err: runtimetest.Daemon(daemonWords)}
	}},
}

// failPoint is the nth call (from 0) of a kind an action makes.
type failPoint struct {
	kind runtimetest.Kind
	nth  int
}

func (p failPoint) String() string { return fmt.Sprintf("%s#%d", p.kind, p.nth+1) }

// outcome is what became of one run of an action.
type outcome struct {
	calls   []runtimetest.Call // the action's calls
	answers []*rtm.Answer
	rec     *rtm.Record
	settle  error
}

// run runs action a on a fresh game with fault (nil: none) injected once the setup is done.
func (fe *faultEnv) run(t *testing.T, a faultAction, mode *faultMode, p failPoint) (*faultGame, []rtm.Request, outcome) {
	t.Helper()
	g := fe.game(t, strings.ReplaceAll(a.name, " ", "-"))
	if a.setup != nil {
		a.setup(g)
	}
	mark := len(g.world.Calls())
	if mode != nil {
		f := mode.fault(p)
		if p.kind != runtimetest.EnsureImage {
			f.GameID = g.id
		}
		g.world.Inject(f)
	}
	reqs := a.request(g)
	var out outcome
	out.settle = g.settle()
	out.calls = g.world.Calls()[mark:]
	for _, q := range reqs {
		ans, err := fe.st.RequestAnswer(context.Background(), q.Channel, q.RequestID)
		if err != nil {
			t.Fatal(err)
		}
		out.answers = append(out.answers, ans)
	}
	out.rec = g.record()
	return g, reqs, out
}

// failPoints lists every call an action made, as the nth call of its kind.
func failPoints(calls []runtimetest.Call) []failPoint {
	seen := map[runtimetest.Kind]int{}
	var out []failPoint
	for _, c := range calls {
		out = append(out, failPoint{kind: c.Kind, nth: seen[c.Kind]})
		seen[c.Kind]++
	}
	return out
}

// Every action × every runtime call it makes × every way that call can fail: after the reconciler
// settles, every request is answered exactly once with a code its channel allows, the record says
// what the runtime shows, and the game never ran two containers. A failure that clears is retried
// and ends as the action does without faults; one that never clears is answered failed, with the
// daemon's words, and (but for a patch, which keeps or restores the old engine) the record says
// failed.
func TestGameReconciler_Reconcile_faultTable(t *testing.T) {
	fe := newFaultEnv(t)
	for _, a := range faultActions {
		t.Run(a.name, func(t *testing.T) {
			_, _, dry := fe.run(t, a, nil, failPoint{})
			if dry.settle != nil {
				t.Fatalf("without faults: %v", dry.settle)
			}
			points := failPoints(dry.calls)
			if len(points) == 0 {
				t.Fatal("the action made no runtime call")
			}
			for _, p := range points {
				for _, m := range faultModes {
					t.Run(p.String()+" "+m.name, func(t *testing.T) {
						t.Parallel()
						g, reqs, got := fe.run(t, a, &m, p)
						checkFaultRow(t, g, a, m, reqs, dry, got)
					})
				}
			}
		})
	}
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

// allowedCode reports whether a request of kind on ch may be answered failed with code.
func allowedCode(ch rtm.Channel, kind rtm.OpKind, code rtm.ErrorCode) bool {
	if (kind == rtm.OpStop || kind == rtm.OpCleanupContainer) && slices.Contains(stopCodes, code) {
		return true
	}
	if ch != rtm.ChannelREST {
		return slices.Contains(jobCodes, code)
	}
	return slices.Contains(restCodes, code) || kind == rtm.OpPatch && code == rtm.CodePatchRolledBack
}

func checkFaultRow(t *testing.T, g *faultGame, a faultAction, m faultMode, reqs []rtm.Request, dry, got outcome) {
	t.Helper()
	if got.settle != nil {
		t.Fatalf("%v\ncalls:\n%s", got.settle, callList(got.calls))
	}
	checkAnsweredOnce(t, g.fe, reqs)
	for i, q := range reqs {
		ans := got.answers[i]
		if ans == nil {
			t.Errorf("%s %s was never answered", q.Kind, q.RequestID)
			continue
		}
		if ans.Outcome == rtm.OutcomeFailed && !allowedCode(q.Channel, q.Kind, ans.Code) {
			t.Errorf("%s on %s answered %s (%s): a code its channel may not get", q.Kind, q.Channel, ans.Code, ans.Message)
		}
	}
	if !got.rec.Settled() {
		t.Errorf("the record is not settled: %+v", got.rec)
	}
	if why := g.world.Mismatch(got.rec); why != "" {
		t.Error(why)
	}
	if live := g.world.TwoLive(); len(live) > 0 {
		t.Errorf("two live containers: %v", live)
	}
	last, want := got.answers[len(reqs)-1], dry.answers[len(reqs)-1]
	if last == nil {
		return
	}
	switch {
	case !m.forever:
		// Cleared after one failure: the action ends as it does without faults.
		if last.Outcome != want.Outcome || last.Code != want.Code {
			t.Errorf("answered %s %s (%s); without the fault %s %s", last.Outcome, last.Code, last.Message, want.Outcome, want.Code)
		}
	case last.Outcome == rtm.OutcomeFailed:
		if !strings.Contains(last.Message, daemonWords) {
			t.Errorf("answered %s without the daemon's words: %q", last.Code, last.Message)
		}
		if !a.patch && got.rec.Status != rtm.StatusFailed {
			t.Errorf("failed for good, but the record says %s", got.rec.Status)
		}
	case want.Outcome != rtm.OutcomeSucceeded:
		t.Errorf("succeeded under a failure that never clears; without it: %s %s", want.Outcome, want.Code)
	}
	if t.Failed() {
		t.Logf("calls:\n%s", callList(got.calls))
	}
}

// checkAnsweredOnce checks that each request has one operation_log row and, for jobs, one job
// result in the outbox.
func checkAnsweredOnce(t *testing.T, fe *faultEnv, reqs []rtm.Request) {
	t.Helper()
	ctx := context.Background()
	for _, q := range reqs {
		var ops, results int
		if err := fe.pool.QueryRow(ctx, `SELECT count(*) FROM operation_log WHERE game_id = $1 AND request_id = $2 AND op_kind = $3`,
			q.GameID, q.RequestID, string(q.Kind)).Scan(&ops); err != nil {
			t.Fatal(err)
		}
		if err := fe.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE stream = 'job_results' AND fields[2] = $1`,
			q.RequestID).Scan(&results); err != nil {
			t.Fatal(err)
		}
		wantResults := 1
		if q.Channel == rtm.ChannelREST {
			wantResults = 0
		}
		if ops > 1 || results != wantResults && ops == 1 {
			t.Errorf("%s %s answered %d times (%d job results)", q.Kind, q.RequestID, ops, results)
		}
	}
}

// callList lists calls for a failure message, at most the first 40; a run of calls alike but for
// their number is shown once with its count.
func callList(calls []runtimetest.Call) string {
	var b strings.Builder
	shown := 0
	for i := 0; i < len(calls) && shown < 40; shown++ {
		j := i + 1
		for j < len(calls) && calls[j].Kind == calls[i].Kind && calls[j].Caller == calls[i].Caller &&
			fmt.Sprint(calls[j].Err) == fmt.Sprint(calls[i].Err) && calls[j].ContainerID == calls[i].ContainerID {
			j++
		}
		if j-i > 1 {
			fmt.Fprintf(&b, "  %s (×%d)\n", calls[i], j-i)
		} else {
			fmt.Fprintf(&b, "  %s\n", calls[i])
		}
		i = j
	}
	if shown == 40 {
		b.WriteString("  …\n")
	}
	return b.String()
}
