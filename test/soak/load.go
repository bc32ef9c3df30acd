package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// dupEvery: every dupEvery-th churn job is delivered twice with the same request_id; the
// contract still wants exactly one result for it.
const dupEvery = 10

// jobTimeout bounds the wait for one job's result.
const jobTimeout = 3 * time.Minute

// traffic drives RTM from outside, as Lobby, Game Master and an operator do: start and stop jobs
// on Redis, REST reads and mutations. It keeps every request id it sent for the exactly-once
// check, and counters the sampler reads per interval.
type traffic struct {
	w     *world
	rtm   *rtmProc
	watch *watcher
	seq   atomic.Int64

	mu   sync.Mutex
	sent map[string]bool // request ids
	lat  []float64       // REST read latencies (ms) since the last drain
	all  []float64       // every REST read latency (ms)
	// codes counts REST read answers that were not 200, by "status route".
	codes     map[string]int
	mutations []mutation
	failures  []string // jobs answered failed, one line each

	jobsSent, jobsDone, jobsFailed, jobsLost atomic.Int64
	churnSent                                atomic.Int64 // jobs of the pool
	delivered2                               atomic.Int64 // jobs delivered twice
	churnSkipped                             atomic.Int64 // ticks with every churn game busy
	restOK, restErr, restDropped             atomic.Int64
}

func newTraffic(w *world, p *rtmProc, watch *watcher) *traffic {
	return &traffic{w: w, rtm: p, watch: watch, sent: map[string]bool{}, codes: map[string]int{}}
}

func (t *traffic) requestID() string { return fmt.Sprintf("%s-%d", t.w.Run, t.seq.Add(1)) }

// job sends one start (image non-empty) or stop job, twice when twice is set, and waits for its
// result. It returns the result's fields; a job answered failed is an error too.
func (t *traffic) job(ctx context.Context, game, image string, twice bool) (map[string]string, error) {
	id := t.requestID()
	stream, values := harness.StopJobs, []string{"game_id", game, "reason", "soak", "request_id", id}
	if image != "" {
		stream, values = harness.StartJobs, []string{"game_id", game, "image_ref", image, "request_id", id}
	}
	t.mu.Lock()
	t.sent[id] = true
	t.mu.Unlock()
	n := 1
	if twice {
		n = 2
		t.delivered2.Add(1)
	}
	for i := 0; i < n; i++ {
		if err := t.w.RDB.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: values}).Err(); err != nil {
			return nil, fmt.Errorf("XADD %s: %w", stream, err)
		}
	}
	t.jobsSent.Add(1)
	f, err := t.watch.wait(ctx, id, jobTimeout)
	if err != nil {
		if ctx.Err() == nil {
			t.jobsLost.Add(1)
		}
		return nil, err
	}
	t.jobsDone.Add(1)
	if f["outcome"] != "succeeded" {
		t.jobsFailed.Add(1)
		line := fmt.Sprintf("%s %s %s: %s %s", f["job"], game, id, f["error_code"], f["error_message"])
		t.mu.Lock()
		t.failures = append(t.failures, line)
		t.mu.Unlock()
		return f, fmt.Errorf("%s", line)
	}
	return f, nil
}

// startEngines starts games through start jobs, at most conc in flight, and waits for every
// result. A failed start is retried once with a new job.
func (t *traffic) startEngines(ctx context.Context, games []string, conc int) error {
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	var done atomic.Int64
	for _, g := range games {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, err := t.job(ctx, g, imageA, false)
			if err != nil && ctx.Err() == nil {
				harness.Logf("  start of %s failed, retrying: %v", g, err)
				_, err = t.job(ctx, g, imageA, false)
			}
			if err != nil && ctx.Err() == nil {
				mu.Lock()
				errs = append(errs, err.Error())
				mu.Unlock()
			}
			if n := done.Add(1); n%50 == 0 {
				harness.Logf("  %d/%d started", n, len(games))
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d engines did not start: %s", len(errs), strings.Join(errs, "; "))
	}
	return nil
}

// churnGame is one game of the start/stop pool.
type churnGame struct {
	id      string
	running bool
	image   string // the image of the next start
}

// churn sends start and stop jobs at rate per second over the pool until stopCtx ends; each
// game's next job goes only after the previous one's result (start, stop, start…), and every
// start after a stop switches the image, so RTM replaces the container. Each tick takes a random
// idle game, so the pool does not flip in lockstep. Results are awaited under ctx, so jobs in
// flight when stopCtx ends are still seen through.
func (t *traffic) churn(ctx, stopCtx context.Context, games []string, rate float64) {
	var mu sync.Mutex
	idle := make([]*churnGame, 0, len(games))
	for _, g := range games {
		idle = append(idle, &churnGame{id: g, image: imageA})
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var n int
	for {
		select {
		case <-stopCtx.Done():
			return
		case <-tick.C:
		}
		mu.Lock()
		if len(idle) == 0 {
			mu.Unlock()
			t.churnSkipped.Add(1)
			continue
		}
		i := rand.IntN(len(idle))
		g := idle[i]
		idle[i] = idle[len(idle)-1]
		idle = idle[:len(idle)-1]
		mu.Unlock()
		n++
		twice := n%dupEvery == 0
		t.churnSent.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			image := ""
			if !g.running {
				image = g.image
			}
			if _, err := t.job(ctx, g.id, image, twice); err == nil {
				if g.running = !g.running; g.running {
					g.image = otherImage(g.image)
				}
			} else if ctx.Err() == nil {
				harness.Logf("churn: %v", err)
			}
			mu.Lock()
			idle = append(idle, g)
			mu.Unlock()
		}()
	}
}

// restClient is the REST readers' client; its connections are reused.
var restClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
	MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute}}

// reads sends GET requests open-loop at rate per second until ctx ends, from a pool of workers,
// each on a random game and route: the record, its operations, its health snapshot, or a page
// of the list. A request that finds every worker busy is dropped and counted.
func (t *traffic) reads(ctx context.Context, games []string, rate float64) {
	type req struct{ route, url string }
	jobs := make(chan req, 64)
	wait := harness.Workers(16, jobs, func(r req) {
		t0 := time.Now()
		code := t.get(ctx, r.url)
		if ctx.Err() != nil {
			return
		}
		lat := float64(time.Since(t0)) / float64(time.Millisecond)
		t.mu.Lock()
		if code == http.StatusOK {
			t.lat = append(t.lat, lat)
			t.all = append(t.all, lat)
		} else {
			t.codes[fmt.Sprintf("%d %s", code, r.route)]++
		}
		t.mu.Unlock()
		if code == http.StatusOK {
			t.restOK.Add(1)
		} else {
			t.restErr.Add(1)
		}
	})
	base := t.rtm.API + "/api/v1/internal/runtimes"
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			g := games[rand.IntN(len(games))]
			var r req
			switch rand.IntN(4) {
			case 0:
				r = req{"record", base + "/" + g}
			case 1:
				r = req{"operations", base + "/" + g + "/operations?limit=20"}
			case 2:
				r = req{"health", base + "/" + g + "/health"}
			default:
				r = req{"list", base + "?limit=100"}
			}
			select {
			case jobs <- r:
			default:
				t.restDropped.Add(1)
			}
		}
	}
	close(jobs)
	wait()
}

// get returns the status code of a GET (0 when the request failed).
func (t *traffic) get(ctx context.Context, url string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	resp, err := restClient.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// drainLatencies returns the REST read latencies since the last call.
func (t *traffic) drainLatencies() []float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.lat
	t.lat = nil
	return l
}

// mutation is one REST restart or patch.
type mutation struct {
	at       time.Time
	kind     string // "restart" or "patch a→b"
	game     string
	code     int
	errCode  string
	duration time.Duration
}

// mutate alternates, every interval until stopCtx ends, a REST patch of patchGame to its other
// version and a REST restart of restartGame, as the admin caller, one at a time. A mutation in
// flight when stopCtx ends is still awaited (under ctx), so that RTM is not left with a request
// the soak cut short.
func (t *traffic) mutate(ctx, stopCtx context.Context, patchGame, restartGame string, every time.Duration) {
	client := &http.Client{Timeout: 2 * time.Minute}
	base := t.rtm.API + "/api/v1/internal/runtimes/"
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stopCtx.Done():
			return
		case <-tick.C:
		}
		m := mutation{at: time.Now()}
		var url, body string
		if i%2 == 0 {
			cur := t.currentImage(ctx, patchGame)
			next := otherImage(cur)
			m.kind = "patch " + tagOf(cur) + "→" + tagOf(next)
			m.game, url = patchGame, base+patchGame+"/patch"
			b, _ := json.Marshal(map[string]string{"image_ref": next})
			body = string(b)
		} else {
			m.kind, m.game, url, body = "restart", restartGame, base+restartGame+"/restart", "{}"
		}
		mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		req, _ := http.NewRequestWithContext(mctx, http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Galaxy-Caller", "admin")
		t0 := time.Now()
		resp, err := client.Do(req)
		m.duration = time.Since(t0)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			m.code = resp.StatusCode
			if m.code != http.StatusOK {
				var e struct {
					Error struct{ Code string } `json:"error"`
				}
				_ = json.Unmarshal(b, &e)
				m.errCode = e.Error.Code
			}
		} else {
			m.errCode = err.Error()
		}
		cancel()
		t.mu.Lock()
		t.mutations = append(t.mutations, m)
		t.mu.Unlock()
		if m.code != http.StatusOK {
			harness.Logf("REST %s of %s: %d %s after %s", m.kind, m.game, m.code, m.errCode, m.duration.Round(time.Millisecond))
		}
	}
}

// currentImage reads a game's current_image_ref (imageA when it cannot tell).
func (t *traffic) currentImage(ctx context.Context, game string) string {
	body, err := t.rtm.Get(ctx, "/api/v1/internal/runtimes/"+game)
	if err != nil {
		return imageA
	}
	var r struct {
		CurrentImageRef string `json:"current_image_ref"`
	}
	if json.Unmarshal([]byte(body), &r) != nil || r.CurrentImageRef == "" {
		return imageA
	}
	return r.CurrentImageRef
}

func tagOf(image string) string { return image[strings.LastIndexByte(image, ':')+1:] }

// sentIDs returns a copy of the request ids sent.
func (t *traffic) sentIDs() map[string]bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]bool, len(t.sent))
	for k := range t.sent {
		out[k] = true
	}
	return out
}

// summary returns the mutations, failures, codes and every REST latency.
func (t *traffic) summary() ([]mutation, []string, map[string]int, []float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	codes := make(map[string]int, len(t.codes))
	for k, v := range t.codes {
		codes[k] = v
	}
	return slices.Clone(t.mutations), slices.Clone(t.failures), codes, slices.Clone(t.all)
}
