package main

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"
)

// dockerProxy sits between RTM and the Docker socket and notes every API call (when it began
// and which operation it was), so that the calls of a reconcile pass can be counted exactly.
// It streams (events) without buffering.
type dockerProxy struct {
	path string
	srv  *http.Server
	// ours is the game-id prefix of this run: calls about another RTM's containers (RTM hears
	// the events of every RTM-labelled container on the daemon) are counted apart.
	ours string

	mu    sync.Mutex
	calls []proxyCall
}

type proxyCall struct {
	at time.Time
	op string
}

// startDockerProxy listens on a unix socket at path and forwards to the daemon's socket.
func startDockerProxy(path, ours string) (*dockerProxy, error) {
	daemon := "/var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		daemon = strings.TrimPrefix(h, "unix://")
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	p := &dockerProxy{path: path, ours: rtmContainerPrefix + ours}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "docker"
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", daemon)
			},
			MaxIdleConnsPerHost: 64,
		},
		FlushInterval: -1,
		// RTM cancels calls on shutdown; the proxy has nothing to add to that.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		op := dockerOp(r.Method, r.URL.Path)
		if strings.Contains(r.URL.Path, rtmContainerPrefix) && !strings.Contains(r.URL.Path, p.ours) {
			op += " (other RTMs' games)"
		}
		p.calls = append(p.calls, proxyCall{at: time.Now(), op: op})
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// count returns the calls that began in [from, to), by operation.
func (p *dockerProxy) count(from, to time.Time) map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, c := range p.calls {
		if !c.at.Before(from) && c.at.Before(to) {
			out[c.op]++
		}
	}
	return out
}

// lastCall returns when the newest call of op began (zero when none).
func (p *dockerProxy) lastCall(op string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.calls) - 1; i >= 0; i-- {
		if p.calls[i].op == op {
			return p.calls[i].at
		}
	}
	return time.Time{}
}

func (p *dockerProxy) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	_ = p.srv.Close()
	_ = os.Remove(p.path)
}

// rtmContainerPrefix starts the name of every game container (rtmanager.ContainerName).
const rtmContainerPrefix = "galaxy-game-"

var apiVersionPrefix = regexp.MustCompile(`^/v[0-9.]+`)

// dockerOp names a Docker API call the way rtmanager_docker_op_latency does where it can.
func dockerOp(method, path string) string {
	path = apiVersionPrefix.ReplaceAllString(path, "")
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case path == "/_ping":
		return "ping"
	case path == "/events":
		return "events"
	case path == "/containers/json":
		return "list"
	case path == "/containers/create":
		return "create"
	case parts[0] == "containers" && len(parts) == 3 && parts[2] == "json":
		return "inspect"
	case parts[0] == "containers" && len(parts) == 3:
		return parts[2] // start, stop, kill, wait, …
	case parts[0] == "containers" && len(parts) == 2 && method == http.MethodDelete:
		return "remove"
	case parts[0] == "images" && len(parts) >= 2 && parts[len(parts)-1] == "json":
		return "image_inspect"
	case path == "/images/create":
		return "pull"
	case parts[0] == "networks":
		return "network"
	}
	return method + " " + path
}
