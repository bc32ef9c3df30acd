package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/store"
	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// healthDB is a migrated database with a store and a direct connection for the test's reads.
type healthDB struct {
	s    *store.Store
	conn *pgx.Conn
}

func openHealth(t *testing.T) healthDB {
	t.Helper()
	s, dsn := open(t)
	return healthDB{s: s, conn: testenv.MustConn(t, dsn)}
}

// running records games as running their container c-<id>.
func (h healthDB) running(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := h.conn.Exec(context.Background(), `INSERT INTO runtime_records (game_id, status, desired_state,
			current_container_id) VALUES ($1, 'running', 'running', $2) ON CONFLICT (game_id) DO UPDATE
			SET status = 'running', current_container_id = $2`, id, "c-"+id); err != nil {
			t.Fatal(err)
		}
	}
}

// events returns the published health events as "game:type", in outbox order.
func (h healthDB) events(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, f := range testenv.OutboxFields(t, h.conn, "health_events") {
		out = append(out, f["game_id"]+":"+f["event_type"])
	}
	return out
}

func probed(id string, ok bool) rtm.ProbeOutcome {
	o := rtm.ProbeOutcome{GameID: id, ContainerID: "c-" + id, OK: ok, At: time.Now().UTC()}
	if !ok {
		o.Error = "connection refused"
	}
	return o
}

func TestStore_CommitProbeRound_transitions(t *testing.T) {
	tests := []struct {
		name  string
		given string // the rounds, in order: "ok", "fail", "grace", or an event type recorded by CommitHealth
		want  string
	}{
		{"failures up to the threshold publish one probe_failed", "fail fail fail fail", "g:probe_failed"},
		{"a success before the threshold publishes nothing", "fail ok fail ok", ""},
		{"failures in the grace period do not count", "grace grace fail grace ok", ""},
		{"the first success after a reported failure publishes probe_recovered", "fail fail ok ok", "g:probe_failed g:probe_recovered"},
		{"an inspect_unhealthy between does not drop probe_recovered", "fail fail inspect_unhealthy ok",
			"g:probe_failed g:inspect_unhealthy g:probe_recovered"},
		{"a container start forgets the reported failure", "fail fail container_started ok fail", "g:probe_failed g:container_started"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := openHealth(t)
			h.running(t, "g")
			ctx := context.Background()
			for _, r := range strings.Fields(tt.given) {
				var err error
				switch r {
				case "ok", "fail", "grace":
					o := probed("g", r == "ok")
					o.Grace = r == "grace"
					_, err = h.s.CommitProbeRound(ctx, 2, []rtm.ProbeOutcome{o})
				default:
					err = h.s.CommitHealth(ctx, []rtm.HealthEvent{{GameID: "g", Type: rtm.HealthEventType(r), ContainerID: "c-g"}})
				}
				if err != nil {
					t.Fatalf("%s: %v", r, err)
				}
			}
			if got := strings.Join(h.events(t), " "); got != tt.want {
				t.Fatalf("published %q, want %q", got, tt.want)
			}
		})
	}
}

// The rule by last event type dropped a probe_recovered once an inspect_unhealthy came between.
func TestStore_CommitHealth_probeRecoveredAfterInspectUnhealthy(t *testing.T) {
	h := openHealth(t)
	ctx := context.Background()
	for _, typ := range []rtm.HealthEventType{rtm.EventProbeFailed, rtm.EventInspectUnhealthy, rtm.EventProbeRecovered,
		rtm.EventProbeRecovered, rtm.EventProbeFailed} {
		if err := h.s.CommitHealth(ctx, []rtm.HealthEvent{{GameID: "g", Type: typ, ContainerID: "c"}}); err != nil {
			t.Fatal(err)
		}
	}
	want := "g:probe_failed g:inspect_unhealthy g:probe_recovered g:probe_failed"
	if got := strings.Join(h.events(t), " "); got != want {
		t.Fatalf("published %q, want %q", got, want)
	}
}

func TestStore_CommitProbeRound_failedCommitDecidesAgain(t *testing.T) {
	h := openHealth(t)
	h.running(t, "g")
	ctx := context.Background()
	if _, err := h.s.CommitProbeRound(ctx, 2, []rtm.ProbeOutcome{probed("g", false)}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel() // the round that reaches the threshold cannot commit
	if _, err := h.s.CommitProbeRound(cctx, 2, []rtm.ProbeOutcome{probed("g", false)}); err == nil {
		t.Fatal("a round with a cancelled context committed")
	}
	evs, err := h.s.CommitProbeRound(ctx, 2, []rtm.ProbeOutcome{probed("g", false)})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Type != rtm.EventProbeFailed {
		t.Fatalf("the next round returned %+v, want the probe_failed", evs)
	}
	if got := strings.Join(h.events(t), " "); got != "g:probe_failed" {
		t.Fatalf("published %q", got)
	}
	if hs, err := h.s.Health(ctx, "g"); err != nil || hs.ConsecutiveProbeFailures != 2 || hs.Status != rtm.HealthUnhealthy {
		t.Fatalf("snapshot %+v %v", hs, err)
	}
}

func TestStore_CommitProbeRound_staleContainerIsDropped(t *testing.T) {
	h := openHealth(t)
	h.running(t, "g")
	ctx := context.Background()
	stale := probed("g", false)
	stale.ContainerID = "c-old"
	for range 3 {
		if _, err := h.s.CommitProbeRound(ctx, 1, []rtm.ProbeOutcome{stale}); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.events(t); len(got) != 0 {
		t.Fatalf("a probe of a replaced container published %v", got)
	}
}

// Several RTM processes probe the same games while an inspector reports them unhealthy: the
// snapshot rows are locked in one order by all, so none deadlocks, and each transition is
// published once.
func TestStore_CommitProbeRound_concurrentWritersNeitherDeadlockNorRepeat(t *testing.T) {
	h := openHealth(t)
	ctx := context.Background()
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("g%02d", i))
	}
	h.running(t, ids...)
	const rounds, probers = 60, 3
	var wg sync.WaitGroup
	errs := make(chan error, (probers+1)*rounds)
	for w := range probers {
		wg.Add(1)
		go func() { // a prober, sending its outcomes in the order its probes finished
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			for r := range rounds {
				outs := make([]rtm.ProbeOutcome, len(ids))
				for i, id := range ids {
					outs[i] = probed(id, r%10 >= 5) // five failures, five successes, again
				}
				rnd.Shuffle(len(outs), func(i, j int) { outs[i], outs[j] = outs[j], outs[i] })
				if _, err := h.s.CommitProbeRound(ctx, 3, outs); err != nil {
					errs <- fmt.Errorf("prober %d round %d: %w", w, r, err)
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // the inspector, in the reverse order
		defer wg.Done()
		for r := range rounds {
			var evs []rtm.HealthEvent
			for i := len(ids) - 1; i >= 0; i-- {
				evs = append(evs, rtm.HealthEvent{GameID: ids[i], Type: rtm.EventInspectUnhealthy, ContainerID: "c-" + ids[i]})
			}
			if err := h.s.CommitHealth(ctx, evs); err != nil {
				errs <- fmt.Errorf("inspector round %d: %w", r, err)
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Per game, probe events alternate, starting with probe_failed: never two in a row.
	last := map[string]string{}
	for _, e := range h.events(t) {
		game, typ, _ := strings.Cut(e, ":")
		if typ == string(rtm.EventInspectUnhealthy) {
			continue
		}
		if typ == last[game] || last[game] == "" && typ != string(rtm.EventProbeFailed) {
			t.Fatalf("%s published %s after %q", game, typ, last[game])
		}
		last[game] = typ
	}
	if len(last) != len(ids) {
		t.Fatalf("probe transitions published for %d games, want %d", len(last), len(ids))
	}
}

// A container_started that waits for the game's snapshot while a prober's round holds it (the
// round publishing probe_failed for the old container) is numbered after that round's event:
// the stream tells the transitions in the order the store decided them. Numbered before the
// lock, the stream ended on probe_failed while the store, reset by the start, never published
// the probe_recovered (a violation the model test found).
func TestStore_Commit_containerStartedIsNumberedAfterTheRoundItWaitedFor(t *testing.T) {
	s, dsn := open(t)
	ctx := context.Background()
	h, round := healthDB{s: s, conn: testenv.MustConn(t, dsn)}, testenv.MustConn(t, dsn)
	h.running(t, "g")
	if _, err := s.CommitProbeRound(ctx, 2, []rtm.ProbeOutcome{probed("g", false)}); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	defer wg.Wait() // after the round's rollback below, on every path
	// The prober's round: it holds the snapshot while it publishes probe_failed for c-g.
	tx := lockRow(t, round, "health_snapshots", "g")
	defer tx.Rollback(ctx)
	var pid int32
	if err := round.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}

	// The reconciler starts c-new meanwhile: its commit waits for the snapshot.
	done := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := s.Commit(ctx, rtm.Change{GameID: "g", Events: []rtm.HealthEvent{{GameID: "g",
			Type: rtm.EventContainerStarted, ContainerID: "c-new"}},
			Apply: func(x *rtm.Record, _ bool) { x.CurrentContainerID = "c-new" }})
		done <- err
	}()
	waitBlockedBy(t, h.conn, pid, done)

	if _, err := tx.Exec(ctx, `UPDATE health_snapshots SET consecutive_probe_failures = 2, probe_failed_reported = true
		WHERE game_id = 'g'`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO outbox (stream, fields) VALUES ('health_events',
		ARRAY['game_id', 'g', 'event_type', 'probe_failed', 'container_id', 'c-g'])`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Commit: %v", err)
	}

	// The new engine answers: nothing is reported for it, and the stream agrees.
	ok := probed("g", true)
	ok.ContainerID = "c-new"
	if _, err := s.CommitProbeRound(ctx, 2, []rtm.ProbeOutcome{ok}); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(h.events(t), " "), "g:probe_failed g:container_started"; got != want {
		t.Fatalf("published %q, want %q", got, want)
	}
}

// lockRow begins a transaction on conn that holds game g's row of table locked (FOR UPDATE), as
// another session would; the caller ends it.
func lockRow(t *testing.T, conn *pgx.Conn, table, g string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM `+pgx.Identifier{table}.Sanitize()+` WHERE game_id = $1 FOR UPDATE`, g); err != nil {
		_ = tx.Rollback(ctx)
		t.Fatal(err)
	}
	return tx
}

// waitBlockedBy waits until a backend waits for a lock that backend pid holds, failing the test
// if done reports first (the waiter finished without waiting) or after 10 s.
func waitBlockedBy(t *testing.T, conn *pgx.Conn, pid int32, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`, pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the commit did not wait for the locked snapshot (error %v)", err)
		case <-ctx.Done():
			t.Fatal("no backend waited for the locked snapshot within 10s")
		case <-tick.C:
		}
	}
}
