//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// restCall is one REST request of the overlap test and its answer.
type restCall struct {
	proc, method, path string
	status             int
	body, requestID    string
	took               time.Duration
}

// TestChaos_rollingOverlap runs two RTM processes at once on the same database, Redis and network,
// as a rolling restart does, under a stream of jobs and REST calls to both: A alone, then A and
// B together for 25s, then B alone after A's SIGTERM; then B and C together for 12s and C alone.
// (The issue asks for a minute of overlap; 25s + 12s keeps the suite within its time budget
// while both processes still consume every job, reconcile the same games and publish from the
// same outbox.) Every job is answered once, no REST call gets a 5xx, no request is carried out
// twice, and the records equal Docker.
func TestChaos_rollingOverlap(t *testing.T) {
	r := newRig(t, "roll")
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	jobGames := make([]string, 6)
	restGames := make([]string, 6)
	for i := range jobGames {
		jobGames[i], restGames[i] = r.game(fmt.Sprintf("j%d", i)), r.game(fmt.Sprintf("r%d", i))
	}
	a := r.startRTM("rtm-a", nil)
	for _, g := range jobGames {
		r.sendStart(g, img(v141))
	}
	for _, g := range restGames {
		if code, body, _ := a.call("POST", "/runtimes/"+g+"/start", `{"image_ref":"`+img(v141)+`"}`); code != http.StatusOK {
			t.Fatalf("starting %s: %d %s", g, code, body)
		}
	}
	r.settle(60 * time.Second)

	var mu sync.Mutex
	var calls []restCall
	live := []*rtmProc{a}
	var rmu sync.Mutex // guards rng and live
	pick := func() (*rtmProc, string, int) {
		rmu.Lock()
		defer rmu.Unlock()
		return live[rng.IntN(len(live))], restGames[rng.IntN(len(restGames))], rng.IntN(100)
	}
	restOnce := func() {
		p, g, n := pick()
		path := "/runtimes/" + g
		var method, body string
		switch {
		case n < 20:
			method, path, body = "POST", path+"/stop", `{"reason":"chaos"}`
		case n < 45:
			method, path, body = "POST", path+"/start", `{"image_ref":"`+img(v141)+`"}`
		case n < 60:
			method, path, body = "POST", path+"/restart", `{}`
		case n < 70:
			method, path, body = "POST", path+"/patch", `{"image_ref":"`+img(v142)+`"}`
		case n < 75:
			method, path, body = "POST", path+"/patch", `{"image_ref":"`+img(v141)+`"}`
		case n < 90:
			method = "GET"
		default:
			method, path = "GET", "/runtimes?limit=50"
		}
		t0 := time.Now()
		code, resp, id := p.call(method, path, body)
		mu.Lock()
		calls = append(calls, restCall{proc: p.name, method: method, path: path, status: code, body: resp, requestID: id, took: time.Since(t0)})
		mu.Unlock()
	}
	jobOnce := func() {
		rmu.Lock()
		g, n := jobGames[rng.IntN(len(jobGames))], rng.IntN(100)
		rmu.Unlock()
		var id string
		if n < 55 {
			id = r.sendStart(g, img(v141))
		} else {
			id = r.sendStop(g)
		}
		if n%10 == 0 {
			r.redeliver(id)
		}
	}
	// every calls fn after a pause of minMS to minMS+spreadMS milliseconds, again and again,
	// until stop is closed.
	every := func(stop <-chan struct{}, minMS, spreadMS int, fn func()) {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(minMS+rand.IntN(spreadMS)) * time.Millisecond):
				fn()
			}
		}
	}
	// traffic sends jobs every 150-350ms and keeps two REST callers busy until stop is closed.
	traffic := func(stop <-chan struct{}) *sync.WaitGroup {
		var wg sync.WaitGroup
		wg.Add(3)
		go func() {
			defer wg.Done()
			every(stop, 150, 200, jobOnce)
		}()
		for i := 0; i < 2; i++ {
			go func() {
				defer wg.Done()
				every(stop, 100, 300, restOnce)
			}()
		}
		return &wg
	}

	contended := map[string]float64{}
	handover := func(old *rtmProc, next string, overlap time.Duration) *rtmProc {
		stop := make(chan struct{})
		wg := traffic(stop)
		time.Sleep(2 * time.Second) // the old process alone
		n := r.startRTM(next, nil)
		rmu.Lock()
		live = append(live, n)
		rmu.Unlock()
		t0 := time.Now()
		time.Sleep(overlap)
		rmu.Lock()
		live = []*rtmProc{n} // REST callers leave the old process before it is told to stop
		rmu.Unlock()
		time.Sleep(500 * time.Millisecond)
		contended[old.name] = old.metric(`rtmanager_lease_acquisitions_total{`, `result="contended"`)
		code := old.term(t)
		both := time.Since(t0)
		if code != 0 {
			t.Errorf("%s exited with %d after SIGTERM, want 0", old.name, code)
		}
		time.Sleep(3 * time.Second) // the new process alone
		close(stop)
		wg.Wait()
		t.Logf("%s and %s ran together for %s under traffic", old.name, n.name, both.Round(100*time.Millisecond))
		return n
	}
	b := handover(a, "rtm-b", 25*time.Second)
	c := handover(b, "rtm-c", 12*time.Second)
	r.settle(90 * time.Second)

	// REST: never a 5xx or a dropped call; a mutation answered 200 or 202 was carried out exactly
	// once (one operation_log row with its request id).
	ctx := context.Background()
	byStatus := map[int]int{}
	var mutations []string
	for _, cl := range calls {
		byStatus[cl.status]++
		if cl.status >= 500 || cl.status == 0 {
			t.Errorf("%s %s on %s: %d %s", cl.method, cl.path, cl.proc, cl.status, cl.body)
		}
		if cl.method == "POST" && (cl.status == http.StatusOK || cl.status == http.StatusAccepted) {
			mutations = append(mutations, cl.requestID)
		}
	}
	testenv.Eventually(t, 30*time.Second, "every accepted REST mutation in operation_log once", func() (bool, string) {
		rows, err := r.pg.Query(ctx, `SELECT request_id, count(*) FROM operation_log WHERE request_id = ANY($1) GROUP BY 1`, mutations)
		if err != nil {
			return false, err.Error()
		}
		defer rows.Close()
		n := map[string]int{}
		for rows.Next() {
			var id string
			var k int
			_ = rows.Scan(&id, &k)
			n[id] = k
		}
		var bad []string
		for _, id := range mutations {
			if n[id] != 1 {
				bad = append(bad, fmt.Sprintf("%s: %d rows", id, n[id]))
			}
		}
		return len(bad) == 0, strings.Join(head(bad, 5), "; ")
	})
	var st []string
	for code, n := range byStatus {
		st = append(st, fmt.Sprintf("%d×%d", n, code))
	}
	sort.Strings(st)
	t.Logf("REST calls: %d (%s), %d mutations carried out; leases found held by the other process: %v",
		len(calls), strings.Join(st, ", "), len(mutations), contended)
	if !c.Alive() {
		t.Fatalf("%s exited with %d", c.name, c.Code())
	}
	r.finish("rolling-overlap", 60*time.Second)
}
