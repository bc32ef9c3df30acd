package testenv

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
)

// RemoveContainers force-removes every container matching f, running or not, as RemoveIDs does,
// and returns how many matched: the clean-up of the test rigs and the benchmark's world.
func RemoveContainers(ctx context.Context, cli *client.Client, f filters.Args) (int, error) {
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return 0, err
	}
	ids := make([]string, 0, len(list))
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	return len(ids), RemoveIDs(ctx, cli, ids)
}

// RemoveIDs force-removes containers with their anonymous volumes, 8 at a time (more gains
// nothing, the daemon does one at a time underneath, and under load has leaked a network
// endpoint), each within a minute. A container already gone or already being removed is no
// error.
func RemoveIDs(ctx context.Context, cli *client.Client, ids []string) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 8)
	)
	for _, id := range ids {
		if id == "" {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			err := cli.ContainerRemove(rctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
			if err != nil && !gone(err) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// gone reports whether a removal failed only because the container is gone or going.
func gone(err error) bool {
	return errdefs.IsNotFound(err) || strings.Contains(err.Error(), "is already in progress")
}
