package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	rtm "github.com/galaxy-platform/rtmanager"
)

// eventBuffer is how many translated events a subscriber may fall behind before its
// subscription ends (it then relists, as after a lost Docker event stream).
const eventBuffer = 4096

// errOverflow ends a subscription whose reader fell eventBuffer events behind.
var errOverflow = errors.New("kubernetes events: the reader fell behind; relist")

// Events subscribes to the owned Pods' changes, translated into the events the Docker adapter
// produces: start (the engine runs), oom and die with the exit code (it terminated), destroy (the
// Pod is gone), health_status (its readiness changed), create (a Pod appeared, not running yet),
// update (a Pod that has not run shows that it cannot: ErrImagePull, CreateContainerError, …).
// The Pods the informer already holds are not replayed: a subscriber lists them (List). The
// error channel carries one error when the subscription ends before ctx (the reader fell
// behind); both channels are closed then.
func (k *Kube) Events(ctx context.Context) (<-chan rtm.DockerEvent, <-chan error) {
	evs := make(chan rtm.DockerEvent, eventBuffer)
	errs := make(chan error, 1)
	sub, cancel := context.WithCancel(ctx)
	// mu orders the handler's sends before the channels' close: the informer may be calling
	// the handler while the subscription ends.
	var mu sync.Mutex
	closed := false
	emit := func(list []rtm.DockerEvent) {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range list {
			if closed || sub.Err() != nil {
				return
			}
			select {
			case evs <- ev:
			default:
				errs <- errOverflow
				cancel()
				return
			}
		}
	}
	reg, err := k.informer.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			if p := podOf(obj); p != nil && !initial {
				emit(k.translate(nil, p))
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			if o, n := podOf(oldObj), podOf(newObj); o != nil && n != nil {
				emit(k.translate(o, n))
			}
		},
		DeleteFunc: func(obj any) {
			if p := podOf(obj); p != nil {
				emit([]rtm.DockerEvent{k.event(p, "destroy")})
			}
		},
	})
	if err != nil {
		errs <- fmt.Errorf("kubernetes events: %w", err)
		close(errs)
		close(evs)
		cancel()
		return evs, errs
	}
	go func() {
		<-sub.Done()
		_ = k.informer.RemoveEventHandler(reg)
		mu.Lock()
		closed = true
		close(errs)
		close(evs)
		mu.Unlock()
	}()
	return evs, errs
}

// translate returns the events of a Pod's change from o (nil: it just appeared) to n.
func (k *Kube) translate(o, n *corev1.Pod) []rtm.DockerEvent {
	if vanishing(n) {
		if o == nil || !vanishing(o) {
			return []rtm.DockerEvent{k.event(n, "destroy")} // gone, as far as RTM is concerned
		}
		return nil
	}
	var out []rtm.DockerEvent
	wasRunning, wasDone := false, false
	wasReady := false
	if o != nil {
		wasRunning, wasDone, wasReady = running(o), terminated(o) != nil, ready(o)
	}
	if o == nil && !running(n) && terminated(n) == nil {
		out = append(out, k.event(n, "create"))
	}
	if !wasRunning && !wasDone && running(n) {
		out = append(out, k.event(n, "start"))
	}
	if startFailure(n) != nil && (o == nil || startFailure(o) == nil) {
		// It will not run (its image cannot be pulled, its container cannot be created): a
		// start that BeginStart left waiting is answered now.
		out = append(out, k.event(n, "update"))
	}
	if t := terminated(n); t != nil && !wasDone {
		if t.Reason == "OOMKilled" {
			out = append(out, k.event(n, "oom"))
		}
		ev := k.event(n, "die")
		ev.ExitCode = int(t.ExitCode)
		out = append(out, ev)
	}
	if o != nil && running(n) && ready(n) != wasReady {
		ev := k.event(n, "health_status")
		ev.Health = "unhealthy"
		if ready(n) {
			ev.Health = "healthy"
		}
		out = append(out, ev)
	}
	return out
}

func (k *Kube) event(p *corev1.Pod, action string) rtm.DockerEvent {
	return rtm.DockerEvent{GameID: gameIDOf(p), ContainerID: string(p.UID), Action: action, ExitCode: -1, Time: time.Now()}
}

// IsEngine reports whether addr is the IP of an engine's Pod (from the informer's store).
func (k *Kube) IsEngine(_ context.Context, addr netip.Addr) bool {
	objs, _ := k.informer.GetIndexer().ByIndex(byIP, addr.Unmap().String())
	return len(objs) > 0
}

// Ready is the engine prober of a cluster RTM runs outside of (it cannot reach Pod IPs): an
// engine is healthy while its Pod is ready, which the kubelet decides with the readiness probe
// RTM sets on /healthz with the probe settings.
type Ready struct{ K *Kube }

// Probe answers nil when c's Pod is ready, an error saying why when it is not.
func (r Ready) Probe(_ context.Context, c rtm.Container, _ string) error {
	p := r.K.podByUID(c.ID)
	switch {
	case p == nil:
		return fmt.Errorf("pod of game %s: %w", c.GameID, rtm.ErrNotFound)
	case !ready(p):
		return fmt.Errorf("pod %s is not ready: %w", p.Name, rtm.ErrUnhealthy)
	}
	return nil
}

// Logs streams the engine's output of gameID's Pod (follow: until the engine stops or ctx ends).
// No Pod wraps rtm.ErrNotFound; a Pod whose output cannot be read (not started, its node gone)
// wraps rtm.ErrConflict; an unreachable server wraps rtm.ErrUnavailable.
func (k *Kube) Logs(ctx context.Context, gameID string, tail int, follow, timestamps bool) (io.ReadCloser, error) {
	p := k.podOfGame(gameID)
	if p == nil {
		return nil, fmt.Errorf("pod of game %s: %w", gameID, rtm.ErrNotFound)
	}
	opts := &corev1.PodLogOptions{Container: engineContainer, Follow: follow, Timestamps: timestamps}
	if tail >= 0 {
		t := int64(tail)
		opts.TailLines = &t
	}
	rc, err := k.cs.CoreV1().Pods(k.opts.Namespace).GetLogs(p.Name, opts).Stream(ctx)
	if err != nil {
		cerr := classify(err)
		if !errors.Is(cerr, rtm.ErrUnavailable) && !errors.Is(cerr, rtm.ErrNotFound) {
			cerr = fmt.Errorf("%w (%w)", err, rtm.ErrConflict)
		}
		return nil, fmt.Errorf("output of pod %s: %w", p.Name, cerr)
	}
	return rc, nil
}
