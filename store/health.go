package store

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Health snapshots are locked in one order by every transaction that locks several of them:
// game_id ascending, by the database's ordering (queueLockSnapshots, queueLastTransitions), so
// that the prober, the inspector and the reconciler never deadlock on them.

// CommitProbeRound records one probe round and publishes the transitions it makes, in one
// transaction: it locks the snapshots of the outcomes' games (game_id ascending, creating
// missing ones), drops the outcomes whose container is no longer the running container of its
// game's record, and computes each game's new probe state from the committed one (probeStep):
// a failure that brings the consecutive failures to threshold publishes probe_failed unless one
// is already reported and not recovered; the first success after a reported probe_failed
// publishes probe_recovered. The snapshots and the outbox rows are written, and the published
// events returned, once committed.
//
// A failed transaction changes nothing: the next round decides the same transition again. Two
// processes probing the same game share its state (the locked row): both count its failures,
// and only one publishes each transition.
func (s *Store) CommitProbeRound(ctx context.Context, threshold int, outcomes []rtm.ProbeOutcome) ([]rtm.HealthEvent, error) {
	if len(outcomes) == 0 {
		return nil, nil
	}
	byGame := make(map[string]rtm.ProbeOutcome, len(outcomes))
	for _, o := range outcomes {
		byGame[o.GameID] = o // one outcome per game; a caller sends no more
	}
	ids := make([]string, 0, len(byGame))
	for id := range byGame {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var published []rtm.HealthEvent
	err := s.inPipe(ctx, func(p *pipe) error {
		published = nil
		snaps := queueLockSnapshots(p, ids)
		running := map[string]string{}
		// Read after the locks are held (a statement of its own, so with a fresh snapshot): a
		// container replaced by a commit we waited for is seen replaced.
		p.query("reading running containers", intoMap(running), `SELECT game_id, current_container_id FROM runtime_records WHERE game_id = ANY($1) AND status = 'running'`, ids)
		if err := p.flush(ctx); err != nil {
			return err
		}
		var (
			gs, cs  []string
			fs      []int32
			rs, oks []bool
			ats     []time.Time
			events  []rtm.HealthEvent
		)
		for _, id := range ids {
			o := byGame[id]
			st, ok := snaps[id]
			if !ok || running[id] != o.ContainerID {
				continue // stale: the reconciler has moved the game on
			}
			next, ev := probeStep(st.probeState, o, threshold)
			gs, cs, fs, rs, oks, ats = append(gs, id), append(cs, next.container), append(fs, int32(next.failures)),
				append(rs, next.reported), append(oks, o.OK), append(ats, o.At)
			if ev != nil {
				events = append(events, *ev)
			}
		}
		if len(gs) == 0 {
			return nil
		}
		p.exec("recording probes", `UPDATE health_snapshots h SET consecutive_probe_failures = u.f,
			probe_failed_reported = u.r, probe_container_id = u.c, last_probe_at = u.at, updated_at = now(),
			-- a game never seen start (adopted, or before a restart) becomes healthy on its first good probe
			status = CASE WHEN h.status = 'unknown' AND u.ok THEN 'healthy' ELSE h.status END
			FROM unnest($1::text[], $2::int[], $3::boolean[], $4::text[], $5::timestamptz[], $6::boolean[])
				AS u(game_id, f, r, c, at, ok)
			WHERE h.game_id = u.game_id`, gs, fs, rs, cs, ats, oks)
		for _, e := range events {
			queueEvent(p, e)
		}
		published = events
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("recording probe round: %w", err)
	}
	return published, nil
}

// probeState is a game's committed probe state (health_snapshots).
type probeState struct {
	failures  int    // consecutive_probe_failures
	reported  bool   // probe_failed_reported
	container string // probe_container_id
}

// probeStep is what outcome o makes of state st: the next state, and the transition to
// publish, if any. Failures count per container (a new container starts from zero), but a
// reported probe_failed stays reported until a success, whichever container gives it.
func probeStep(st probeState, o rtm.ProbeOutcome, threshold int) (probeState, *rtm.HealthEvent) {
	if st.container != o.ContainerID {
		st.container, st.failures = o.ContainerID, 0
	}
	switch {
	case o.OK:
		st.failures = 0
		if !st.reported {
			return st, nil
		}
		st.reported = false
		return st, &rtm.HealthEvent{GameID: o.GameID, Type: rtm.EventProbeRecovered, ContainerID: o.ContainerID,
			Message: "the engine answers its probe again", ObservedAt: o.At}
	case o.Grace:
		return st, nil
	}
	st.failures++
	if st.failures < threshold || st.reported {
		return st, nil
	}
	st.reported = true
	return st, &rtm.HealthEvent{GameID: o.GameID, Type: rtm.EventProbeFailed, ContainerID: o.ContainerID,
		Message: fmt.Sprintf("%d consecutive probes failed: %s", st.failures, o.Error), ObservedAt: o.At}
}

// snapshot is the part of a locked health snapshot that decides what is published.
type snapshot struct {
	last string // last_event_type
	probeState
}

// queueLockSnapshots queues the lock of the snapshots of ids (sorted, unique), in game_id
// order, creating (status unknown) those that do not exist yet, so that the lock order holds
// for new rows too. The map it returns holds them once the pipe is flushed.
func queueLockSnapshots(p *pipe, ids []string) map[string]*snapshot {
	out := make(map[string]*snapshot, len(ids))
	if len(ids) == 0 {
		return out
	}
	p.query("locking health snapshots", func(rows pgx.Rows) error {
		var id string
		var s snapshot
		var f int32
		if err := rows.Scan(&id, &s.last, &f, &s.reported, &s.container); err != nil {
			return err
		}
		s.failures = int(f)
		out[id] = &s
		return nil
	}, `INSERT INTO health_snapshots (game_id, status)
		SELECT id, 'unknown' FROM unnest($1::text[]) AS u(id) ORDER BY id
		ON CONFLICT (game_id) DO UPDATE SET updated_at = health_snapshots.updated_at
		RETURNING game_id, last_event_type, consecutive_probe_failures, probe_failed_reported, probe_container_id`, ids)
	return out
}

// CommitHealth publishes health events (through the outbox) and updates the snapshots, in one
// transaction that locks the events' snapshots first (game_id ascending). Transition events
// are published once per transition, whoever observes them: a probe_failed only while none is
// reported, a probe_recovered only while one is (whatever events came between), an
// inspect_unhealthy only when the last transition is not one already. The others are others'
// to repeat or not.
func (s *Store) CommitHealth(ctx context.Context, events []rtm.HealthEvent) error {
	if len(events) == 0 {
		return nil
	}
	var ids []string
	for _, e := range events {
		if !slices.Contains(ids, e.GameID) {
			ids = append(ids, e.GameID)
		}
	}
	slices.Sort(ids)
	return s.inPipe(ctx, func(p *pipe) error {
		snaps := queueLockSnapshots(p, ids)
		if err := p.flush(ctx); err != nil {
			return err
		}
		for _, e := range events {
			if st := snaps[e.GameID]; st == nil || publish(e, st) {
				queueEvent(p, e)
			}
		}
		return nil
	})
}

// publish reports whether e is to be published on a snapshot in state st, and if so moves st
// as the event will.
func publish(e rtm.HealthEvent, st *snapshot) bool {
	switch e.Type {
	case rtm.EventProbeFailed:
		if st.reported {
			return false
		}
		st.reported = true
	case rtm.EventProbeRecovered:
		if !st.reported {
			return false
		}
		st.reported, st.failures = false, 0
	case rtm.EventContainerStarted:
		st.reported, st.failures, st.container = false, 0, e.ContainerID
	default:
		if repeated(e, st.last) {
			return false
		}
	}
	st.last = string(e.Type)
	return true
}

// transitionEvent reports whether events of type t are published once per transition: probe and
// inspect events, which any RTM process (or this one before a restart) may observe again.
func transitionEvent(t rtm.HealthEventType) bool {
	switch t {
	case rtm.EventProbeFailed, rtm.EventProbeRecovered, rtm.EventInspectUnhealthy:
		return true
	}
	return false
}

// queueLastTransitions queues the read, locked in game_id order, of the last health event type
// of every game a transition event of events is about. The map it returns holds them once the
// pipe is flushed (a game without a snapshot is absent).
func queueLastTransitions(p *pipe, events []rtm.HealthEvent) map[string]string {
	last := map[string]string{}
	var ids []string
	for _, e := range events {
		if transitionEvent(e.Type) && !slices.Contains(ids, e.GameID) {
			ids = append(ids, e.GameID)
		}
	}
	if len(ids) == 0 {
		return last
	}
	p.query("reading health snapshots", intoMap(last), `SELECT game_id, last_event_type FROM health_snapshots WHERE game_id = ANY($1) ORDER BY game_id FOR UPDATE`, ids)
	return last
}

// repeated reports whether a transition event repeats the snapshot's last transition (another
// RTM process, or this one before a restart, already published it): such events are published
// once per transition, whoever observes them. last is the snapshot's last event type, "" when
// the game has none. Probe events are decided on the snapshot's probe state instead (publish,
// CommitProbeRound) where it is at hand; this rule, by last event only, is the fallback.
func repeated(e rtm.HealthEvent, last string) bool {
	switch {
	case !transitionEvent(e.Type):
		return false
	case e.Type == rtm.EventProbeRecovered:
		return last != string(rtm.EventProbeFailed)
	default:
		return last == string(e.Type)
	}
}

// queueEvents queues each event's outbox row and snapshot update, skipping transition events
// that repeat the last transition (last, from queueLastTransitions, is kept up to date as events
// are queued).
func queueEvents(p *pipe, events []rtm.HealthEvent, last map[string]string) {
	for _, e := range events {
		if repeated(e, last[e.GameID]) {
			continue
		}
		last[e.GameID] = string(e.Type)
		queueEvent(p, e)
	}
}

// queueEvent queues an event's snapshot update and then its outbox row. A container_started
// resets the probe state (the new container's failures start from zero, nothing is reported); a
// probe_failed marks a failure reported, a probe_recovered clears it.
//
// The snapshot is updated first so that the outbox row takes its id while the transaction holds
// the snapshot's lock: a game's health events are then numbered in the order their transactions
// changed its snapshot, and the stream tells the transitions in the order the store decided
// them. (Numbered before the lock, a container_started that waited for a prober's round got an
// id below that round's probe_failed for the old container: the stream ended on probe_failed
// while the store, reset by the start, would never publish the probe_recovered.)
func queueEvent(p *pipe, e rtm.HealthEvent) {
	at := e.ObservedAt
	if at.IsZero() {
		at = time.Now()
	}
	started := e.Type == rtm.EventContainerStarted
	probeContainer := ""
	if started {
		probeContainer = e.ContainerID
	}
	p.exec("updating health snapshot of "+e.GameID, `INSERT INTO health_snapshots (game_id, status, last_event_type,
		exit_code, oom_killed, docker_state, probe_failed_reported, probe_container_id, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $3 = 'probe_failed', $8, now())
		ON CONFLICT (game_id) DO UPDATE SET status = EXCLUDED.status, last_event_type = EXCLUDED.last_event_type,
			exit_code = CASE WHEN $7 THEN NULL ELSE COALESCE(EXCLUDED.exit_code, health_snapshots.exit_code) END,
			oom_killed = CASE WHEN $7 THEN false ELSE EXCLUDED.oom_killed OR health_snapshots.oom_killed END,
			consecutive_probe_failures = CASE WHEN $7 OR EXCLUDED.last_event_type = 'probe_recovered' THEN 0
				ELSE health_snapshots.consecutive_probe_failures END,
			probe_failed_reported = CASE WHEN $7 OR EXCLUDED.last_event_type = 'probe_recovered' THEN false
				WHEN EXCLUDED.last_event_type = 'probe_failed' THEN true
				ELSE health_snapshots.probe_failed_reported END,
			probe_container_id = CASE WHEN $7 THEN EXCLUDED.probe_container_id ELSE health_snapshots.probe_container_id END,
			docker_state = COALESCE(NULLIF(EXCLUDED.docker_state, ''), health_snapshots.docker_state),
			updated_at = now()`,
		e.GameID, string(e.Status()), string(e.Type), e.ExitCode, e.OOMKilled, e.DockerState, started, probeContainer)
	queueOutbox(p, rtm.StreamHealthEvents, rtm.HealthEventFields(e, at))
}
