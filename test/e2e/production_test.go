//go:build integration

package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dockernetwork "github.com/docker/docker/api/types/network"
	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/galaxy-platform/rtmanager/test/testenv"
)

// The production shape: RTM runs as a container built from the product's Dockerfile, on the game
// network, with the Docker socket mounted and the state root mounted at the same path as on the
// host. It reaches PostgreSQL and Redis on the host through host.docker.internal and probes the
// engines by the DNS names of their engine_endpoint (RTMANAGER_PROBE_TARGET=endpoint).
func TestProductionShape_RTMInContainerProbesEnginesByDNSName(t *testing.T) {
	dockerOnly(t, "RTM in a container beside the Docker socket and its engines on the game network is the Docker runtime's production shape")
	// host.docker.internal is the daemon's host-gateway address: the test's own redis-server and
	// a forwarder to the shared PostgreSQL (which listens on loopback only) listen there too, and
	// nowhere else beyond loopback.
	gw := hostGatewayIP(t)
	r := newRig(t, "prod", withRedisBind("127.0.0.1", gw))
	pg := startProxy(t, gw, "tcp", pgAddr())

	env := maps.Clone(r.Env)
	env["RTMANAGER_INTERNAL_HTTP_ADDR"] = ":8096"
	env["RTMANAGER_DOCKER_HOST"] = "unix:///var/run/docker.sock"
	env["RTMANAGER_POSTGRES_PRIMARY_DSN"] = strings.Replace(r.DSN, pgAddr(), fmt.Sprintf("host.docker.internal:%d", pg.Port()), 1)
	env["RTMANAGER_REDIS_MASTER_ADDR"] = fmt.Sprintf("host.docker.internal:%d", r.Redis.Port)
	env["RTMANAGER_PROBE_TARGET"] = "endpoint"
	r.Env = env
	cfg := r.Config()
	r.cfg = cfg

	ctx := context.Background()
	rtmC, err := testcontainers.Run(ctx, suite.rtmImage,
		testcontainers.WithName("rtm-"+r.prefix),
		testcontainers.WithLogger(tclog.TestLogger(t)),
		tcnetwork.WithNetworkName([]string{"rtmanager"}, r.Net),
		testcontainers.WithEnv(env),
		testcontainers.WithExposedPorts("8096/tcp"),
		testcontainers.WithConfigModifier(func(c *container.Config) {
			c.User = "0:0" // the socket is root's; the image's own user is unprivileged
		}),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.Binds = append(hc.Binds, r.StateRoot+":"+r.StateRoot, "/var/run/docker.sock:/var/run/docker.sock")
			hc.ExtraHosts = append(hc.ExtraHosts, "host.docker.internal:host-gateway")
		}),
		testcontainers.WithWaitStrategy(wait.ForHTTP("/readyz").WithPort("8096/tcp").WithStartupTimeout(60*time.Second)),
	)
	// Registered after the rig's cleanups, so it runs first: RTM goes before its engines.
	testcontainers.CleanupContainer(t, rtmC)
	logs := func() string {
		if rtmC == nil {
			return ""
		}
		rc, err := rtmC.Logs(context.Background())
		if err != nil {
			return err.Error()
		}
		defer rc.Close()
		b, _ := io.ReadAll(rc)
		return string(b)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("RTM container log:\n%s", tailString(logs(), 80))
		}
	})
	if err != nil {
		t.Fatalf("running RTM's image %s: %v", suite.rtmImage, err)
	}
	ep, err := rtmC.PortEndpoint(ctx, "8096/tcp", "http")
	if err != nil {
		t.Fatal(err)
	}
	r.API = ep

	testenv.Eventually(t, 5*time.Second, "seven workers started in the container", func() (bool, string) {
		return strings.Count(logs(), `"msg":"worker started"`) == 7, tailString(logs(), 5)
	})
	expect(t, strings.Contains(logs(), `"RTMANAGER_PROBE_TARGET":"endpoint"`), "RTM does not run with RTMANAGER_PROBE_TARGET=endpoint")

	g := r.game("a")
	res := r.StartGame(g, img(v141))
	expect(t, res.F["engine_endpoint"] == "http://galaxy-game-"+g+":8080", "result %v", res)
	// The bind mount's source is a host path: the engine's state lands under the host's root.
	r.WaitBoots(g, 1, "the engine's state on the host")

	// Probed by DNS name from inside the network: healthy, then failing, then recovered.
	testenv.Eventually(t, 10*time.Second, "probes by DNS name succeed", func() (bool, string) {
		s := r.Snapshot(g)
		return s.Status == "healthy" && s.LastProbeAt != nil && time.Since(*s.LastProbeAt) < 5*time.Second, pretty(s)
	})
	time.Sleep(2 * time.Second)
	expect(t, len(r.HealthEvents(g, "probe_failed")) == 0, "a healthy engine failed its probes: %v", r.HealthEvents(g, ""))
	r.Engine(g, "/control/sick")
	r.WaitHealth(g, "probe_failed", 10*time.Second)
	r.Engine(g, "/control/well")
	r.WaitHealth(g, "probe_recovered", 10*time.Second)

	// The operators' REST through the published port; a patch, whose verification probes the
	// new engine by its name.
	code, b := r.Call(http.MethodGet, gamePath(g), "", nil)
	expect(t, code == http.StatusOK && decodeJSON(t, b)["engine_endpoint"] == "http://galaxy-game-"+g+":8080", "GET runtime: %d %s", code, b)
	rec := r.Admin(http.StatusOK, http.MethodPost, gamePath(g, "/patch"), map[string]string{"image_ref": img(v142)})
	expect(t, rec["current_image_ref"] == img(v142), "patch answered %v", rec)
	r.WaitBoots(g, 2, "state kept across the patch")

	r.StopJob(g, "req-"+g+"-stop", "admin_request")
	r.WaitSucceeded("req-" + g + "-stop")
	expect(t, r.State(g) == "exited", "container after the stop: %q", r.State(g))

	// SIGTERM through Docker: a clean exit.
	timeout := 20 * time.Second
	if err := rtmC.Stop(ctx, &timeout); err != nil {
		t.Fatalf("stopping the RTM container: %v", err)
	}
	st, err := rtmC.State(ctx)
	expect(t, err == nil && st.ExitCode == 0, "RTM container exit: %+v %v", st, err)
}

// hostGatewayIP is the address host-gateway stands for: docker0's (the daemon's default), or the
// default bridge's gateway; 0.0.0.0 when neither can be found.
func hostGatewayIP(t *testing.T) string {
	t.Helper()
	if ifc, err := net.InterfaceByName("docker0"); err == nil {
		if addrs, err := ifc.Addrs(); err == nil {
			for _, a := range addrs {
				if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
					return ipn.IP.String()
				}
			}
		}
	}
	if nw, err := suite.docker.NetworkInspect(context.Background(), "bridge", dockernetwork.InspectOptions{}); err == nil {
		for _, c := range nw.IPAM.Config {
			if ip := net.ParseIP(c.Gateway); ip != nil && ip.To4() != nil {
				return c.Gateway
			}
		}
	}
	t.Logf("no host-gateway address found; listening on 0.0.0.0")
	return "0.0.0.0"
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
