package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/redis/go-redis/v9"

	rtm "github.com/galaxy-platform/rtmanager"
	"github.com/galaxy-platform/rtmanager/test/harness"
)

// driver drives one running RTM from outside, as Lobby does: jobs in, results out.
type driver struct {
	w     *world
	rtm   *harness.Proc
	watch *watcher
	raw   *rawStarter
	seq   atomic.Int64

	dieMu sync.Mutex
	dieAt map[string]time.Time // container id → when the bench saw its die event
}

func (d *driver) requestID() string { return fmt.Sprintf("%s-%d", d.w.Run, d.seq.Add(1)) }

// startJob adds a start job and returns its request id and when it was added.
func (d *driver) startJob(ctx context.Context, gameID string) (string, time.Time, error) {
	id := d.requestID()
	t0 := time.Now()
	err := d.w.RDB.XAdd(ctx, &redis.XAddArgs{Stream: harness.StartJobs, Values: []string{
		"game_id", gameID, "image_ref", engineImage, "request_id", id}}).Err()
	return id, t0, err
}

// awaitResult waits for a job's result and fails unless it succeeded.
func (d *driver) awaitResult(ctx context.Context, reqID string, timeout time.Duration) (time.Time, map[string]string, error) {
	at, f, err := d.watch.wait(ctx, resultKey(reqID), timeout)
	if err != nil {
		return at, f, err
	}
	if f["outcome"] != "succeeded" {
		return at, f, fmt.Errorf("job %s of %s: %s %s: %s", reqID, f["game_id"], f["outcome"], f["error_code"], f["error_message"])
	}
	return at, f, nil
}

// rtmStart runs one start job to its result: XADD until the succeeded result is readable.
func (d *driver) rtmStart(ctx context.Context, gameID string) (time.Duration, string, error) {
	id, t0, err := d.startJob(ctx, gameID)
	if err != nil {
		return 0, "", err
	}
	at, f, err := d.awaitResult(ctx, id, 2*time.Minute)
	if err != nil {
		return 0, "", err
	}
	if os.Getenv("BENCH_DEBUG") != "" {
		s := d.watch.slot(resultKey(id))
		harness.Logf("DEBUG %s xadd %s result id %s readable %s", gameID, t0.Format("15:04:05.000"), s.id, at.Format("15:04:05.000"))
	}
	return at.Sub(t0), f["container_id"], nil
}

// rtmStop runs one stop job to its result.
func (d *driver) rtmStop(ctx context.Context, gameID string) (time.Duration, error) {
	id := d.requestID()
	t0 := time.Now()
	if err := d.w.RDB.XAdd(ctx, &redis.XAddArgs{Stream: harness.StopJobs, Values: []string{
		"game_id", gameID, "reason", "benchmark", "request_id", id}}).Err(); err != nil {
		return 0, err
	}
	at, _, err := d.awaitResult(ctx, id, 2*time.Minute)
	return at.Sub(t0), err
}

// rawStart is the baseline of rtmStart.
func (d *driver) rawStart(ctx context.Context, gameID string) (time.Duration, string, error) {
	t0 := time.Now()
	id, err := d.raw.start(ctx, gameID)
	return time.Since(t0), id, err
}

// rawStop is the baseline of rtmStop.
func (d *driver) rawStop(ctx context.Context, id string) (time.Duration, error) {
	t0 := time.Now()
	err := d.raw.stop(ctx, id)
	return time.Since(t0), err
}

// quiesce lets RTM finish what a measurement set off (the reconciles its own Docker events
// trigger) before the next measurement starts.
func (d *driver) quiesce(ctx context.Context) {
	d.rtm.WaitIdle(ctx, 5*time.Second, 50*time.Millisecond)
	harness.SleepCtx(ctx, 100*time.Millisecond)
}

// followDie notes when the daemon reports each owned container's die, the physical floor of
// exit detection.
func (d *driver) followDie(ctx context.Context) {
	d.dieAt = map[string]time.Time{}
	msgs, errs := d.w.Docker.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)), filters.Arg("event", "die"),
		filters.Arg("label", rtm.LabelOwner+"="+rtm.OwnerValue))})
	go func() {
		for {
			select {
			case m := <-msgs:
				at := time.Now()
				d.dieMu.Lock()
				d.dieAt[m.Actor.ID] = at
				d.dieMu.Unlock()
			case <-errs:
				return
			}
		}
	}()
}

func (d *driver) dieSeen(id string) (time.Time, bool) {
	d.dieMu.Lock()
	defer d.dieMu.Unlock()
	t, ok := d.dieAt[id]
	return t, ok
}

// latencyResult holds the single start, stop and exit detection samples (ms).
type latencyResult struct {
	startRTM, startRaw harness.Sample
	stopRTM, stopRaw   harness.Sample
	exit, die          harness.Sample
	rtmGames           []string
}

// measureLatency runs rounds of: one RTM start and one raw start (alternating which goes
// first), one RTM stop and one raw stop (alternating), and one exit detection.
func (d *driver) measureLatency(ctx context.Context, rounds int) (*latencyResult, error) {
	res := &latencyResult{}
	d.followDie(ctx)
	// A warm-up round, not recorded: the first container on a fresh network makes the daemon
	// set the bridge up (seconds under load), and RTM opens its connections.
	if _, _, err := d.rtmStart(ctx, d.w.Run+"-w0"); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if _, id, err := d.rawStart(ctx, d.w.Run+"-w1"); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	} else if _, err := d.rawStop(ctx, id); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if _, err := d.rtmStop(ctx, d.w.Run+"-w0"); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	d.quiesce(ctx)
	for i := 0; i < rounds; i++ {
		gRTM := fmt.Sprintf("%s-s%02d", d.w.Run, i)
		gRaw := fmt.Sprintf("%s-r%02d", d.w.Run, i)
		gExit := fmt.Sprintf("%s-e%02d", d.w.Run, i)
		var rtmID, rawID string
		for k := 0; k < 2; k++ {
			if (i+k)%2 == 0 {
				dur, id, err := d.rtmStart(ctx, gRTM)
				if err != nil {
					return nil, fmt.Errorf("rtm start: %w", err)
				}
				rtmID = id
				res.startRTM = append(res.startRTM, ms(dur))
			} else {
				dur, id, err := d.rawStart(ctx, gRaw)
				if err != nil {
					return nil, fmt.Errorf("raw start: %w", err)
				}
				rawID = id
				res.startRaw = append(res.startRaw, ms(dur))
			}
			d.quiesce(ctx)
		}
		if i == 0 {
			if err := checkParity(ctx, d.w.Docker, rtmID, rawID); err != nil {
				return nil, err
			}
		}
		for k := 0; k < 2; k++ {
			if (i+k)%2 == 0 {
				dur, err := d.rtmStop(ctx, gRTM)
				if err != nil {
					return nil, fmt.Errorf("rtm stop: %w", err)
				}
				res.stopRTM = append(res.stopRTM, ms(dur))
			} else {
				dur, err := d.rawStop(ctx, rawID)
				if err != nil {
					return nil, fmt.Errorf("raw stop: %w", err)
				}
				res.stopRaw = append(res.stopRaw, ms(dur))
			}
			d.quiesce(ctx)
		}
		res.rtmGames = append(res.rtmGames, gRTM)

		// Exit detection: an engine RTM runs is killed through the API.
		_, id, err := d.rtmStart(ctx, gExit)
		if err != nil {
			return nil, fmt.Errorf("rtm start for exit: %w", err)
		}
		d.quiesce(ctx)
		t0 := time.Now()
		if err := d.w.Docker.ContainerKill(ctx, id, "KILL"); err != nil {
			return nil, fmt.Errorf("killing %s: %w", gExit, err)
		}
		at, f, err := d.watch.wait(ctx, healthKey(gExit, string(rtm.EventContainerExited)), time.Minute)
		if err != nil {
			return nil, fmt.Errorf("exit detection: %w", err)
		}
		if f["container_id"] != id {
			return nil, fmt.Errorf("container_exited for %s names %s, want %s", gExit, f["container_id"], id)
		}
		res.exit = append(res.exit, ms(at.Sub(t0)))
		if die, ok := d.dieSeen(id); ok {
			res.die = append(res.die, ms(die.Sub(t0)))
		}
		res.rtmGames = append(res.rtmGames, gExit)
		d.quiesce(ctx)
		harness.Logf("  round %d/%d: start rtm %.0f raw %.0f ms, stop rtm %.0f raw %.0f ms, exit %.0f ms", i+1, rounds,
			res.startRTM[i], res.startRaw[i], res.stopRTM[i], res.stopRaw[i], res.exit[i])
	}
	return res, nil
}

// burstResult holds burst durations (ms) and the raw path's concurrency.
type burstResult struct {
	n           int
	concurrency int
	calib       map[int]float64 // concurrency → ms for the calibration burst
	rtm, raw    harness.Sample
}

// rtmBurst adds n start jobs in one pipeline and waits for all their results.
func (d *driver) rtmBurst(ctx context.Context, tag string, n int) (time.Duration, []string, error) {
	games := make([]string, n)
	reqs := make([]string, n)
	pipe := d.w.RDB.Pipeline()
	for i := range games {
		games[i] = fmt.Sprintf("%s-%s%03d", d.w.Run, tag, i)
		reqs[i] = d.requestID()
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: harness.StartJobs, Values: []string{
			"game_id", games[i], "image_ref", engineImage, "request_id", reqs[i]}})
	}
	t0 := time.Now()
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, nil, err
	}
	var last time.Time
	for _, r := range reqs {
		at, _, err := d.awaitResult(ctx, r, 5*time.Minute)
		if err != nil {
			return 0, nil, err
		}
		if at.After(last) {
			last = at
		}
	}
	return last.Sub(t0), games, nil
}

// rawBurst creates and starts n containers, c at a time.
func (d *driver) rawBurst(ctx context.Context, tag string, n, c int) (time.Duration, []string, error) {
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, c)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ids[i], errs[i] = d.raw.start(ctx, fmt.Sprintf("%s-%s%03d", d.w.Run, tag, i))
		}()
	}
	wg.Wait()
	dur := time.Since(t0)
	for _, err := range errs {
		if err != nil {
			return 0, ids, err
		}
	}
	return dur, ids, nil
}

// removeRTMGames removes the containers of RTM's games behind its back and lets it settle
// (it records them exited, then removed).
func (d *driver) removeRTMGames(ctx context.Context, games []string) error {
	names := make([]string, len(games))
	for i, g := range games {
		names[i] = rtm.ContainerName(g)
	}
	if err := d.w.RemoveIDs(ctx, names); err != nil {
		return err
	}
	harness.SleepCtx(ctx, 500*time.Millisecond)
	d.rtm.WaitIdle(ctx, 30*time.Second, 50*time.Millisecond)
	return nil
}

// measureBurst calibrates the raw path's concurrency, then alternates RTM and raw bursts.
func (d *driver) measureBurst(ctx context.Context, n, rounds, calibN int, levels []int) (*burstResult, error) {
	res := &burstResult{n: n, calib: map[int]float64{}}
	best := 0.0
	for _, c := range levels {
		dur, ids, err := d.rawBurst(ctx, fmt.Sprintf("k%d-", c), calibN, c)
		if rerr := d.w.RemoveIDs(ctx, ids); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			return nil, fmt.Errorf("raw burst calibration: %w", err)
		}
		res.calib[c] = ms(dur)
		if best == 0 || ms(dur) < best {
			best, res.concurrency = ms(dur), c
		}
		harness.Logf("  calibration: %d raw create+starts at concurrency %d: %.0f ms", calibN, c, ms(dur))
		d.quiesce(ctx)
	}
	for i := 0; i < rounds; i++ {
		for k := 0; k < 2; k++ {
			if (i+k)%2 == 0 {
				dur, games, err := d.rtmBurst(ctx, fmt.Sprintf("b%d-", i), n)
				if err != nil {
					return nil, fmt.Errorf("rtm burst: %w", err)
				}
				res.rtm = append(res.rtm, ms(dur))
				d.quiesce(ctx)
				if err := d.removeRTMGames(ctx, games); err != nil {
					return nil, err
				}
			} else {
				dur, ids, err := d.rawBurst(ctx, fmt.Sprintf("q%d-", i), n, res.concurrency)
				if rerr := d.w.RemoveIDs(ctx, ids); rerr != nil && err == nil {
					err = rerr
				}
				if err != nil {
					return nil, fmt.Errorf("raw burst: %w", err)
				}
				res.raw = append(res.raw, ms(dur))
			}
			d.quiesce(ctx)
		}
		harness.Logf("  burst round %d/%d: rtm %.0f ms, raw %.0f ms (concurrency %d)", i+1, rounds, res.rtm[i], res.raw[i], res.concurrency)
	}
	return res, nil
}

// watcher follows RTM's result and health streams (harness.Follow) and notes when each entry
// became readable: job results by request id, health events by game id and type (the first of
// each).
type watcher struct {
	rdb *redis.Client

	mu    sync.Mutex
	slots map[string]*slot
}

// slot is one awaited entry.
type slot struct {
	done   chan struct{}
	at     time.Time
	fields map[string]string
	id     string // the entry's stream id
}

func newWatcher(rdb *redis.Client) *watcher {
	return &watcher{rdb: rdb, slots: map[string]*slot{}}
}

func resultKey(requestID string) string         { return "result:" + requestID }
func healthKey(gameID, eventType string) string { return "health:" + gameID + ":" + eventType }

func (w *watcher) slot(key string) *slot {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slots[key]
	if s == nil {
		s = &slot{done: make(chan struct{})}
		w.slots[key] = s
	}
	return s
}

// run reads both streams from their beginning until ctx ends.
func (w *watcher) run(ctx context.Context) {
	harness.Follow(ctx, w.rdb, func(e harness.Entry) {
		key := healthKey(e.Fields["game_id"], e.Fields["event_type"])
		if e.Stream == harness.JobResults {
			key = resultKey(e.Fields["request_id"])
		}
		sl := w.slot(key)
		w.mu.Lock()
		if sl.fields == nil {
			sl.at, sl.fields, sl.id = e.At, e.Fields, e.ID
			close(sl.done)
		}
		w.mu.Unlock()
	}, harness.JobResults, harness.HealthEvents)
}

// wait returns when the entry of key became readable and its fields.
func (w *watcher) wait(ctx context.Context, key string, timeout time.Duration) (time.Time, map[string]string, error) {
	s := w.slot(key)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.done:
		return s.at, s.fields, nil
	case <-ctx.Done():
		return time.Time{}, nil, ctx.Err()
	case <-t.C:
		return time.Time{}, nil, fmt.Errorf("no %s within %s", key, timeout)
	}
}

// reset forgets every entry seen (after the streams were emptied).
func (w *watcher) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.slots = map[string]*slot{}
}
