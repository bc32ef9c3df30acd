package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// scalePoint is what one number of running engines costs RTM.
type scalePoint struct {
	n int
	// Boot passes, one per restart: duration (ms) and Docker API calls by operation.
	pass      harness.Sample
	passGames []int
	passCalls []map[string]int
	// At rest, over the window: RSS (MB) and goroutines at each reading, CPU seconds per minute
	// per slice between readings, and the whole window's CPU and Docker calls.
	rss, goroutines, cpuSlices harness.Sample
	cpuPerMin                  float64
	window                     time.Duration
	restCalls                  map[string]int
}

// startGames brings n more engines up through RTM (start jobs, at most batch in flight) and
// returns their game ids. A start that fails is retried with a new job, twice at most.
func (d *driver) startGames(ctx context.Context, from, n, batch int) ([]string, error) {
	games := make([]string, n)
	for i := range games {
		games[i] = fmt.Sprintf("%s-g%04d", d.w.Run, from+i)
	}
	for lo := 0; lo < n; lo += batch {
		hi := min(lo+batch, n)
		todo := games[lo:hi]
		for attempt := 0; len(todo) > 0; attempt++ {
			reqs := make([]string, len(todo))
			pipe := d.w.RDB.Pipeline()
			for i, g := range todo {
				reqs[i] = d.requestID()
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: harness.StartJobs, Values: []string{
					"game_id", g, "image_ref", engineImage, "request_id", reqs[i]}})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return nil, err
			}
			var failed []string
			for i, r := range reqs {
				if _, _, err := d.awaitResult(ctx, r, 10*time.Minute); err != nil {
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					if attempt >= 2 {
						return nil, err
					}
					harness.Logf("  retrying %s: %v", todo[i], err)
					failed = append(failed, todo[i])
				}
			}
			todo = failed
		}
	}
	return games, nil
}

// bootPass restarts RTM and measures its synchronous boot pass: from "internal http listening"
// to "reconciler initial pass completed" in RTM's own log timestamps, and the Docker API calls
// the proxy saw in between.
func (d *driver) bootPass(ctx context.Context, env map[string]string, proxy *dockerProxy, logName string) (time.Duration, int, map[string]int, error) {
	d.rtm.Terminate(30 * time.Second)
	p, err := d.w.StartRTM(ctx, env, logName, nil)
	if err != nil {
		return 0, 0, nil, err
	}
	d.rtm = p
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	listen, err := p.WaitLog(lctx, 0, func(l harness.LogLine) bool { return l.Msg == "internal http listening" })
	if err != nil {
		return 0, 0, nil, err
	}
	done, err := p.WaitLog(lctx, 0, func(l harness.LogLine) bool { return l.Msg == "reconciler initial pass completed" })
	if err != nil {
		return 0, 0, nil, err
	}
	games, _ := done.Attrs["games"].(float64)
	if r, _ := done.Attrs["retrying"].(float64); r != 0 {
		return 0, 0, nil, fmt.Errorf("boot pass left %v games retrying", r)
	}
	return done.Time.Sub(listen.Time), int(games), proxy.count(listen.Time, done.Time), nil
}

// settle waits until RTM is at rest after a restart: its prober's first round (5 s after the
// start) inspects every running container once, since a new process has seen none, and opens a
// connection to every engine. The window starts once that is over: no inspection of ours for
// 1.5 s, and the goroutine count (two per open probe connection) steady over 5 s.
func (d *driver) settle(ctx context.Context, proxy *dockerProxy, min time.Duration) {
	harness.SleepCtx(ctx, min)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if time.Since(proxy.lastCall("inspect")) > 1500*time.Millisecond {
			break
		}
		harness.SleepCtx(ctx, 250*time.Millisecond)
	}
	prev, _ := goroutines(ctx, d.rtm)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		harness.SleepCtx(ctx, 5*time.Second)
		g, err := goroutines(ctx, d.rtm)
		if err != nil || abs(g-prev) <= max(5, prev/100) {
			break
		}
		prev = g
	}
	d.rtm.WaitIdle(ctx, time.Minute, 50*time.Millisecond)
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// atRest samples RTM every step for window: RSS, goroutines, CPU.
func (d *driver) atRest(ctx context.Context, pt *scalePoint, proxy *dockerProxy, window, step time.Duration) error {
	prev, err := d.rtm.Stat()
	if err != nil {
		return err
	}
	first := prev
	for t := time.Duration(0); t < window; t += step {
		harness.SleepCtx(ctx, step)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		st, err := d.rtm.Stat()
		if err != nil {
			return err
		}
		g, err := goroutines(ctx, d.rtm)
		if err != nil {
			return err
		}
		pt.rss = append(pt.rss, float64(st.RSSKB)/1024)
		pt.goroutines = append(pt.goroutines, float64(g))
		pt.cpuSlices = append(pt.cpuSlices, (st.CPU-prev.CPU).Seconds()/st.At.Sub(prev.At).Minutes())
		prev = st
	}
	pt.window = prev.At.Sub(first.At)
	pt.cpuPerMin = (prev.CPU - first.CPU).Seconds() / pt.window.Minutes()
	pt.restCalls = proxy.count(first.At, prev.At)
	return nil
}

// formatCalls prints calls by operation, sorted.
func formatCalls(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %d", k, m[k])
	}
	return s
}

// sumCalls is the total of a call map.
func sumCalls(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// sumOwn is the total of a call map without the calls about other RTMs' games.
func sumOwn(m map[string]int) int {
	n := 0
	for k, v := range m {
		if !strings.Contains(k, "other RTMs") {
			n += v
		}
	}
	return n
}

// goroutines reads RTM's goroutine count from its goroutine profile. Over the target, the
// profile's largest groups (debug=1 lists them by count, largest first) go to the log, to say
// what holds them.
func goroutines(ctx context.Context, p *harness.Proc) (int, error) {
	prof, n, err := p.GoroutineProfile(ctx)
	if err == nil && n > targetGoroutines {
		groups := strings.Split(prof, "\n\n")
		for _, g := range groups[:min(len(groups), 4)] {
			harness.Logf("  goroutines over %d: %s", targetGoroutines, strings.Join(strings.Split(g, "\n")[:min(8, len(strings.Split(g, "\n")))], " | "))
		}
	}
	return n, err
}

// profileDuring writes RTM's CPU profile, taken over window, to path while measure runs; both
// are done when it returns.
func profileDuring(ctx context.Context, rtm *harness.Proc, path string, window time.Duration, measure func() error) error {
	secs := max(1, int(window.Round(time.Second)/time.Second))
	got := make(chan error, 1)
	go func() {
		body, err := harness.HTTPGet(ctx, &http.Client{Timeout: window + 30*time.Second},
			fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", rtm.API, secs))
		if err == nil {
			err = os.WriteFile(path, []byte(body), 0o644)
		}
		got <- err
	}()
	err := measure()
	if perr := <-got; perr != nil {
		harness.Logf("  rest profile: %v", perr)
	} else {
		harness.Logf("  rest profile of %d s written to %s", secs, path)
	}
	return err
}
