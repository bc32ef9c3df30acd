//go:build chaos

package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// dockerProxy is one RTM process's own path to the Docker daemon: an HTTP reverse proxy on a
// unix socket (handed to the process as RTMANAGER_DOCKER_HOST) that records every API call the
// process makes in the rig's ledger, can refuse what the ledger's faults say, and, being a proxy,
// can be cut or hung like the daemon itself.
type dockerProxy struct {
	*proxy
	proc   string
	pid    atomic.Int64 // of the process, once started
	ledger *dockerLedger
	rp     *httputil.ReverseProxy
	srv    *http.Server
}

// newDockerProxy starts proc's proxy of the daemon the suite's client talks to. It is closed when
// the test ends.
func (r *rig) newDockerProxy(proc string) *dockerProxy {
	r.t.Helper()
	tnet, taddr, err := daemonAddr()
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	n := len(r.procs)
	r.mu.Unlock()
	d := &dockerProxy{proc: proc, ledger: r.ledger}
	d.proxy = &proxy{network: "unix", addr: filepath.Join(suite.work, fmt.Sprintf("%s-%02d-%s.sock", r.tag, n, proc))}
	d.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = "http", "docker", "docker"
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, tnet, taddr)
			},
			MaxIdleConnsPerHost: 16,
		},
		FlushInterval: -1, // the events stream
		ModifyResponse: func(resp *http.Response) error {
			noteStatus(resp.Request.Context(), resp.StatusCode)
			return d.learnCreated(resp)
		},
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			noteStatus(req.Context(), http.StatusBadGateway)
			w.WriteHeader(http.StatusBadGateway)
			_ = json.NewEncoder(w).Encode(map[string]string{"message": "chaos docker proxy: " + err.Error()})
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	conns := newConnListener()
	d.srv = &http.Server{Handler: d, ErrorLog: log.New(io.Discard, "", 0)}
	d.proxy.serve = conns.push
	if err := d.proxy.start(); err != nil {
		r.t.Fatal(err)
	}
	go func() { _ = d.srv.Serve(conns) }()
	r.t.Cleanup(func() {
		d.proxy.close()
		_ = d.srv.Close()
	})
	return d
}

// host is the RTMANAGER_DOCKER_HOST value that reaches the daemon through the proxy.
func (d *dockerProxy) host() string { return "unix://" + d.addr }

// daemonAddr is where the suite's own Docker client reaches the daemon.
func daemonAddr() (string, string, error) {
	u, err := url.Parse(suite.docker.DaemonHost())
	if err != nil {
		return "", "", fmt.Errorf("docker host %q: %w", suite.docker.DaemonHost(), err)
	}
	switch u.Scheme {
	case "unix":
		return "unix", u.Path, nil
	case "tcp":
		return "tcp", u.Host, nil
	}
	return "", "", fmt.Errorf("docker host %q: the chaos suite proxies unix:// and tcp:// only", suite.docker.DaemonHost())
}

func (d *dockerProxy) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	c := classify(req)
	c.proc = d.proc
	if c.op != "" {
		c.holds = d.ledger.holds(c.ref, d.pid.Load())
	}
	c.start = time.Now()
	if c.op == "stop" {
		if msg, refused := d.ledger.stopRefusal(c.ref); refused {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
			c.status, c.refused, c.end = http.StatusInternalServerError, true, time.Now()
			d.ledger.add(c)
			return
		}
	}
	status := new(int)
	d.rp.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), statusKey{}, status)))
	c.status, c.end = *status, time.Now()
	d.ledger.add(c)
}

// learnCreated reads the id of a container the daemon just created, so that later calls naming
// it by id are attributed to its game.
func (d *dockerProxy) learnCreated(resp *http.Response) error {
	if resp.Request.Method != http.MethodPost || resp.StatusCode != http.StatusCreated ||
		!strings.HasSuffix(resp.Request.URL.Path, "/containers/create") {
		return nil
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return err
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	var created struct{ ID string }
	if json.Unmarshal(b, &created) == nil && created.ID != "" {
		d.ledger.learn(created.ID, gameOfName(resp.Request.URL.Query().Get("name")))
	}
	return nil
}

// statusKey keys the *int in a proxied request's context where the reverse proxy notes the
// status it answers with: the daemon's (ModifyResponse), or 502 when the daemon cannot be
// reached (ErrorHandler).
type statusKey struct{}

func noteStatus(ctx context.Context, code int) {
	if p, ok := ctx.Value(statusKey{}).(*int); ok {
		*p = code
	}
}

// connListener is the net.Listener an http.Server serves: the proxy pushes the connections it
// accepts in forward mode.
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.UnixAddr{Name: "chaos-docker-proxy", Net: "unix"} }

// ---- the ledger of Docker calls ----

// dockerCall is one mutating Docker API call a process made through its proxy.
type dockerCall struct {
	proc       string
	method     string
	op         string // create, start, stop, kill, restart, remove, …
	ref        string // the container name or id the call names ("" for network calls)
	start, end time.Time
	status     int  // 0: no answer (the caller went away first)
	refused    bool // answered by a fault of the test; never reached the daemon
	holds      int8 // the game's lease when the call began: 1 held by the caller, -1 not, 0 unknown
}

// dockerLedger holds the mutating Docker calls of every process of a rig, with the container ids
// it has learnt, and the faults the proxies inject.
type dockerLedger struct {
	prefix string
	lookup func(id string) string // the watcher's view: container id → game
	// lease reads the value of the game's lease key (CONTRACT §5), "" when none; nil or an error:
	// unknown.
	lease func(game string) (string, error)

	mu         sync.Mutex
	calls      []dockerCall
	others     map[string]int    // process → non-mutating calls
	ids        map[string]string // container id → game
	refuseStop map[string]string // game → the daemon's message
}

func newDockerLedger(prefix string, lookup func(string) string) *dockerLedger {
	return &dockerLedger{prefix: prefix, lookup: lookup, others: map[string]int{}, ids: map[string]string{}, refuseStop: map[string]string{}}
}

var apiVersion = regexp.MustCompile(`^/v[0-9]+(\.[0-9]+)?/`)

// mutatingActions are the POST /containers/{id}/<action> calls that change a container.
var mutatingActions = map[string]bool{"start": true, "stop": true, "kill": true, "restart": true,
	"pause": true, "unpause": true, "update": true, "rename": true}

// classify names the call's operation and the container it concerns; op is "" for a call that
// changes nothing.
func classify(req *http.Request) dockerCall {
	c := dockerCall{method: req.Method}
	path := apiVersion.ReplaceAllString(req.URL.Path, "/")
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(parts) == 2 && parts[0] == "containers" && parts[1] == "create" && req.Method == http.MethodPost:
		c.op, c.ref = "create", req.URL.Query().Get("name")
	case len(parts) == 2 && parts[0] == "containers" && parts[1] == "prune" && req.Method == http.MethodPost:
		c.op = "prune"
	case len(parts) == 2 && parts[0] == "containers" && req.Method == http.MethodDelete:
		c.op, c.ref = "remove", parts[1]
	case len(parts) == 3 && parts[0] == "containers" && req.Method == http.MethodPost && mutatingActions[parts[2]]:
		c.op, c.ref = parts[2], parts[1]
	case len(parts) == 3 && parts[0] == "networks" && req.Method == http.MethodPost && (parts[2] == "connect" || parts[2] == "disconnect"):
		c.op = "network-" + parts[2]
	}
	return c
}

func gameOfName(name string) string {
	name = strings.TrimPrefix(name, "/")
	if g, ok := strings.CutPrefix(name, "galaxy-game-"); ok {
		return g
	}
	return ""
}

func (l *dockerLedger) add(c dockerCall) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.op == "" {
		l.others[c.proc]++
		return
	}
	l.calls = append(l.calls, c)
}

func (l *dockerLedger) learn(id, game string) {
	if id == "" || game == "" {
		return
	}
	l.mu.Lock()
	l.ids[id] = game
	l.mu.Unlock()
}

// gameOf returns the game a container name or id belongs to ("" when unknown).
func (l *dockerLedger) gameOf(ref string) string {
	if ref == "" {
		return ""
	}
	if g := gameOfName(ref); g != "" {
		return g
	}
	l.mu.Lock()
	g, ok := l.ids[ref]
	if !ok && len(ref) >= 12 {
		for id, game := range l.ids {
			if strings.HasPrefix(id, ref) {
				g, ok = game, true
				break
			}
		}
	}
	l.mu.Unlock()
	if !ok && l.lookup != nil {
		g = l.lookup(ref)
	}
	return g
}

// holds tells whether the lease of the game ref belongs to the process pid (its value names
// "host/pid/…"): 1 yes, -1 no (another holder or none), 0 unknown.
func (l *dockerLedger) holds(ref string, pid int64) int8 {
	g := l.gameOf(ref)
	if l.lease == nil || pid == 0 || !strings.HasPrefix(g, l.prefix) {
		return 0
	}
	v, err := l.lease(g)
	switch {
	case err != nil:
		return 0
	case strings.Contains(v, fmt.Sprintf("/%d/", pid)):
		return 1
	}
	return -1
}

// RefuseStop makes every process's proxy answer 500 with message to each stop of game's
// container, without asking the daemon; "" lifts it.
func (l *dockerLedger) RefuseStop(game, message string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if message == "" {
		delete(l.refuseStop, game)
		return
	}
	l.refuseStop[game] = message
}

func (l *dockerLedger) stopRefusal(ref string) (string, bool) {
	g := l.gameOf(ref)
	l.mu.Lock()
	defer l.mu.Unlock()
	msg, ok := l.refuseStop[g]
	return msg, ok && g != ""
}

// refused counts the calls of op on game the proxies refused.
func (l *dockerLedger) refused(op, game string) int {
	l.mu.Lock()
	calls := append([]dockerCall(nil), l.calls...)
	l.mu.Unlock()
	n := 0
	for _, c := range calls {
		if c.refused && c.op == op && l.gameOf(c.ref) == game {
			n++
		}
	}
	return n
}

// summary says how many calls each process made.
func (l *dockerLedger) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	mut := map[string]int{}
	for _, c := range l.calls {
		mut[c.proc]++
	}
	var procs []string
	for p := range l.others {
		procs = append(procs, p)
	}
	for p := range mut {
		if _, ok := l.others[p]; !ok {
			procs = append(procs, p)
		}
	}
	sort.Strings(procs)
	var parts []string
	for _, p := range procs {
		parts = append(parts, fmt.Sprintf("%s %d (%d mutating)", p, l.others[p]+mut[p], mut[p]))
	}
	return strings.Join(parts, ", ")
}

// burst is a run of one process's mutating calls on one game.
type burst struct {
	proc       string
	start, end time.Time
	ops        []string
}

// interleavings checks that for every game of the rig the mutating calls of two processes never
// interleave. A process's calls on a game form bursts of work: a call more than gap(game) after
// the end of the process's previous call on the game begins a new burst. A mutating call of
// another process on the game that overlaps a burst (begins before the burst's last call ended
// and ends after its first call began) is an interleaved mutation, each counted once, unless the
// lease shows a clean hand-over and back: the other process held the game's lease when it made
// its call, no call of the burst was in flight at the same time, and every call of the burst
// after it was made holding the lease again (two operations in quick succession, not one
// operation interrupted). It returns one description per interleaved mutation and the number of
// mutating calls seen.
func (l *dockerLedger) interleavings(gap func(game string) time.Duration) ([]string, int) {
	l.mu.Lock()
	calls := append([]dockerCall(nil), l.calls...)
	l.mu.Unlock()
	byGame := map[string][]dockerCall{}
	for _, c := range calls {
		if c.end.IsZero() || c.end.Before(c.start) {
			c.end = c.start
		}
		if g := l.gameOf(c.ref); strings.HasPrefix(g, l.prefix) {
			byGame[g] = append(byGame[g], c)
		}
	}
	var bad []string
	games := make([]string, 0, len(byGame))
	for g := range byGame {
		games = append(games, g)
	}
	sort.Strings(games)
	for _, g := range games {
		list := byGame[g]
		sort.SliceStable(list, func(i, j int) bool { return list[i].start.Before(list[j].start) })
		var bursts []burst
		open := map[string]int{} // process → index of its current burst
		for _, c := range list {
			i, ok := open[c.proc]
			if ok && c.start.Sub(bursts[i].end) <= gap(g) {
				if c.end.After(bursts[i].end) {
					bursts[i].end = c.end
				}
				bursts[i].ops = append(bursts[i].ops, c.op)
				continue
			}
			open[c.proc] = len(bursts)
			bursts = append(bursts, burst{proc: c.proc, start: c.start, end: c.end, ops: []string{c.op}})
		}
		for _, c := range list {
			for _, b := range bursts {
				if b.proc != c.proc && c.start.Before(b.end) && c.end.After(b.start) && !handedOver(list, b, c) {
					bad = append(bad, fmt.Sprintf("%s: %s %s %s (%s–%s) inside %s's burst %s–%s [%s]",
						g, c.proc, c.op, short(c.ref), clock(c.start), clock(c.end),
						b.proc, clock(b.start), clock(b.end), strings.Join(b.ops, " ")))
					break
				}
			}
		}
	}
	return bad, len(calls)
}

// handedOver tells whether the foreign call c inside burst b is a clean hand-over of the lease
// and back (see interleavings).
func handedOver(list []dockerCall, b burst, c dockerCall) bool {
	if c.holds != 1 {
		return false
	}
	for _, x := range list {
		if x.proc != b.proc || x.start.Before(b.start) || x.start.After(b.end) {
			continue
		}
		if x.start.Before(c.end) && x.end.After(c.start) {
			return false // in flight together
		}
		if !x.start.Before(c.end) && x.holds != 1 {
			return false // the burst went on without the lease
		}
	}
	return true
}

func short(ref string) string {
	if len(ref) > 12 && gameOfName(ref) == "" {
		return ref[:12]
	}
	return ref
}

func clock(t time.Time) string { return t.Format("15:04:05.000") }

// callsOf returns the mutating calls proc ("" for any) made on game, in the order they ended.
func (l *dockerLedger) callsOf(proc, game string) []dockerCall {
	l.mu.Lock()
	calls := append([]dockerCall(nil), l.calls...)
	l.mu.Unlock()
	var out []dockerCall
	for _, c := range calls {
		if (proc == "" || c.proc == proc) && l.gameOf(c.ref) == game {
			out = append(out, c)
		}
	}
	return out
}
