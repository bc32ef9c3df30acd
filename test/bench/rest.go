package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// restResult holds the REST latencies (ms) of the measured requests and per-second p99s.
type restResult struct {
	rate       int
	duration   time.Duration
	lat        harness.Sample // send → body read
	lag        harness.Sample // schedule → send (the load generator's own delay)
	p50s, p99s harness.Sample // per 1-s window
	errors     int
	achieved   float64 // requests/s actually sent
}

// measureREST sends GET /api/v1/internal/runtimes/{id} open-loop at rate requests per second
// for warm+dur (the warm-up is not measured), cycling through games, from a pool of workers.
func measureREST(ctx context.Context, api string, games []string, rate int, warm, dur time.Duration) (*restResult, error) {
	if len(games) == 0 {
		return nil, fmt.Errorf("no games to read")
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute}}
	defer client.CloseIdleConnections()
	interval := time.Second / time.Duration(rate)
	total := int((warm + dur) / interval)
	warmN := int(warm / interval)

	type job struct {
		i   int
		due time.Time
	}
	type obs struct {
		due       time.Time
		lat, lag  time.Duration
		err       bool
		completed bool
	}
	out := make([]obs, total)
	jobs := make(chan job, total)
	wait := harness.Workers(128, jobs, func(j job) {
		sent := time.Now()
		url := api + "/api/v1/internal/runtimes/" + games[j.i%len(games)]
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		ok := err == nil
		if ok {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ok = resp.StatusCode == http.StatusOK
		}
		out[j.i] = obs{due: j.due, lat: time.Since(sent), lag: sent.Sub(j.due), err: !ok, completed: true}
	})
	start := time.Now().Add(10 * time.Millisecond)
	for i := 0; i < total && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		jobs <- job{i: i, due: due}
	}
	close(jobs)
	wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res := &restResult{rate: rate, duration: dur}
	windows := map[int]harness.Sample{}
	var first, last time.Time
	for i := warmN; i < total; i++ {
		o := out[i]
		if !o.completed || o.err {
			res.errors++
			continue
		}
		sent := o.due.Add(o.lag)
		if first.IsZero() || sent.Before(first) {
			first = sent
		}
		if sent.After(last) {
			last = sent
		}
		res.lat = append(res.lat, ms(o.lat))
		res.lag = append(res.lag, ms(o.lag))
		wi := int(o.due.Sub(start.Add(warm)) / time.Second)
		windows[wi] = append(windows[wi], ms(o.lat))
	}
	for _, w := range windows {
		if len(w) >= rate/2 {
			res.p50s = append(res.p50s, w.Median())
			res.p99s = append(res.p99s, w.Quantile(0.99))
		}
	}
	if span := last.Sub(first).Seconds(); span > 0 {
		res.achieved = float64(len(res.lat)) / span
	}
	return res, nil
}
