// Package probe holds RTM's HTTP clients of other services: the active health probe of a running
// engine (GET /healthz on the engine's port, addressed by the container's IP on the game network
// or by its endpoint's DNS name), the prober worker that runs it over every running engine and
// hands the outcomes to the store, and Lobby's diagnostic lookup. It enqueues nothing.
package probe

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	rtm "github.com/galaxy-platform/rtmanager"
)

// HTTP probes engines over HTTP.
type HTTP struct {
	client  *http.Client
	port    int
	byIP    bool
	timeout time.Duration
}

// New returns a prober. byIP selects the container's address on the network (the default
// probe target); otherwise the engine_endpoint URL is used.
func New(port int, byIP bool, timeout time.Duration) *HTTP {
	tr := &http.Transport{
		// A fresh connection per probe is cheap on a bridge network, keeps one hung engine from
		// holding a shared pool, and keeps nothing open between rounds: an idle keep-alive
		// connection costs two goroutines, which at 1,000 engines was most of RTM's goroutines
		// at rest.
		DisableKeepAlives:  true,
		DisableCompression: true,
		MaxConnsPerHost:    2,
		// A dial outlives the request that started it (the transport keeps it for the next
		// request), so it needs its own bound: without one, a connect to an engine that does not
		// answer its SYN (an unreachable address, a full neighbour table at a thousand engines on
		// one bridge) waits for the kernel's ~2-minute timeout, and every round added more: 968
		// such goroutines at 1,000 engines at rest.
		DialContext: (&net.Dialer{Timeout: timeout}).DialContext,
	}
	return &HTTP{client: &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		port: port, byIP: byIP, timeout: timeout}
}

// URL returns the probe URL of an engine.
func (p *HTTP) URL(c rtm.Container, endpoint string) string {
	if p.byIP && c.IP != "" {
		return "http://" + c.IP + ":" + strconv.Itoa(p.port) + "/healthz"
	}
	return strings.TrimSuffix(endpoint, "/") + "/healthz"
}

// Probe answers nil when the engine's /healthz answers 2xx within the timeout.
func (p *HTTP) Probe(ctx context.Context, c rtm.Container, endpoint string) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL(c, endpoint), nil)
	if err != nil {
		return fmt.Errorf("building probe request: %w", err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("probing %s: %w", rtm.ContainerName(c.GameID), err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("probing %s: status %d: %w", rtm.ContainerName(c.GameID), resp.StatusCode, rtm.ErrUnhealthy)
	}
	return nil
}
